"""A corpus of hostile inputs: the right errno, and the mount stays alive.

Through a real mount of a local store (names, xattrs, control xattrs,
workspace names), through the Python API and the CLI (what the kernel cannot
pass: ``/`` and NUL inside a name, traversal in workspace names), and damaged
records planted in the store (journal records and state snapshots that are
truncated, corrupt or from a future format version).

Decisions (docs/SEMANTICS.md, "Failure behaviour"): a name that is not valid
UTF-8 is refused with EINVAL (names are UTF-8 strings in the journal and keys
in S3); so is an xattr name that is not valid UTF-8.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import agentfs
from agentfs import errors
from agentfs.check import check_store
from agentfs.models import FORMAT_VERSION
from agentfs.store import open_store
from tests.helpers.mount import REPO, Mount

#: Inputs tried, for the closing note (printed with -s).
TRIED: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _report() -> Iterator[None]:
    yield
    print(f"\n[bad input] {len(TRIED)} hostile inputs tried")


def expect_errno(code: int | set[int], fn: Callable[[], object], what: str) -> None:
    codes = {code} if isinstance(code, int) else code
    TRIED.append(what)
    with pytest.raises(OSError) as ei:
        fn()
    assert ei.value.errno in codes, f"{what}: {ei.value!r}, expected {[errno.errorcode[c] for c in codes]}"


def alive(root: Path) -> None:
    """The mount still answers, reads and writes."""
    p = root / "alive.txt"
    p.write_bytes(b"still here")
    assert p.read_bytes() == b"still here"
    assert "alive.txt" in os.listdir(root)


@pytest.fixture
def local(tmp_path: Path) -> str:
    d = tmp_path / "store"
    d.mkdir()
    return f"file://{d}"


@pytest.fixture
def wsroot(mounter: Callable[..., Mount], local: str) -> Path:
    m = mounter(local)
    root = m.path / "ws"
    root.mkdir()
    return root


# -- names ------------------------------------------------------------------------------


def test_names_through_the_mount(wsroot: Path) -> None:
    root = wsroot
    ok255 = "n" * 255
    (root / ok255).write_bytes(b"x")
    assert (root / ok255).read_bytes() == b"x"
    utf255 = "é" * 127 + "a"  # 255 bytes in UTF-8
    (root / utf255).write_bytes(b"y")
    assert utf255 in os.listdir(root)
    TRIED.extend(["255-byte name", "255-byte UTF-8 name"])
    for n in (256, 300, 4000):
        expect_errno(errno.ENAMETOOLONG, lambda n=n: (root / ("n" * n)).write_bytes(b""), f"{n}-byte name")
        expect_errno(errno.ENAMETOOLONG, lambda n=n: os.mkdir(root / ("d" * n)), f"mkdir {n}-byte name")
    expect_errno(errno.ENAMETOOLONG, lambda: os.rename(root / ok255, root / ("m" * 256)), "rename to 256")
    bad_utf8 = [b"\xff", b"a\xfeb", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]
    rb = os.fsencode(root)
    for raw in bad_utf8:
        expect_errno(errno.EINVAL, lambda raw=raw: os.open(rb + b"/" + raw, os.O_CREAT | os.O_WRONLY, 0o644),
                     f"create invalid UTF-8 {raw!r}")
        expect_errno(errno.EINVAL, lambda raw=raw: os.mkdir(rb + b"/" + raw), f"mkdir invalid UTF-8 {raw!r}")
        expect_errno(errno.EINVAL, lambda raw=raw: os.rename(os.fsencode(root / ok255), rb + b"/" + raw),
                     f"rename to invalid UTF-8 {raw!r}")
        expect_errno(errno.EINVAL, lambda raw=raw: os.symlink(b"target", rb + b"/" + raw),
                     f"symlink named invalid UTF-8 {raw!r}")
        expect_errno({errno.ENOENT, errno.EINVAL}, lambda raw=raw: os.stat(rb + b"/" + raw),
                     f"lookup invalid UTF-8 {raw!r}")
    # a symlink *target* that is not UTF-8 is refused too (it is stored as text)
    expect_errno(errno.EINVAL, lambda: os.symlink(b"\xff\xfe", root / "badlink"), "symlink target not UTF-8")
    # "." and ".." never reach agentfs as names to create
    expect_errno(errno.EEXIST, lambda: os.mkdir(root / ".."), "mkdir ..")
    expect_errno(errno.EEXIST, lambda: os.mkdir(root / "."), "mkdir .")
    expect_errno({errno.EBUSY, errno.EINVAL, errno.ENOTEMPTY}, lambda: os.rename(root / ok255, root / ".."),
                 "rename onto ..")
    with pytest.raises(ValueError):  # NUL: Python refuses before the kernel
        os.open(str(root / "a\0b"), os.O_CREAT)
    alive(root)


def test_names_through_the_api(local: str) -> None:
    c = agentfs.open_workspace(local, "ws")
    try:
        c.write_bytes("ok", b"1")
        for bad in ("a\0b", "\0", "x/\0/y"):
            expect_errno({errno.EINVAL, errno.ENOENT}, lambda bad=bad: c.write_bytes(bad, b""), f"API name {bad!r}")
        for bad in ("..", "../x", "a/../../x", "./x", "a/./b", "a/..", "."):
            expect_errno({errno.EINVAL, errno.ENOENT}, lambda bad=bad: c.write_bytes(bad, b""),
                         f"API path {bad!r}")
        expect_errno(errno.ENAMETOOLONG, lambda: c.write_bytes("z" * 256, b""), "API 256-byte name")
        expect_errno(errno.EINVAL, lambda: c.write_bytes("bad\udcff", b""), "API lone surrogate")
        expect_errno(errno.EINVAL, lambda: c.rename("ok", "a\0b"), "API rename to NUL")
        expect_errno({errno.EINVAL, errno.ENOENT}, lambda: c.rename("ok", "../escape"), "API rename ..")
        assert c.read_bytes("ok") == b"1" and sorted(c.listdir("")) == ["ok"]
    finally:
        c.close()
    # nothing escaped the workspace in the store
    store = open_store(local)
    keys = {o.key.split("/")[0] for o in store.list("")}
    assert keys <= {"ws", ".agentfs"}, keys


@pytest.mark.parametrize("name", ["..", "../x", "/abs", ".agentfs", ".agentfs-tmp", ".agentfsX", "a/b",
                                  "", ".", "a\0b", "x" * 256, "bad\udcff"])
def test_workspace_names_refused_by_the_api(local: str, name: str) -> None:
    TRIED.append(f"API workspace {name[:20]!r}")
    with pytest.raises(errors.AgentFSError) as ei:
        agentfs.open_workspace(local, name)
    assert ei.value.errno in (errno.EINVAL, errno.ENAMETOOLONG)
    assert {o.key.split("/")[0] for o in open_store(local).list("")} <= {".agentfs"}


def _cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "agentfs", *args], input=stdin, capture_output=True,
                          env=env, cwd=str(REPO), timeout=120)


def test_workspace_and_path_traversal_through_the_cli(local: str, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"payload")
    for target in ("../escape/x", ".agentfs/ws/log/x", ".agentfs-tmp/x", "ws/../../x", "ws/a/../../../x"):
        TRIED.append(f"CLI put {target}")
        r = _cli("put", str(src), target, "--store", local)
        assert r.returncode == 64, (target, r.returncode, r.stderr)
        lines = r.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("agentfs: "), r.stderr
    keys = {o.key for o in open_store(local).list("")}
    assert not any(k.startswith(("escape", "x")) for k in keys), keys
    assert not (tmp_path / "escape").exists()


# -- xattrs -----------------------------------------------------------------------------


def test_xattr_limits_through_the_mount(wsroot: Path) -> None:
    p = wsroot / "f"
    p.write_bytes(b"")
    name255 = "user." + "a" * 250
    os.setxattr(p, name255, b"v")
    assert os.getxattr(p, name255) == b"v"
    big = os.urandom(65536)
    os.setxattr(p, "user.big", big)
    assert os.getxattr(p, "user.big") == big
    os.setxattr(p, "user.empty", b"")
    assert os.getxattr(p, "user.empty") == b""
    TRIED.extend(["xattr name 255", "xattr value 64 KiB", "empty xattr value"])
    expect_errno(errno.ERANGE, lambda: os.setxattr(p, "user." + "a" * 251, b"v"), "xattr name 256")
    expect_errno(errno.ERANGE, lambda: os.getxattr(p, "user." + "a" * 251), "get xattr name 256")
    expect_errno(errno.E2BIG, lambda: os.setxattr(p, "user.big2", os.urandom(65537)), "xattr value 64 KiB + 1")
    expect_errno(errno.ENODATA, lambda: os.getxattr(p, "user.missing"), "missing xattr")
    expect_errno(errno.ENODATA, lambda: os.removexattr(p, "user.missing"), "remove missing xattr")
    expect_errno(errno.EOPNOTSUPP, lambda: os.setxattr(p, "trusted.x", b"v"), "trusted.* xattr")
    expect_errno({errno.EOPNOTSUPP, errno.EPERM}, lambda: os.setxattr(p, "security.x", b"v"),
                 "security.* xattr")
    expect_errno({errno.EINVAL, errno.ERANGE}, lambda: os.setxattr(p, "user.", b"v"), "xattr name 'user.'")
    expect_errno(errno.EINVAL, lambda: os.setxattr(p, b"user.\xff\xfe", b"v"), "xattr name not UTF-8")
    expect_errno(errno.EEXIST, lambda: os.setxattr(p, "user.big", b"x", os.XATTR_CREATE), "XATTR_CREATE")
    expect_errno(errno.ENODATA, lambda: os.setxattr(p, "user.nope", b"x", os.XATTR_REPLACE),
                 "XATTR_REPLACE")
    assert os.getxattr(p, "user.big") == big
    assert sorted(os.listxattr(p)) == sorted([name255, "user.big", "user.empty"])
    alive(wsroot)


def test_control_xattrs_malformed_huge_out_of_order(mounter: Callable[..., Mount], local: str) -> None:
    m = mounter(local)
    top = m.path
    (top / "ws").mkdir()
    # sync with any payload, before anything is dirty, twice in a row
    for payload in (b"", b"garbage", os.urandom(65536), b"\0" * 100):
        os.setxattr(top, "user.agentfs.mount.sync", payload)
        TRIED.append(f"control sync payload {len(payload)} bytes")
    # sync while a file is open and being written: its bytes become durable
    fd = os.open(top / "ws" / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"part one")
    os.setxattr(top, "user.agentfs.mount.sync", b"1")
    os.write(fd, b" part two")
    os.close(fd)
    assert (top / "ws" / "open.bin").read_bytes() == b"part one part two"
    # read-only and unknown control names
    for name in ("user.agentfs.mount.pid", "user.agentfs.mount.status", "user.agentfs.mount.bogus"):
        expect_errno({errno.EOPNOTSUPP, errno.EPERM, errno.EINVAL},
                     lambda name=name: os.setxattr(top, name, b"123"), f"set control {name}")
        expect_errno({errno.ENODATA, errno.EOPNOTSUPP, errno.EPERM},
                     lambda name=name: os.removexattr(top, name), f"remove control {name}")
    expect_errno(errno.ENODATA, lambda: os.getxattr(top, "user.agentfs.mount.bogus"), "get unknown control")
    assert int(os.getxattr(top, "user.agentfs.mount.pid")) == m.pid
    status = json.loads(os.getxattr(top, "user.agentfs.mount.status"))
    assert status["mount"] and status["dirty"] == 0
    alive(top / "ws")


def test_control_names_on_a_single_workspace_root(mounter: Callable[..., Mount], local: str) -> None:
    """With --workspace the root is the workspace's root directory: the
    read-only control names must not be stored there as ordinary xattrs."""
    m = mounter(local, "--workspace", "ws")
    for name in ("user.agentfs.mount.pid", "user.agentfs.mount.status", "user.agentfs.mount.other"):
        expect_errno({errno.EPERM, errno.EINVAL}, lambda name=name: os.setxattr(m.path, name, b"1"),
                     f"single-ws set control {name}")
    assert int(os.getxattr(m.path, "user.agentfs.mount.pid")) == m.pid
    os.setxattr(m.path, "user.agentfs.mount.sync", b"")
    os.setxattr(m.path, "user.ordinary", b"fine")
    assert os.getxattr(m.path, "user.ordinary") == b"fine"
    alive(m.path)


def test_workspace_names_through_the_mount(mounter: Callable[..., Mount], local: str) -> None:
    m = mounter(local)
    for name in (".agentfs", ".agentfs-tmp", ".agentfsx"):
        expect_errno(errno.EINVAL, lambda name=name: os.mkdir(m.path / name), f"mkdir workspace {name}")
        expect_errno(errno.ENOENT, lambda name=name: os.stat(m.path / name), f"stat workspace {name}")
    expect_errno(errno.ENOENT, lambda: os.listdir(m.path / ".agentfs"), "list .agentfs")
    assert ".agentfs" not in os.listdir(m.path)
    (m.path / "ws").mkdir()
    alive(m.path / "ws")


# -- damaged records in the store -------------------------------------------------------


def _store_dir(url: str) -> Path:
    return Path(url[len("file://"):])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "future", "not-json-object", "empty"])
def test_damaged_journal_record(mounter: Callable[..., Mount], local: str, damage: str) -> None:
    """A damaged next journal record: the mount does not die, never overwrites
    it, writes fail with EIO, `agentfs check` names it (exit 1)."""
    c = agentfs.open_workspace(local, "ws")
    c.write_bytes("before", b"committed")
    seq = c.ws.ns.seq if c.ws is not None else 0
    c.close()
    rec = _store_dir(local) / ".agentfs" / "ws" / "log" / f"{seq + 1:020d}.json"
    good = json.dumps({"v": FORMAT_VERSION, "seq": seq + 1, "id": "x" * 32, "time": 1.0, "records": []})
    body = {"truncated": good[: len(good) // 2].encode(), "garbage": os.urandom(300),
            "future": good.replace(f'"v": {FORMAT_VERSION}', '"v": 99').encode(),
            "not-json-object": b"[1, 2, 3]", "empty": b""}[damage]
    rec.write_bytes(body)
    TRIED.append(f"journal record {damage}")
    m = mounter(local)
    m.expect_errors = True  # the mount logs the damaged record as an ERROR
    root = m.path / "ws"
    # loading the workspace fails cleanly (EIO), the mount stays up
    expect_errno(errno.EIO, lambda: os.listdir(root), f"list ws with {damage} record")
    os.mkdir(m.path / "other")
    alive(m.path / "other")
    assert rec.read_bytes() == body, "the damaged record was overwritten"
    r = _cli("check", local)
    assert r.returncode == 1, r
    assert "journal record" in (r.stdout + r.stderr).decode() or "unreadable" in (r.stdout + r.stderr).decode()
    assert rec.read_bytes() == body


def test_damaged_record_seen_by_a_live_mount(mounter: Callable[..., Mount], local: str) -> None:
    """The record after a live mount's position is damaged: its tail stops
    there (logged), its next commit fails with EIO instead of overwriting."""
    m = mounter(local)
    m.expect_errors = True
    root = m.path / "ws"
    root.mkdir()
    (root / "a").write_bytes(b"1")
    fd = os.open(root / "a", os.O_RDONLY)  # fsync: a's group-committed record is in the journal
    os.fsync(fd)
    os.close(fd)
    logdir = _store_dir(local) / ".agentfs" / "ws" / "log"
    seq = max(int(p.name.split(".")[0]) for p in logdir.iterdir())
    rec = logdir / f"{seq + 1:020d}.json"
    rec.write_bytes(b'{"v": 1, "seq": ')
    TRIED.append("journal record damaged under a live mount")
    # a metadata operation waits for its commit (a close would not: group commit)
    expect_errno(errno.EIO, lambda: os.mkdir(root / "d"), "commit after a damaged record")
    assert rec.read_bytes() == b'{"v": 1, "seq": '
    assert (root / "a").read_bytes() == b"1"
    assert "unreadable journal record" in m.log_text()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "future"])
def test_damaged_state_snapshot(local: str, damage: str) -> None:
    """A damaged newest state snapshot is skipped (warning) and the journal
    replayed: nothing is lost and nothing overwrites it."""
    c = agentfs.open_workspace(local, "ws")
    for i in range(5):
        c.write_bytes(f"f{i}", bytes([i]) * 10)
    ws = c.ws
    assert ws is not None
    import trio  # the client's loop runs in a thread: compact through it

    c._run(ws.compact)  # type: ignore[attr-defined]
    seq = ws.ns.seq
    c.close()
    path = _store_dir(local) / ".agentfs" / "ws" / "state" / f"{seq:020d}.json.gz"
    raw = gzip.decompress(path.read_bytes())
    body = {"truncated": path.read_bytes()[:20], "garbage": os.urandom(100),
            "future": gzip.compress(raw.replace(b'"v":1', b'"v":99'))}[damage]
    assert damage != "future" or b'"v":99' in gzip.decompress(body)
    path.write_bytes(body)
    TRIED.append(f"state snapshot {damage}")
    del trio
    c = agentfs.open_workspace(local, "ws")
    try:
        assert sorted(c.listdir("")) == [f"f{i}" for i in range(5)]
        assert c.read_bytes("f3") == b"\3" * 10
    finally:
        c.close()
    assert path.read_bytes() == body
    assert check_store(open_store(local)).clean


# -- typed state, locks, checkpoints ----------------------------------------
# test_state_mount.py already covers an unknown status or transition, bad JSON and
# wrong-typed labels, a bad ttl word, an oversized owner/note, an unknown name, a bad
# lifecycle and writes of updated_by/updated_at; these are the payloads it does not try.

P = "user.agentfs."


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_fingerprint(url: str) -> dict[str, str]:
    """Every object but the mount's own bookkeeping that may change at any time
    (STATE.md, which is rewritten in the background)."""
    return {o.key: o.etag for o in open_store(url).list("") if not o.key.endswith("/STATE.md")}


def test_malformed_typed_state_payloads(mounter: Callable[..., Mount], local: str) -> None:
    m = mounter(local)
    root = m.path / "ws"
    root.mkdir()
    f = root / "r.md"
    f.write_bytes(b"x")
    os.setxattr(f, P + "status", b"draft")
    os.setxattr(f, P + "owner", b"agent-1")
    fsync_dir(root)  # the close's deferred journal record is committed (os.sync() does not reach FUSE)
    before = store_fingerprint(local)
    bad: list[tuple[Path, str, bytes]] = [
        (f, "status", b"\xff\xfe"), (f, "status", b""), (f, "status", b"   "), (f, "status", b'"draft'),
        (f, "status", b"123"), (f, "status", b'["review"]'),
        (f, "owner", b""), (f, "owner", b"  \t "), (f, "owner", b"a\x01b"), (f, "owner", b"line\nbreak"),
        (f, "owner", b"\xc3\x28"), (f, "owner", b'"unterminated'), (f, "owner", b"\"\\u0000\""),
        (f, "owner", b"42 is fine but this is \x7f"), (f, "task", b"\x00"), (f, "task", b"t" * 129),
        (f, "labels", b"\xff"), (f, "labels", b'{"a": 1}'), (f, "labels", b"ok, bad label"),
        (f, "labels", b"l" * 65), (f, "labels", ",".join(f"l{i}" for i in range(65)).encode()),
        (f, "labels", b'["a", null]'), (f, "labels", b"[" * 10000),
        (f, "ttl", b"0"), (f, "ttl", b"-5"), (f, "ttl", b"1x"), (f, "ttl", b"600w"), (f, "ttl", b""),
        (f, "ttl", b'{"seconds": "x"}'), (f, "ttl", b"\xff"), (f, "ttl", b"1h 30"),
        (f, "note", b"\xff\xfe\xfd"), (f, "note", b""), (f, "note", b"n" * 4097),
        (f, "lifecycle", b'{"statuses": ["a", "b"]}'),  # only on the workspace root
        (root, "lifecycle", b'{"statuses": ["a"], "transitions": {"a": ["zz"]}}'),
        (root, "lifecycle", b'{"statuses": []}'), (root, "lifecycle", b'{"statuses": ["Bad Name"]}'),
        (root, "lifecycle", b'{"statuses": ["a"], "initial": ["b"]}'), (root, "lifecycle", b"[]"),
        (root, "lifecycle", b"\xff"), (f, "status.extra", b"x"), (f, "", b"x"), (f, "STATUS", b"draft"),
    ]
    for target, short, value in bad:
        expect_errno(errno.EINVAL, lambda t=target, s=short, v=value: os.setxattr(t, P + s, v),
                     f"setxattr {P}{short}={value[:20]!r}")
    # past the kernel's xattr size limit, and removals of the stamps
    expect_errno({errno.E2BIG, errno.ERANGE, errno.ENOSPC}, lambda: os.setxattr(f, P + "note", b"n" * 70_000),
                 "setxattr 70 000-byte note")
    for short in ("updated_by", "updated_at"):
        expect_errno(errno.EPERM, lambda s=short: os.removexattr(f, P + s), f"removexattr {P}{short}")
    expect_errno(errno.ENODATA, lambda: os.removexattr(f, P + "task"), "removexattr absent task")
    assert os.getxattr(f, P + "status") == b"draft"
    assert os.getxattr(f, P + "owner") == b"agent-1"
    assert store_fingerprint(local) == before  # no record, no object: nothing was committed
    alive(root)
    assert m.proc.poll() is None


def test_lock_payloads_garbage_and_huge(mounter: Callable[..., Mount], local: str) -> None:
    m = mounter(local)
    root = m.path / "ws"
    root.mkdir()
    f = root / "locked.txt"
    f.write_bytes(b"data")
    fsync_dir(root)  # the close's deferred journal record is committed (os.sync() does not reach FUSE)
    before = store_fingerprint(local)
    for value in (b"", b" ", b"xyz", b"exclusive now", b"shared wait wait please", b"\xff\xfe",
                  b"exclusive\x00", b"wait", b"break now", b"EXCLUSIVE " + b"x" * 60_000,
                  b"shared " + b"wait " * 12_000 + b"now", b'{"mode": "exclusive"}'):
        expect_errno(errno.EINVAL, lambda v=value: os.setxattr(f, P + "lock", v),
                     f"setxattr {P}lock={value[:20]!r}")
    expect_errno({errno.E2BIG, errno.ERANGE, errno.ENOSPC}, lambda: os.setxattr(f, P + "lock", b"x" * 70_000),
                 "setxattr 70 000-byte lock payload")
    expect_errno(errno.ENODATA, lambda: os.getxattr(f, P + "lock"), "no lease was taken")
    assert f.read_bytes() == b"data"
    assert P + "lock" not in os.listxattr(f)
    assert store_fingerprint(local) == before  # no lease object, no record
    alive(root)
    assert m.proc.poll() is None


CHECKPOINT_NAMES_CLI = ["../x", "/abs", ".agentfs", "..", ".", ".hidden", "a/b", "x" * 256, "y" * 201,
                        "a b", "-x", "é", "a\\b", "a\tb"]


def test_checkpoint_names_through_the_mount(mounter: Callable[..., Mount], local: str) -> None:
    m = mounter(local)
    root = m.path / "ws"
    root.mkdir()
    (root / "f").write_bytes(b"1")
    os.mkdir(root / ".snapshots" / "good")
    before = store_fingerprint(local)
    snaps = root / ".snapshots"
    for name in (".agentfs", ".hidden", ".agentfs-tmp", "y" * 201, "a b", "é", "-x", "a\\b", "a\tb",
                 "bad\udcff"):
        expect_errno(errno.EINVAL, lambda n=name: os.mkdir(os.path.join(snaps, n)), f"mkdir .snapshots/{name[:20]!r}")
    expect_errno({errno.EINVAL, errno.ENAMETOOLONG}, lambda: os.mkdir(snaps / ("x" * 256)),
                 "mkdir .snapshots/<256 bytes>")
    expect_errno(errno.EEXIST, lambda: os.mkdir(snaps / ".."), "mkdir .snapshots/..")
    expect_errno(errno.EEXIST, lambda: os.mkdir(snaps / "good"), "mkdir an existing checkpoint")
    expect_errno(errno.EROFS, lambda: os.mkdir(snaps / "good" / "inside"), "mkdir inside a checkpoint")
    expect_errno(errno.EROFS, lambda: (snaps / "good" / "f").write_bytes(b"2"), "write inside a checkpoint")
    expect_errno({errno.EPERM, errno.EINVAL, errno.EROFS, errno.EACCES},
                 lambda: (snaps / "file").write_bytes(b"2"), "create a file in .snapshots")
    assert os.listdir(snaps / "good") == ["f"]
    assert store_fingerprint(local) == before  # no checkpoint record or object was written
    alive(root)
    assert m.proc.poll() is None


def test_checkpoint_and_fork_names_through_the_cli_and_api(local: str, tmp_path: Path) -> None:
    c = agentfs.open_workspace(local, "ws")
    try:
        c.write_bytes("f", b"1")
        c.checkpoint("good")
    finally:
        c.close()
    before = store_fingerprint(local)
    for name in [*CHECKPOINT_NAMES_CLI, ""]:
        TRIED.append(f"CLI checkpoint create {name[:20]!r}")
        r = _cli("checkpoint", "create", f"{local}/ws", "--", name) if name.startswith("-") else \
            _cli("checkpoint", "create", f"{local}/ws", name)
        assert r.returncode == 64, (name, r.returncode, r.stderr)
        lines = r.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("agentfs: "), (name, r.stderr)
    for target in ("../x", "/abs", ".agentfs", "..", "", "a/b", "x" * 256, ".agentfs-tmp", "ws"):
        TRIED.append(f"CLI checkpoint fork to {target[:20]!r}")
        r = _cli("checkpoint", "fork", f"{local}/ws@good", target)
        # an existing workspace: "already exists"; too long: NameTooLong (exit 1); else usage (64)
        want = {"ws": (1, 64, 73), "x" * 256: (1, 64)}.get(target, (64,))
        assert r.returncode in want, (target, r.returncode, r.stderr)
        lines = r.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("agentfs: "), (target, r.stderr)
    for name in ("../x", "good/../../x", "../good"):
        TRIED.append(f"CLI checkpoint restore {name!r}")
        r = _cli("checkpoint", "restore", f"{local}/ws", name)
        assert r.returncode in (2, 64), (name, r.returncode, r.stderr)  # not found, or refused
    c = agentfs.open_workspace(local, "ws", create=False)
    try:
        for name in [*CHECKPOINT_NAMES_CLI, "", "a\0b", "bad\udcff"]:
            TRIED.append(f"API checkpoint {name[:20]!r}")
            with pytest.raises(errors.AgentFSError) as ei:
                c.checkpoint(name)
            assert ei.value.errno in (errno.EINVAL, errno.ENAMETOOLONG), (name, ei.value)
        for target in ("../x", "/abs", ".agentfs", "", "a\0b", "x" * 256, "ws/../x"):
            TRIED.append(f"API fork to {target[:20]!r}")
            with pytest.raises(errors.AgentFSError) as ei:
                c.fork("good", target)
            assert ei.value.errno in (errno.EINVAL, errno.ENAMETOOLONG), (target, ei.value)
        assert [cp.name for cp in c.checkpoints()] == ["good"]
    finally:
        c.close()
    assert store_fingerprint(local) == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "abs").exists()
    assert {o.key.split("/")[0] for o in open_store(local).list("")} <= {"ws", ".agentfs"}
