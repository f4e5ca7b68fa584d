"""The ``agentfs`` command, run as a subprocess (``python -m agentfs``).

Targets are ``STORE_URL/ws/path`` on file:// and s3:// stores, and ``ws/path``
on the embedded default store (``AGENTFS_HOME`` points it at a temp dir).
Errors must be one line ``agentfs: ...`` on stderr with the documented exit
code (1 generic, 2 not found, 64 bad usage), never a traceback.
Independent invocations run concurrently to keep the file fast.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fixtures_mount import fuse_available

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["mount", "umount", "where", "ls", "cat", "put", "get", "rm", "mkdir", "mv",
            "workspaces", "check", "log"]
AGENT = "tester"


# ------------------------------------------------------------------ helpers


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("AGENTFS_LOG", None)
    env["AGENTFS_AGENT"] = AGENT
    env.update(extra or {})
    return env


def _start(args: tuple[str, ...], env: dict[str, str] | None, stdin: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agentfs", *args], cwd=REPO, env=_env(env),
                            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cli(*args: str, env: dict[str, str] | None = None, input: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    p = _start(args, env, input is not None)
    try:
        out, err = p.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def cli_many(*calls: tuple, env: dict[str, str] | None = None,
             timeout: float = 60) -> list[subprocess.CompletedProcess]:
    """Run several invocations concurrently; a call is ``(args...)`` or
    ``((args...), stdin_bytes)``."""
    procs = []
    for c in calls:
        args, data = (c[0], c[1]) if c and isinstance(c[0], tuple) else (c, None)
        procs.append((_start(args, env, data is not None), data))
    out = []
    for p, data in procs:
        try:
            o, e = p.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            o, e = p.communicate()
        out.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    return out


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"{r.args[3:]} exited {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    return r


def one_line_error(r: subprocess.CompletedProcess, code: int) -> str:
    err = r.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    assert r.returncode == code, f"{r.args[3:]}: exit {r.returncode}, expected {code}; stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"{r.args[3:]}: expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("agentfs: "), lines
    return lines[0]


def lines(r: subprocess.CompletedProcess) -> list[str]:
    return r.stdout.decode().splitlines()


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """Environment that points the embedded default store at a temp dir."""
    h = tmp_path / "home"
    h.mkdir()
    return {"AGENTFS_HOME": str(h)}


@pytest.fixture(params=["file", "s3"])
def cli_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        d = tmp_path / "store"
        d.mkdir()
        return f"file://{d}"
    return request.getfixturevalue("s3_url")


# ------------------------------------------------------------------ help


def test_help_of_every_command(home: dict[str, str]) -> None:
    calls = [("--help",), *((c, "--help") for c in COMMANDS)]
    results = cli_many(*calls, env=home)
    for args, r in zip(calls, results, strict=True):
        ok(r)
        out = r.stdout.decode()
        assert "Usage" in out, (args, out)
        assert not r.stderr, (args, r.stderr)
    top = results[0].stdout.decode()
    for c in COMMANDS:
        assert c in top


# ------------------------------------------------------------------ file commands


def test_file_commands(cli_store: str, tmp_path: Path, home: dict[str, str]) -> None:
    """Every file command on STORE_URL/ws/path targets (one invocation each: on
    S3 every invocation pays for importing botocore)."""
    url = cli_store
    ws = f"{url}/ws"
    if url.startswith("file://"):
        # a fresh directory is not a store yet (targets find the root by its
        # .agentfs/): name the store root explicitly once
        ok(cli("mkdir", "--store", url, "ws", env=home))
    ok(cli("mkdir", "-p", f"{ws}/docs/sub/deeper", env=home))
    local = tmp_path / "local.bin"
    local.write_bytes(bytes(range(256)) * 10)
    for r in cli_many((("put", "-", f"{ws}/docs/a.txt"), b"alpha\n"),
                      ("put", str(local), f"{ws}/docs"),  # a directory target keeps the name
                      env=home):
        ok(r)
    cat, get, ls, ls_l, ls_json = cli_many(
        ("cat", f"{ws}/docs/a.txt"),
        ("get", f"{ws}/docs/local.bin", str(tmp_path / "copy.bin")),
        ("ls", f"{ws}/docs"),
        ("ls", "-l", f"{ws}/docs"),
        ("ls", "--json", f"{ws}/docs"),
        env=home)
    assert ok(cat).stdout == b"alpha\n"
    ok(get)
    assert (tmp_path / "copy.bin").read_bytes() == local.read_bytes()
    assert sorted(lines(ok(ls))) == ["a.txt", "local.bin", "sub/"]
    long = ok(ls_l).stdout.decode()
    for name in ("a.txt", "local.bin", "sub"):
        assert name in long
    assert "2560" in long and "0644" in long
    listing = json.loads(ok(ls_json).stdout)
    assert isinstance(listing, list)
    by_path = {e["path"]: e for e in listing}
    assert set(by_path) == {"docs/a.txt", "docs/local.bin", "docs/sub"}
    assert by_path["docs/local.bin"]["size"] == 2560
    assert by_path["docs/sub"]["kind"] == "dir"
    assert by_path["docs/a.txt"]["kind"] == "file"
    ok(cli("mv", f"{ws}/docs/a.txt", f"{ws}/docs/sub/c.txt", env=home))
    cat_c, rm_dir, rm_file = cli_many(("cat", f"{ws}/docs/sub/c.txt"), ("rm", f"{ws}/docs"),
                                      ("rm", f"{ws}/docs/local.bin"), env=home)
    assert ok(cat_c).stdout == b"alpha\n"
    assert "directory" in one_line_error(rm_dir, 1)
    ok(rm_file)
    ok(cli("rm", "-r", f"{ws}/docs", env=home))
    ls_after, wss, log, check, check_json = cli_many(
        ("ls", "--json", ws), ("workspaces", url, "--json"), ("log", ws, "--json"),
        ("check", url), ("check", "--json", url), env=home)
    assert json.loads(ok(ls_after).stdout) == []
    assert json.loads(ok(wss).stdout) == ["ws"]
    records = json.loads(ok(log).stdout)
    assert isinstance(records, list) and records
    for rec in records:
        assert {"agent", "action", "path", "seq", "time"} <= set(rec)
        assert rec["agent"] == AGENT
    actions = {(rec["action"], rec["path"]) for rec in records}
    assert ("create", "docs/a.txt") in actions
    assert ("create", "docs/local.bin") in actions
    assert ("mkdir", "docs/sub/deeper") in actions
    assert ("delete", "docs/local.bin") in actions
    assert ("rmdir", "docs") in actions
    assert any(act == "rename" and "docs/a.txt" in p for act, p in actions)
    assert "consistent" in lines(ok(check))
    rep = json.loads(ok(check_json).stdout)
    assert [w["workspace"] for w in rep["workspaces"]] == ["ws"]
    assert all(not w["errors"] for w in rep["workspaces"])


def test_default_store(home: dict[str, str]) -> None:
    where = ok(cli("where", env=home))
    store = Path(home["AGENTFS_HOME"]) / "store"
    assert where.stdout.decode().strip() == str(store)
    ok(cli("put", "-", "ws/notes.txt", input=b"note\n", env=home))
    assert (store / "ws" / "notes.txt").read_bytes() == b"note\n"  # the natural key
    ok(cli("mkdir", "-p", "ws/a/b", env=home))
    ok(cli("mv", "ws/notes.txt", "ws/a/b/notes.txt", env=home))  # DST is written like SRC
    cat, ls, wss, log = cli_many(("cat", "ws/a/b/notes.txt"), ("ls", "ws"),
                                 ("workspaces", "--json"), ("log", "ws", "--json"), env=home)
    assert ok(cat).stdout == b"note\n"
    assert lines(ok(ls)) == ["a/"]
    assert json.loads(ok(wss).stdout) == ["ws"]
    assert {r["agent"] for r in json.loads(ok(log).stdout)} == {AGENT}
    ok(cli("rm", "-r", "ws/a", env=home))
    ls2, check = cli_many(("ls", "--json", "ws"), ("check",), env=home)
    assert json.loads(ok(ls2).stdout) == []
    assert "consistent" in lines(ok(check))
    assert not (store / "ws" / "a").exists() or not any((store / "ws" / "a").rglob("*.txt"))


# ------------------------------------------------------------------ errors


def test_bad_input_is_one_line(home: dict[str, str], tmp_path: Path) -> None:
    ok(cli("put", "-", "ws/exists.txt", input=b"x", env=home))
    fresh = tmp_path / "not-a-store"
    fresh.mkdir()
    missing_file, missing_ws, bad_s3, no_store, bad_url, no_log = cli_many(
        ("cat", "ws/nope.txt"),
        ("cat", "nows/file.txt"),
        ("ls", "s3://"),
        ("ls", f"file://{fresh}/ws"),
        ("ls", "ftp://host/ws"),
        ("log", "nows", "--json"),
        env=home)
    assert "nope.txt" in one_line_error(missing_file, 2)
    one_line_error(missing_ws, 2)
    one_line_error(bad_s3, 64)
    one_line_error(no_store, 64)
    one_line_error(bad_url, 64)
    one_line_error(no_log, 2)


def test_usage_errors(home: dict[str, str]) -> None:
    """Usage errors (a missing argument, an unknown option or command) exit
    non-zero without a traceback, with the documented usage code 64."""
    results = cli_many(("cat",), ("put", "only-one-arg"), ("ls", "--bogus", "ws"),
                       ("frobnicate",), env=home)
    for r in results:
        err = r.stderr.decode(errors="replace")
        assert r.returncode != 0, r.args
        assert "Traceback" not in err, err
    for r in results:
        err = r.stderr.decode(errors="replace")
        assert "internal error" not in err, f"{r.args[3:]}: {err!r}"
        assert r.returncode == 64, f"{r.args[3:]}: exit {r.returncode}; stderr: {err!r}"


def test_umount_not_mounted(tmp_path: Path, home: dict[str, str]) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    assert "not mounted" in one_line_error(cli("umount", str(d), env=home), 64)


def test_fuse_problem_without_dev_fuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from agentfs.config import MountConfig
    from agentfs.errors import AgentFSError
    from agentfs.fuse import mount as fuse_mount

    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if str(p) == "/dev/fuse" else real_exists(p))
    msg = fuse_mount.fuse_problem()
    assert msg and "\n" not in msg
    assert "/dev/fuse" in msg
    # mounting reports it as one agentfs error, before touching anything
    cfg = MountConfig(store_url="memory://nofuse", mountpoint=str(tmp_path), foreground=True,
                      cache_dir=str(tmp_path / "cache"))
    with pytest.raises(AgentFSError) as ei:
        fuse_mount.run_mount(cfg)
    assert str(ei.value) == msg
    # and the CLI prints it on one line
    from agentfs import cli as cli_mod

    monkeypatch.setenv("AGENTFS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "argv", ["agentfs", "mount", "--foreground", str(tmp_path)])
    with pytest.raises(SystemExit) as ex:
        cli_mod.main()
    assert ex.value.code not in (0, None)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"agentfs: {msg}"]


# ------------------------------------------------------------------ with a mount


def test_cli_put_visible_in_mount(mounter, store_url: str, home: dict[str, str]) -> None:
    m = mounter(store_url)
    (m.path / "ws").mkdir()
    (m.path / "ws" / "early.txt").write_bytes(b"via mount")
    cat = ok(cli("cat", f"{store_url}/ws/early.txt", env=home))
    assert cat.stdout == b"via mount"
    ok(cli("put", "-", f"{store_url}/ws/from-cli.txt", input=b"hello mount\n", env=home))
    target = m.path / "ws" / "from-cli.txt"
    deadline = time.monotonic() + 3
    while True:
        try:
            if target.read_bytes() == b"hello mount\n":
                break
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "file put with the CLI not visible in the mount after 3 s"
        time.sleep(0.1)
    assert "from-cli.txt" in os.listdir(m.path / "ws")


def _mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == real for line in f)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (an exited, unreaped zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@contextmanager
def daemon_mount(tmp_path: Path, **popen: object) -> Iterator[tuple[Path, Path, subprocess.Popen, list[int]]]:
    """``agentfs mount STORE MNT`` without --foreground; always cleaned up."""
    if not fuse_available():
        pytest.skip("/dev/fuse is not available")
    store = tmp_path / "dstore"
    mnt = tmp_path / "dmnt"
    mnt.mkdir()
    cmd = [sys.executable, "-m", "agentfs", "mount", f"file://{store}", str(mnt),
           "--cache-dir", str(tmp_path / "dcache"), "--log-file", str(tmp_path / "daemon.log")]
    pids: list[int] = []
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(None), stdin=subprocess.DEVNULL, **popen)
    try:
        yield store, mnt, proc, pids
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if _mounted(mnt):
            try:
                pids.append(int(os.getxattr(mnt, "user.agentfs.mount.pid")))
            except OSError:
                pass
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_umount_of_daemonized_mount(tmp_path: Path, home: dict[str, str]) -> None:
    # files, not pipes: the daemon inherits them
    with open(tmp_path / "mount.out", "wb") as out, \
            daemon_mount(tmp_path, stdout=out, stderr=out) as (store, mnt, proc, pids):
        assert proc.wait(timeout=30) == 0, (tmp_path / "mount.out").read_text()
        assert _mounted(mnt), "agentfs mount returned 0 but nothing is mounted"
        pid = int(os.getxattr(mnt, "user.agentfs.mount.pid"))
        pids.append(pid)
        assert pid != proc.pid and _alive(pid)
        (mnt / "ws").mkdir()
        (mnt / "ws" / "f.txt").write_bytes(b"durable")
        r = ok(cli("umount", str(mnt), env=home))
        assert not r.stderr
        assert not _mounted(mnt)
        assert not _alive(pid), "mount daemon still running after agentfs umount returned"
        assert (store / "ws" / "f.txt").read_bytes() == b"durable"
        log = (tmp_path / "daemon.log").read_text()
        assert " ERROR " not in log and "Traceback" not in log, log


def test_daemonized_mount_releases_callers_stderr(tmp_path: Path) -> None:
    """With --log-file, the daemon must not keep the caller's stdout/stderr open:
    ``out=$(agentfs mount ... 2>&1)`` or ``subprocess.run(..., capture_output=True)``
    would otherwise hang until unmount."""
    with daemon_mount(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as (_, mnt, proc, _p):
        assert proc.wait(timeout=30) == 0
        assert _mounted(mnt)
        try:
            for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
                assert pipe is not None
                poller = select.poll()  # not select(): descriptors above 1023
                poller.register(pipe, select.POLLIN)
                ready = poller.poll(1500)
                got = os.read(pipe.fileno(), 65536) if ready else None
                assert got == b"", f"the mount daemon holds the caller's {name} open (read {got!r})"
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def test_put_creates_parent_directories(tmp_path: Path, home: dict[str, str]) -> None:
    """`put` into a new path implies its directories (as `aws s3 cp` does)."""
    src = tmp_path / "r.md"
    src.write_bytes(b"# report\n")
    ok(cli("put", str(src), "proj/a/b/c/r.md", env=home))
    assert ok(cli("cat", "proj/a/b/c/r.md", env=home)).stdout == b"# report\n"
    missing = cli("cat", "proj/a/nope.md", env=home)
    assert missing.returncode == 2
    assert missing.stderr.decode().strip() == "agentfs: No such file or directory: a/nope.md"
