"""The Python API (``agentfs.open_workspace`` -> ``WorkspaceClient``), no FUSE.

Every test runs on a memory store, a local directory store and moto S3, and
ends with ``agentfs.check.check_store`` finding the store consistent.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import agentfs
from agentfs import agentstate
from agentfs.api import WorkspaceClient
from agentfs.errors import ConflictError
from agentfs.journal import Journal
from agentfs.models import Commit
from agentfs.store import open_store
from tests.helpers.api import WS

MiB = 1 << 20


@pytest.fixture
def w(clients: Callable[..., WorkspaceClient]) -> WorkspaceClient:
    return clients()


def raises_errno(code: int, fn: Callable, *args) -> OSError:
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.errno == code, f"{fn.__name__}{args}: errno {ei.value.errno}, expected {code}"
    return ei.value


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ content


def test_write_read_bytes(w: WorkspaceClient) -> None:
    w.write_bytes("hello.txt", b"hello")
    assert w.read_bytes("hello.txt") == b"hello"
    w.write_bytes("hello.txt", b"a longer replacement")
    assert w.read_bytes("hello.txt") == b"a longer replacement"
    w.write_bytes("hello.txt", b"short")
    assert w.read_bytes("hello.txt") == b"short"
    w.write_bytes("empty", b"")
    assert w.read_bytes("empty") == b""
    everything = bytes(range(256)) * 17
    w.write_bytes("bin", everything)
    assert w.read_bytes("bin") == everything
    assert w.stat("bin").sha256 == sha(everything)


def test_open_modes(w: WorkspaceClient) -> None:
    with w.open("f", "wb") as fh:
        fh.write(b"hello ")
        fh.write(b"world")
    assert w.read_bytes("f") == b"hello world"
    with w.open("f", "ab") as fh:
        fh.write(b"!")
    assert w.read_bytes("f") == b"hello world!"
    with w.open("f", "r+b") as fh:
        assert fh.read(5) == b"hello"
        fh.seek(6)
        fh.write(b"WORLD")
    assert w.read_bytes("f") == b"hello WORLD!"
    with w.open("f", "rb") as fh:
        assert fh.read() == b"hello WORLD!"
    with w.open("f", "wb") as fh:  # truncates
        fh.write(b"new")
    assert w.read_bytes("f") == b"new"
    with w.open("fresh", "xb") as fh:
        fh.write(b"exclusive")
    assert w.read_bytes("fresh") == b"exclusive"
    e = raises_errno(errno.EEXIST, w.open, "fresh", "xb")
    assert isinstance(e, OSError)
    assert w.read_bytes("fresh") == b"exclusive"
    with w.open("appended", "ab") as fh:  # 'a' creates
        fh.write(b"a1")
    assert w.read_bytes("appended") == b"a1"
    raises_errno(errno.ENOENT, w.open, "missing", "rb")
    raises_errno(errno.ENOENT, w.open, "missing", "r+b")
    assert not w.exists("missing")
    with pytest.raises(ValueError):
        w.open("f", "r")


def test_seek_tell_truncate(w: WorkspaceClient) -> None:
    w.write_bytes("t", b"0123456789")
    with w.open("t", "rb") as fh:
        assert fh.tell() == 0
        assert fh.seek(4) == 4
        assert fh.read(3) == b"456"
        assert fh.tell() == 7
        assert fh.seek(-2, 2) == 8
        assert fh.read() == b"89"
        assert fh.seek(-5, 1) == 5
        assert fh.read(1) == b"5"
    with w.open("t", "r+b") as fh:
        assert fh.seek(0, 2) == 10
        assert fh.truncate(4) == 4
    assert w.read_bytes("t") == b"0123"
    assert w.stat("t").size == 4
    with w.open("t", "r+b") as fh:
        fh.truncate(8)  # extends with zeros
    assert w.read_bytes("t") == b"0123\0\0\0\0"
    with w.open("t", "r+b") as fh:
        fh.seek(2)
        fh.truncate()  # at the position
    assert w.read_bytes("t") == b"01"
    with w.open("holes", "wb") as fh:
        fh.seek(5)
        fh.write(b"x")
        assert fh.tell() == 6
    assert w.read_bytes("holes") == b"\0" * 5 + b"x"


def test_listdir_stat_walk(w: WorkspaceClient) -> None:
    w.mkdir("d/e", parents=True)
    w.write_bytes("d/f.txt", b"f")
    w.write_bytes("d/e/g.txt", b"gg")
    w.write_bytes("top", b"top!")
    assert w.listdir("") == ["d", "top"]
    assert w.listdir("/") == ["d", "top"]
    assert w.listdir("d") == ["e", "f.txt"]
    assert w.listdir("d/e") == ["g.txt"]
    s = w.stat("d/e/g.txt")
    assert (s.path, s.kind, s.size, s.mode, s.sha256) == ("d/e/g.txt", "file", 2, 0o644, sha(b"gg"))
    assert s.etag
    assert w.stat("d").kind == "dir"
    assert w.stat("").kind == "dir"
    assert w.exists("top") and not w.exists("nope") and not w.exists("d/nope")
    walked = [s.path for s in w.walk("")]
    assert sorted(walked) == ["d", "d/e", "d/e/g.txt", "d/f.txt", "top"]
    assert walked.index("d") < walked.index("d/e") < walked.index("d/e/g.txt")
    assert sorted(s.path for s in w.walk("d")) == ["d/e", "d/e/g.txt", "d/f.txt"]
    sizes = {s.path: s.size for s in w.walk("")}
    assert sizes["top"] == 4 and sizes["d/f.txt"] == 1


def test_mkdir(w: WorkspaceClient, clients: Callable[..., WorkspaceClient]) -> None:
    w.mkdir("a")
    raises_errno(errno.EEXIST, w.mkdir, "a")
    raises_errno(errno.ENOENT, w.mkdir, "x/y/z")
    w.mkdir("x/y/z", parents=True)
    w.mkdir("x/y/z", parents=True)  # exists: fine with parents
    w.mkdir("x/y/z2", 0o700, parents=True)
    assert w.stat("x/y/z2").mode == 0o700
    w.write_bytes("file", b"")
    raises_errno(errno.ENOTDIR, w.mkdir, "file/sub")
    with pytest.raises(OSError) as ei:
        w.mkdir("file/sub/deeper", parents=True)
    assert ei.value.errno == errno.ENOTDIR
    # empty directories persist (they live in the journal)
    other = clients()
    assert other.stat("x/y/z").kind == "dir"
    assert other.listdir("x/y/z") == []


def test_rename_file(url: str, w: WorkspaceClient) -> None:
    store = open_store(url)
    w.write_bytes("a.txt", b"AAA")
    w.rename("a.txt", "b.txt")
    assert w.read_bytes("b.txt") == b"AAA"
    assert not w.exists("a.txt")
    assert store.get(f"{WS}/b.txt") == b"AAA"
    raises_errno(errno.ENOENT, store.head, f"{WS}/a.txt")
    # over an existing file: replaced
    w.write_bytes("c.txt", b"CCC")
    w.rename("b.txt", "c.txt")
    assert w.listdir("") == ["c.txt"]
    assert w.read_bytes("c.txt") == b"AAA"
    assert store.get(f"{WS}/c.txt") == b"AAA"
    raises_errno(errno.ENOENT, w.rename, "ghost", "x")
    w.mkdir("dir")
    raises_errno(errno.EISDIR, w.rename, "c.txt", "dir")
    raises_errno(errno.ENOTDIR, w.rename, "dir", "c.txt")
    # into a directory
    w.rename("c.txt", "dir/c.txt")
    assert w.listdir("dir") == ["c.txt"]
    assert store.get(f"{WS}/dir/c.txt") == b"AAA"


def test_rename_dir(url: str, w: WorkspaceClient) -> None:
    store = open_store(url)
    w.mkdir("src/sub/empty", parents=True)
    w.write_bytes("src/one", b"1")
    w.write_bytes("src/sub/two", b"22")
    w.symlink("one", "src/link")
    w.rename("src", "dst")
    assert not w.exists("src")
    assert sorted(s.path for s in w.walk("dst")) == [
        "dst/link", "dst/one", "dst/sub", "dst/sub/empty", "dst/sub/two"]
    assert w.read_bytes("dst/sub/two") == b"22"
    assert w.stat("dst/link").target == "one"
    assert store.get(f"{WS}/dst/one") == b"1"
    assert store.get(f"{WS}/dst/sub/two") == b"22"
    assert [o.key for o in store.list(f"{WS}/src/")] == []
    # errors
    raises_errno(errno.EINVAL, w.rename, "dst", "dst/sub/inside")
    w.mkdir("full")
    w.write_bytes("full/x", b"x")
    raises_errno(errno.ENOTEMPTY, w.rename, "dst", "full")
    w.mkdir("emptydir")
    w.rename("dst", "emptydir")  # over an empty directory
    assert w.read_bytes("emptydir/one") == b"1"


def test_remove_rmdir_rmtree(url: str, w: WorkspaceClient) -> None:
    store = open_store(url)
    w.write_bytes("f", b"x")
    w.remove("f")
    assert not w.exists("f")
    raises_errno(errno.ENOENT, store.head, f"{WS}/f")
    raises_errno(errno.ENOENT, w.remove, "f")
    w.mkdir("d")
    w.write_bytes("d/inner", b"i")
    raises_errno(errno.EISDIR, w.remove, "d")
    raises_errno(errno.ENOTEMPTY, w.rmdir, "d")
    raises_errno(errno.ENOTDIR, w.rmdir, "d/inner")
    raises_errno(errno.ENOENT, w.rmdir, "nodir")
    w.remove("d/inner")
    w.rmdir("d")
    assert w.listdir("") == []
    w.mkdir("tree/a/b", parents=True)
    for p in ("tree/1", "tree/a/2", "tree/a/b/3"):
        w.write_bytes(p, p.encode())
    w.symlink("1", "tree/ln")
    w.rmtree("tree")
    assert w.listdir("") == []
    assert [o.key for o in store.list(f"{WS}/")] == []


def test_symlink(w: WorkspaceClient, clients: Callable[..., WorkspaceClient]) -> None:
    w.write_bytes("target.txt", b"t")
    w.symlink("target.txt", "ln")
    w.symlink("../outside/dangling", "dangling")
    s = w.stat("ln")
    assert (s.kind, s.target, s.size) == ("symlink", "target.txt", len("target.txt"))
    assert w.listdir("") == ["dangling", "ln", "target.txt"]
    raises_errno(errno.EEXIST, w.symlink, "x", "ln")
    raises_errno(errno.EEXIST, w.symlink, "x", "target.txt")
    assert clients().stat("dangling").target == "../outside/dangling"
    w.remove("ln")
    assert not w.exists("ln")


def test_xattrs(w: WorkspaceClient, clients: Callable[..., WorkspaceClient]) -> None:
    w.write_bytes("f", b"data")
    w.mkdir("d")
    binary = b"\x00\xff\x01\x80binary\n\x00"
    w.setxattr("f", "user.bin", binary)
    w.setxattr("f", "user.agentfs.note", b"hello")
    w.setxattr("d", "user.dir", b"")
    assert w.getxattr("f", "user.bin") == binary
    # a typed agent-state attribute also gets agentfs's stamps (see test_agentstate.py)
    assert w.listxattr("f") == ["user.agentfs.note", "user.agentfs.updated_at", "user.agentfs.updated_by",
                                "user.bin"]
    assert w.getxattr("d", "user.dir") == b""
    w.setxattr("f", "user.bin", b"replaced")
    assert w.getxattr("f", "user.bin") == b"replaced"
    w.removexattr("f", "user.agentfs.note")
    assert w.listxattr("f") == ["user.agentfs.updated_at", "user.agentfs.updated_by", "user.bin"]
    raises_errno(errno.ENODATA, w.getxattr, "f", "user.agentfs.note")
    raises_errno(errno.ENODATA, w.removexattr, "f", "user.nope")
    big = bytes(random.Random(3).randbytes(64 * 1024))
    w.setxattr("f", "user.big", big)  # exactly 64 KiB is allowed
    assert w.getxattr("f", "user.big") == big
    raises_errno(errno.E2BIG, w.setxattr, "f", "user.toobig", big + b"x")
    raises_errno(errno.ENOTSUP, w.setxattr, "f", "trusted.x", b"v")
    raises_errno(errno.ENOENT, w.getxattr, "missing", "user.bin")
    # xattrs persist, and the bytes (the data) are untouched by them
    other = clients()
    assert other.getxattr("f", "user.bin") == b"replaced"
    assert other.getxattr("f", "user.big") == big
    assert other.read_bytes("f") == b"data"


def test_errnos(w: WorkspaceClient) -> None:
    w.mkdir("dir")
    w.write_bytes("file.txt", b"x")
    raises_errno(errno.ENOENT, w.read_bytes, "missing")
    raises_errno(errno.ENOENT, w.stat, "missing/deeper")
    raises_errno(errno.ENOENT, w.listdir, "missing")
    raises_errno(errno.ENOENT, w.write_bytes, "nodir/f.txt", b"x")
    raises_errno(errno.EISDIR, w.read_bytes, "dir")
    raises_errno(errno.EISDIR, w.open, "dir", "wb")
    raises_errno(errno.ENOTDIR, w.listdir, "file.txt")
    raises_errno(errno.ENOTDIR, w.stat, "file.txt/x")
    raises_errno(errno.ENOTDIR, w.write_bytes, "file.txt/x", b"x")
    raises_errno(errno.EEXIST, w.mkdir, "file.txt")
    long = "x" * 256
    raises_errno(errno.ENAMETOOLONG, w.write_bytes, long, b"x")
    raises_errno(errno.ENAMETOOLONG, w.mkdir, long)
    raises_errno(errno.ENAMETOOLONG, w.symlink, "t", long)
    raises_errno(errno.ENAMETOOLONG, w.rename, "file.txt", long)
    raises_errno(errno.ENAMETOOLONG, w.write_bytes, "é" * 128, b"x")  # 256 bytes in UTF-8
    w.write_bytes("y" * 255, b"ok")  # the longest allowed name
    assert w.read_bytes("y" * 255) == b"ok"
    # the errors are agentfs errors, i.e. OSErrors with a message
    e = raises_errno(errno.ENOENT, w.read_bytes, "missing")
    assert isinstance(e, agentfs.errors.AgentFSError) and str(e)
    assert sorted(w.listdir("")) == sorted(["dir", "file.txt", "y" * 255])


# ------------------------------------------------------------------ the store


def test_natural_keys_and_journal(url: str, clients: Callable[..., WorkspaceClient]) -> None:
    w = clients(agent="api-tester")
    store = open_store(url)
    data = b"natural key bytes\n" * 100
    w.mkdir("a")
    w.write_bytes("a/b.txt", data)
    assert store.get(f"{WS}/a/b.txt") == data
    assert store.head(f"{WS}/a/b.txt").size == len(data)
    assert store.head(f"{WS}/a/b.txt").etag == w.stat("a/b.txt").etag
    # nothing but the file at the workspace's natural keys
    assert [o.key for o in store.list(f"{WS}/")] == [f"{WS}/a/b.txt"]
    keys = [o.key for o in store.list(f".agentfs/{WS}/log/")]
    assert keys and all(re.fullmatch(rf"\.agentfs/{WS}/log/\d{{20}}\.json", k) for k in keys)
    commits = [Commit.model_validate_json(store.get(k)) for k in keys]
    assert [c.seq for c in commits] == list(range(1, len(commits) + 1))
    records = [r for c in commits for r in c.records]
    actions = [r.action for r in records]
    assert actions[0] == "create-workspace"
    assert "mkdir" in actions
    create = [r for r in records if r.action == "create"]
    assert len(create) == 1
    assert create[0].op.path == "a/b.txt"
    assert create[0].op.entry.sha256 == sha(data)
    assert create[0].op.entry.size == len(data)
    assert all(r.agent == "api-tester" for r in records)
    # the workspace is listed
    from agentfs.check import workspace_names

    assert workspace_names(store) == [WS]


def test_two_clients_see_each_other(clients: Callable[..., WorkspaceClient]) -> None:
    a, b = clients(), clients()
    a.write_bytes("x", b"1")
    assert b.read_bytes("x") == b"1"
    b.write_bytes("x", b"two")
    assert a.read_bytes("x") == b"two"
    b.mkdir("d")
    assert "d" in a.listdir("")
    a.rename("x", "d/x")
    assert b.listdir("d") == ["x"] and not b.exists("x")
    a.setxattr("d/x", "user.state", b"done")
    assert b.getxattr("d/x", "user.state") == b"done"
    b.remove("d/x")
    assert not a.exists("d/x")
    with a.open("streamed", "wb") as fh:
        fh.write(b"s" * 1000)
    assert b.stat("streamed").size == 1000


def test_large_file_round_trip(url: str, w: WorkspaceClient) -> None:
    """20 MiB (above the 16 MiB multipart threshold), written in 1 MiB pieces."""
    rng = random.Random(20)
    h = hashlib.sha256()
    with w.open("big.bin", "wb") as fh:
        for _ in range(20):
            chunk = rng.randbytes(MiB)
            h.update(chunk)
            fh.write(chunk)
    digest = h.hexdigest()
    st = w.stat("big.bin")
    assert st.size == 20 * MiB
    assert st.sha256 == digest
    back = hashlib.sha256()
    with w.open("big.bin", "rb") as fh:
        while chunk := fh.read(3 * MiB + 17):
            back.update(chunk)
    assert back.hexdigest() == digest
    store = open_store(url)
    assert sha(store.get(f"{WS}/big.bin")) == digest
    # a range in the middle
    with w.open("big.bin", "rb") as fh:
        fh.seek(17 * MiB - 3)
        part = fh.read(10)
    assert part == store.get(f"{WS}/big.bin", 17 * MiB - 3, 17 * MiB + 7)


def _check_conflict(store_url: str, clients: Callable[..., WorkspaceClient], path: str,
                    contents: set[bytes]) -> None:
    c = clients()
    stem, ext = path.rsplit(".", 1)
    names = c.listdir("")
    conflicts = [n for n in names if n.startswith(f"{stem}.conflict-")]
    assert len(conflicts) == 1, f"expected one conflict copy of {path}, found {names}"
    cname = conflicts[0]
    assert cname.endswith(f".{ext}")
    winner, loser = c.read_bytes(path), c.read_bytes(cname)
    assert {winner, loser} == contents, "a write was lost"
    note = json.loads(c.getxattr(cname, "user.agentfs.conflict"))
    assert note["of"] == path
    store = open_store(store_url)
    assert store.get(f"{WS}/{cname}") == loser
    assert store.get(f"{WS}/{path}") == winner


def test_conflict_two_writers(url: str, clients: Callable[..., WorkspaceClient]) -> None:
    """Two clients open one existing file r+b, both write, both close: one
    content wins, the other is kept as a conflict copy; nothing is lost."""
    a, b = clients(agent="agent-a"), clients(agent="agent-b")
    a.write_bytes("c.txt", b"base content")
    fa = a.open("c.txt", "r+b")
    fb = b.open("c.txt", "r+b")
    fa.write(b"AAAA from a")
    fb.write(b"BBBB from b")
    fa.close()
    with pytest.raises(ConflictError) as lost:  # the loser is told, naming its copy
        fb.close()
    assert lost.value.errno == errno.ESTALE and lost.value.path == "c.txt"
    assert b.read_bytes(lost.value.copy) == b"BBBB from bt"
    _check_conflict(url, clients, "c.txt", {b"AAAA from at", b"BBBB from bt"})
    assert b.read_bytes("c.txt") == b"AAAA from at", "the loser's client still serves its own version"


def test_conflict_two_writers_unbuffered(url: str, clients: Callable[..., WorkspaceClient]) -> None:
    """As above, with writes large enough to bypass the client's write buffer, so
    both reach the workspace before either close."""
    a, b = clients(agent="agent-a"), clients(agent="agent-b")
    a.write_bytes("big.dat", b"0" * (2 * MiB))
    da, db = b"a" * (2 * MiB), b"b" * (2 * MiB)
    fa = a.open("big.dat", "r+b")
    fb = b.open("big.dat", "r+b")
    fa.write(da)
    fb.write(db)
    fa.close()
    with pytest.raises(ConflictError):
        fb.close()
    _check_conflict(url, clients, "big.dat", {da, db})


def test_setxattr_lock_through_the_api_is_refused(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/store"
    with agentfs.open_workspace(url, "ws", create=True, agent="alice") as w:
        w.write_bytes("p.txt", b"x")
        commits = len(list(agentstate.read_records(Journal(w.store, "ws"))))
        for path in ("p.txt", ""):
            with pytest.raises(OSError) as ei:
                w.setxattr(path, "user.agentfs.lock", b"garbage")
            assert ei.value.errno == errno.EINVAL
            assert "agentfs.lock()" in str(ei.value) and "WorkspaceClient.lock()" in str(ei.value)
            assert "user.agentfs.lock" not in w.listxattr(path)
        assert len(list(agentstate.read_records(Journal(w.store, "ws")))) == commits  # nothing journaled
        with w.lock("p.txt", wait=0):  # the lease API still works
            pass
