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
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import AGENT, cli, cli_many, lines, ok, one_line_error

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["mount", "umount", "where", "ls", "cat", "put", "get", "rm", "mkdir", "mv",
            "workspaces", "check", "log"]


# ------------------------------------------------------------------ helpers


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


def test_put_creates_parent_directories(tmp_path: Path, home: dict[str, str]) -> None:
    """`put` into a new path implies its directories (as `aws s3 cp` does)."""
    src = tmp_path / "r.md"
    src.write_bytes(b"# report\n")
    ok(cli("put", str(src), "proj/a/b/c/r.md", env=home))
    assert ok(cli("cat", "proj/a/b/c/r.md", env=home)).stdout == b"# report\n"
    missing = cli("cat", "proj/a/nope.md", env=home)
    assert missing.returncode == 2
    assert missing.stderr.decode().strip() == "agentfs: No such file or directory: a/nope.md"


# ------------------------------------------------------------------ corner cases of single commands


def test_mv_dst_is_written_like_src(home: dict[str, str], tmp_path: Path) -> None:
    ok(cli("put", "-", "demo/m1.txt", input=b"one\n", env=home))
    ok(cli("mv", "demo/m1.txt", "demo/m2.txt", env=home))
    assert lines(ok(cli("ls", "demo", env=home))) == ["m2.txt"]
    # Another workspace, or no path in the workspace: bad input, nothing moves.
    assert "within one workspace" in one_line_error(cli("mv", "demo/m2.txt", "other/m3.txt", env=home), 64)
    one_line_error(cli("mv", "demo/m2.txt", "demo", env=home), 64)
    assert lines(ok(cli("ls", "demo", env=home))) == ["m2.txt"]
    # Full targets on both sides, --store with ws/path on both sides, and a
    # relative DST after a full SRC (a path inside SRC's workspace).
    url = f"file://{tmp_path / 'store'}"
    (tmp_path / "store").mkdir()
    ok(cli("mkdir", "--store", url, "ws", env=home))  # a new store: the first workspace
    ok(cli("put", "-", f"{url}/ws/a.txt", input=b"a\n", env=home))
    ok(cli("mkdir", f"{url}/ws/old", env=home))
    ok(cli("mv", f"{url}/ws/a.txt", f"{url}/ws/b.txt", env=home))
    ok(cli("mv", "--store", url, "ws/b.txt", "ws/c.txt", env=home))
    ok(cli("mv", f"{url}/ws/c.txt", "old/d.txt", env=home))
    assert ok(cli("cat", f"{url}/ws/old/d.txt", env=home)).stdout == b"a\n"
    assert lines(ok(cli("ls", f"{url}/ws", env=home))) == ["old/"]


def test_ls_of_a_file_prints_its_name(home: dict[str, str]) -> None:
    ok(cli("put", "-", "ws/file.txt", input=b"f", env=home))
    ok(cli("put", "-", "ws/sub/g.txt", input=b"g", env=home))
    assert ok(cli("ls", "ws/file.txt", env=home)).stdout == b"file.txt\n"
    assert ok(cli("ls", "ws/sub/g.txt", env=home)).stdout == b"sub/g.txt\n"
    assert lines(ok(cli("ls", "ws/sub", env=home))) == ["g.txt"]


def test_cat_of_a_workspace_is_a_directory(home: dict[str, str]) -> None:
    ok(cli("mkdir", "-p", "ws/subdir", env=home))
    sub = one_line_error(cli("cat", "ws/subdir", env=home), 1)
    root = one_line_error(cli("cat", "ws", env=home), 1)
    assert "Is a directory" in sub and "Is a directory" in root
    assert "no such workspace" in one_line_error(cli("cat", "nows", env=home), 2)


def test_mkdir_of_an_existing_workspace_is_eexist(home: dict[str, str]) -> None:
    ok(cli("mkdir", "ws", env=home))
    ok(cli("mkdir", "ws/sub", env=home))
    sub = one_line_error(cli("mkdir", "ws/sub", env=home), 1)
    top = one_line_error(cli("mkdir", "ws", env=home), 1)
    assert "File exists" in sub and "File exists" in top
    ok(cli("mkdir", "-p", "ws", env=home))
    ok(cli("mkdir", "-p", "ws/sub", env=home))
    assert json.loads(ok(cli("workspaces", "--json", env=home)).stdout) == ["ws"]


def test_put_of_a_missing_local_file_is_not_found(home: dict[str, str], tmp_path: Path) -> None:
    err = one_line_error(cli("put", str(tmp_path / "nonexistent"), "newws/x", env=home), 2)
    assert "No such file or directory" in err
    assert "newws" not in json.loads(ok(cli("workspaces", "--json", env=home)).stdout)  # nothing created
    ok(cli("mkdir", "ws", env=home))
    one_line_error(cli("get", "ws/missing.txt", str(tmp_path / "out"), env=home), 2)


def test_checkpoint_list_without_checkpoints(home: dict[str, str]) -> None:
    ok(cli("put", "-", "ws/a.txt", input=b"a", env=home))
    r = ok(cli("checkpoint", "list", "ws", env=home))
    assert r.stdout == b"no checkpoints\n" and r.stderr == b""
    assert json.loads(ok(cli("checkpoint", "list", "--json", "ws", env=home)).stdout) == []
    ok(cli("checkpoint", "create", "ws", "first", env=home))
    out = lines(ok(cli("checkpoint", "list", "ws", env=home)))
    assert len(out) == 1 and out[0].startswith("first\t")
