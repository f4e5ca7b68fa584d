"""Agent state through a real FUSE mount (a local store and moto S3): typed
``user.agentfs.*`` xattrs with getfattr/setfattr and ``os.setxattr``, EINVAL
with the mount alive, attribution of two agents, the audit log across
remounts and mounts, ``agentfs state ls`` while mounted, TTL pruning by the
mount, and STATE.md.

Typed state, attribution and the audit log are journal records, alike on every
store (the store conformance tests pin what the stores do): those tests run on
the local store only (``local_store_only``); TTL pruning and STATE.md, which
delete and write objects, run on both.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentfs.store import open_store
from tests.helpers.mount import Mount, local_store_only

REPO = Path(__file__).resolve().parents[2]
P = "user.agentfs."
FAST = {"AGENTFS_PRUNE_INTERVAL": "0.5", "AGENTFS_STATE_MD_INTERVAL": "0.5"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    full.pop("AGENTFS_LOG", None)
    return subprocess.run([sys.executable, "-m", "agentfs", *args], cwd=REPO, env=full, capture_output=True,
                          timeout=120)


def as_agent(agent: str | None, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run python ``code`` in a separate process whose AGENTFS_AGENT is ``agent``."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTFS_AGENT"}
    if agent is not None:
        env["AGENTFS_AGENT"] = agent
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, timeout=60)


def log_json(store_url: str, *args: str) -> list[dict]:
    r = cli("log", f"{store_url}/ws", "--limit", "0", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def setfattr(path: Path, name: str, value: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["setfattr", "-n", name, "-v", value, str(path)], capture_output=True,
                          env={**os.environ, **(env or {})})


@local_store_only
def test_typed_state_with_setfattr_getfattr_and_os(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, "--agent", "mount-agent")
    ws = m.path / "ws"
    ws.mkdir()
    f = ws / "report.md"
    f.write_text("# report\n")
    assert setfattr(f, P + "status", "draft").returncode == 0
    os.setxattr(f, P + "labels", b"q4,finance")
    os.setxattr(f, P + "ttl", b"1h")
    r = subprocess.run(["getfattr", "-d", "-m", "user.agentfs.", "--absolute-names", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'user.agentfs.status="draft"' in r.stdout
    assert 'user.agentfs.labels="[\\"q4\\", \\"finance\\"]"' in r.stdout
    assert "user.agentfs.updated_by=" in r.stdout and "user.agentfs.ttl=" in r.stdout
    assert json.loads(os.getxattr(f, P + "ttl"))["seconds"] == 3600
    assert f.read_text() == "# report\n"  # the bytes are untouched
    xattr = pytest.importorskip("xattr")  # the `xattr` package (test extra)
    x = xattr.xattr(str(f))
    x[P + "owner"] = b"pkg-agent"
    assert x[P + "owner"] == b"pkg-agent" and x[P + "status"] == b"draft"
    with pytest.raises(OSError) as ei:
        x[P + "status"] = b"not-a-status"
    assert ei.value.errno == errno.EINVAL


@local_store_only
def test_invalid_values_are_einval_and_the_mount_stays_alive(mounter: Callable[..., Mount],
                                                             store_url: str) -> None:
    m = mounter(store_url)
    ws = m.path / "ws"
    ws.mkdir()
    f = ws / "r.md"
    f.write_bytes(b"x")
    os.setxattr(f, P + "status", b"draft")
    bad = [("status", b"bogus"), ("status", b"final"), ("labels", b"[nope"), ("labels", b'[1, 2]'),
           ("ttl", b"soon"), ("owner", b"o" * 500), ("note", b"n" * 5000), ("nonexistent", b"x"),
           ("lifecycle", b'{"statuses": ["a"]}')]
    for short, value in bad:
        with pytest.raises(OSError) as ei:
            os.setxattr(f, P + short, value)
        assert ei.value.errno == errno.EINVAL, (short, value, ei.value)
    for short in ("updated_by", "updated_at"):
        with pytest.raises(OSError) as ei:
            os.setxattr(f, P + short, b"me")
        assert ei.value.errno == errno.EPERM
    with pytest.raises(OSError) as ei:
        os.setxattr(ws, P + "lifecycle", b"{bad json")  # the workspace root, bad JSON
    assert ei.value.errno == errno.EINVAL
    assert os.getxattr(f, P + "status") == b"draft"
    # the mount is alive and still works
    assert m.proc.poll() is None
    (ws / "after").write_bytes(b"still here")
    assert (ws / "after").read_bytes() == b"still here"
    os.setxattr(f, P + "status", b"review")
    assert os.getxattr(f, P + "status") == b"review"
    warnings = [ln for ln in m.log_text().splitlines() if " WARNING " in ln and "user.agentfs." in ln]
    assert len(warnings) == len(bad) + 3  # one clear line per refused write
    assert any("transition draft -> final is not allowed" in ln for ln in warnings)


@local_store_only
def test_two_agents_are_attributed(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, "--agent", "mount-default")
    ws = m.path / "ws"
    ws.mkdir()
    f = ws / "shared.md"
    f.write_bytes(b"v1")
    code = "import os, sys; os.setxattr(sys.argv[1], 'user.agentfs.status', sys.argv[2].encode())"
    r = as_agent("writer-agent", code, str(f), "draft")
    assert r.returncode == 0, r.stderr
    assert os.getxattr(f, P + "updated_by") == b"writer-agent"
    r = as_agent("review-agent", code, str(f), "review")
    assert r.returncode == 0, r.stderr
    assert os.getxattr(f, P + "updated_by") == b"review-agent"
    r = as_agent(None, code, str(f), "approved")  # no AGENTFS_AGENT: the mount's --agent
    assert r.returncode == 0, r.stderr
    assert os.getxattr(f, P + "updated_by") == b"mount-default"
    write = as_agent("writer-agent", "import sys; open(sys.argv[1], 'w').write('v2')", str(f))
    assert write.returncode == 0
    rows = log_json(store_url, "--action", "state")
    assert [(x["agent"], x["old"], x["new"]) for x in rows] == [
        ("writer-agent", None, "draft"), ("review-agent", "draft", "review"), ("mount-default", "review", "approved")]
    assert all(isinstance(x["pid"], int) and x["pid"] > 0 and x["uid"] == os.getuid() for x in rows)
    writes = log_json(store_url, "--action", "write", "--agent", "writer-agent")
    assert writes and writes[-1]["path"] == "shared.md" and writes[-1]["size"] == 2
    assert len(writes[-1]["sha256"]) == 64


@local_store_only
def test_log_survives_remount_and_is_seen_by_a_second_mount(mounter: Callable[..., Mount],
                                                            store_url: str) -> None:
    a = mounter(store_url, "--agent", "agent-a")
    ws = a.path / "ws"
    ws.mkdir()
    (ws / "d").mkdir()
    (ws / "d" / "f.txt").write_bytes(b"hello")
    os.setxattr(ws / "d" / "f.txt", P + "status", b"in_progress")
    os.rename(ws / "d" / "f.txt", ws / "d" / "g.txt")
    b = mounter(store_url, "--agent", "agent-b")
    g_on_b = b.path / "ws" / "d" / "g.txt"
    wait_for(lambda: g_on_b.exists())
    assert os.getxattr(g_on_b, P + "status") == b"in_progress"
    os.setxattr(g_on_b, P + "status", b"review")
    wait_for(lambda: os.getxattr(ws / "d" / "g.txt", P + "status") == b"review")
    rows = log_json(store_url)  # while both are mounted
    summary = [(x["action"], x["agent"], x["path"]) for x in rows]
    assert ("mkdir", "agent-a", "d") in summary
    assert ("rename", "agent-a", "d/f.txt -> d/g.txt") in summary
    state = [(x["agent"], x["old"], x["new"]) for x in rows if x["action"] == "state"]
    assert state == [("agent-a", None, "in_progress"), ("agent-b", "in_progress", "review")]
    a.unmount()
    b.unmount()
    c = mounter(store_url)
    assert os.getxattr(c.path / "ws" / "d" / "g.txt", P + "status") == b"review"
    assert log_json(store_url)[: len(rows)] == rows  # the record is durable and unchanged
    r = cli("log", f"{store_url}/ws/d/g.txt", "--agent", "agent-b")
    assert r.returncode == 0 and b"in_progress -> review" in r.stdout


@local_store_only
def test_state_ls_while_mounted(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url)
    ws = m.path / "ws"
    ws.mkdir()
    for name, status, owner in (("a.md", "review", "alice"), ("b.md", "draft", "bob"), ("c.md", "review", "bob")):
        (ws / name).write_bytes(b"")
        os.setxattr(ws / name, P + "status", status.encode())
        os.setxattr(ws / name, P + "owner", owner.encode())
    os.setxattr(ws / "c.md", P + "labels", b"urgent")
    r = cli("state", "ls", f"{store_url}/ws", "--status", "review", "--json")
    assert r.returncode == 0, r.stderr
    assert [x["path"] for x in json.loads(r.stdout)] == ["a.md", "c.md"]
    r = cli("state", "ls", f"{store_url}/ws", "--owner", "bob", "--label", "urgent", "--json")
    assert [x["path"] for x in json.loads(r.stdout)] == ["c.md"]
    r = cli("state", "ls", f"{store_url}/ws")
    assert r.returncode == 0
    table = r.stdout.decode()
    assert "path" in table and "status" in table and "a.md" in table and "draft" in table
    # a change made by the CLI is validated the same way and seen by the mount
    r = cli("state", "set", f"{store_url}/ws/b.md", "status=in_progress", env={"AGENTFS_AGENT": "cli"})
    assert r.returncode == 0, r.stderr
    wait_for(lambda: os.getxattr(ws / "b.md", P + "status") == b"in_progress")
    assert cli("state", "set", f"{store_url}/ws/b.md", "status=final").returncode == 64


def test_ttl_expiry_in_the_mount(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, env=FAST)
    ws = m.path / "ws"
    ws.mkdir()
    (ws / "scratch.txt").write_bytes(b"temporary")
    (ws / "tmpdir").mkdir()
    (ws / "tmpdir" / "inner").write_bytes(b"i")
    (ws / "keep.txt").write_bytes(b"k")
    (ws / "held.txt").write_bytes(b"held")
    held = open(ws / "held.txt", "rb")  # kept open on purpose
    try:
        for name in ("scratch.txt", "tmpdir", "held.txt"):
            os.setxattr(ws / name, P + "ttl", b"1s")
        os.setxattr(ws / "keep.txt", P + "ttl", b"1h")
        wait_for(lambda: not (ws / "scratch.txt").exists() and not (ws / "tmpdir").exists())
        time.sleep(1.5)  # a few more prune passes: the open file stays
        assert (ws / "held.txt").exists()
        assert held.read() == b"held"
    finally:
        held.close()
    wait_for(lambda: not (ws / "held.txt").exists())
    assert (ws / "keep.txt").read_bytes() == b"k"
    store = open_store(store_url)
    assert not any(o.key.startswith("ws/tmpdir/") or o.key == "ws/scratch.txt" for o in store.list("ws/"))
    pruned = {(x["action"], x["path"]) for x in log_json(store_url, "--agent", "agentfs:ttl")}
    assert {("delete", "scratch.txt"), ("delete", "tmpdir/inner"), ("rmdir", "tmpdir"),
            ("delete", "held.txt")} <= pruned


def test_state_md_is_written_by_the_mount(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, "--agent", "md-agent", env=FAST)
    ws = m.path / "ws"
    ws.mkdir()
    for n in ("a.md", "b.md"):
        (ws / n).write_bytes(b"")
        os.setxattr(ws / n, P + "status", b"draft")
    os.setxattr(ws / "b.md", P + "status", b"review")
    store = open_store(store_url)

    def md() -> str:
        try:
            return store.get(".agentfs/ws/STATE.md").decode()
        except OSError:
            return ""

    wait_for(lambda: "| review | 1 |" in md() and "| draft | 1 |" in md())
    text = md()
    assert "| md-agent | `b.md` | status: draft -> review |" in text
    # STATE.md lives under .agentfs/, never in the mount
    assert "STATE.md" not in os.listdir(ws)
    os.unlink(ws / "b.md")
    wait_for(lambda: "review" not in md().split("## Recent changes")[0])


@local_store_only
def test_state_set_on_a_new_open_file_is_its_own_record(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, "--agent", "maker")
    ws = m.path / "ws"
    ws.mkdir()
    fd = os.open(ws / "new.md", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"draft text")
        os.setxattr(fd, P + "status", b"draft")
        os.write(fd, b", more")
    finally:
        os.close(fd)
    assert (ws / "new.md").read_bytes() == b"draft text, more"
    rows = [(x["action"], x.get("new")) for x in log_json(store_url) if x["path"] == "new.md"]
    assert rows[0] == ("create", None) and ("state", "draft") in rows and rows[-1] == ("write", None)
