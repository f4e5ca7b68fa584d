"""POSIX semantics of a live agentfs mount, one small claim per test.

Every test runs in ``ws`` (a fresh workspace directory on a real mount, over a
local store and over moto S3; the claims about names, metadata and error paths,
marked ``local_store_only``, over the local store: the journal holds them alike
on every store, and the store conformance tests pin what the stores do).  With ``AGENTFS_TEST_TARGET=localdir`` ``ws`` is
a plain local directory: the tests must pass there too, which is how they are
checked to be right; the few deliberate differences are handled by
``LOCALDIR``-aware helpers below.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import stat
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.mount import local_store_only

LOCALDIR = os.environ.get("AGENTFS_TEST_TARGET") == "localdir"
XATTR_SIZE_MAX = 64 * 1024  # Linux limit on one xattr value


# ---------------------------------------------------------------- helpers


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def read(path: Path) -> bytes:
    return path.read_bytes()


@contextmanager
def fd_open(path: Path, flags: int, mode: int = 0o644) -> Iterator[int]:
    fd = os.open(path, flags, mode)
    try:
        yield fd
    finally:
        os.close(fd)


def read_fd(fd: int, size: int, offset: int = 0) -> bytes:
    """Read exactly ``size`` bytes at ``offset`` (fewer only at EOF)."""
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def expect_errno(expected: int | set[int], fn: Callable[..., object], *args: object,
                 **kwargs: object) -> OSError:
    """``fn(*args)`` must raise OSError with errno ``expected`` (or one of a set)."""
    allowed = {expected} if isinstance(expected, int) else set(expected)
    with pytest.raises(OSError) as e:
        fn(*args, **kwargs)
    names = sorted(errno.errorcode[x] for x in allowed)
    assert e.value.errno in allowed, (
        f"{getattr(fn, '__name__', fn)}{args}: errno "
        f"{errno.errorcode.get(e.value.errno, e.value.errno)}, expected {names}"
    )
    return e.value


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        write(p, data)


def assert_tree(root: Path, files: dict[str, bytes]) -> None:
    """``root`` holds exactly ``files`` (relative path -> content), nothing else."""
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            found[str(p.relative_to(root))] = read(p)
    assert found == files


def too_big_xattr_errnos() -> set[int]:
    # ext4 without ea_inode runs out of room before the VFS limit is checked.
    return {errno.E2BIG, errno.ENOSPC} if LOCALDIR else {errno.E2BIG}


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


# ---------------------------------------------------------------- files


def test_create_read_overwrite(ws: Path) -> None:
    p = ws / "f.txt"
    write(p, b"hello world\n")
    assert read(p) == b"hello world\n"
    write(p, b"bye\n")  # O_TRUNC overwrite with shorter content
    assert read(p) == b"bye\n"
    assert p.stat().st_size == 4
    with open(p, "r+b") as f:  # overwrite in place, no truncation
        f.write(b"B")
    assert read(p) == b"Bye\n"


def test_random_pwrites(ws: Path) -> None:
    rng = random.Random(1234)
    p = ws / "random.bin"
    model = bytearray()
    with fd_open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC) as fd:
        for _ in range(300):
            off = rng.randrange(0, 300_000)
            data = rng.randbytes(rng.randrange(1, 9000))
            assert os.pwrite(fd, data, off) == len(data)
            if off > len(model):
                model += bytes(off - len(model))
            model[off:off + len(data)] = data
        assert os.fstat(fd).st_size == len(model)
        assert read_fd(fd, len(model) + 10) == bytes(model)
    assert read(p) == bytes(model)
    assert p.stat().st_size == len(model)


def test_append_from_two_fds(ws: Path) -> None:
    p = ws / "log.txt"
    write(p, b"start\n")
    flags = os.O_WRONLY | os.O_APPEND
    expected = b"start\n"
    with fd_open(p, flags) as a, fd_open(p, flags) as b:
        for i in range(100):
            line = f"{'ab'[i % 2]}{i:03d}\n".encode()
            os.write(a if i % 2 == 0 else b, line)
            expected += line
    assert read(p) == expected


@local_store_only
def test_o_excl_on_existing_file(ws: Path) -> None:
    p = ws / "excl"
    with fd_open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL) as fd:
        os.write(fd, b"first")
    expect_errno(errno.EEXIST, os.open, p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert read(p) == b"first"


def _truncate_by_path(p: Path, size: int) -> None:
    os.truncate(p, size)


def _truncate_by_fd(p: Path, size: int) -> None:
    with fd_open(p, os.O_WRONLY) as fd:
        os.ftruncate(fd, size)


@pytest.mark.parametrize("truncate", [_truncate_by_path, _truncate_by_fd], ids=["path", "fd"])
def test_truncate_shrink_and_grow(ws: Path, truncate: Callable[[Path, int], None]) -> None:
    p = ws / "t.bin"
    data = bytes(range(256)) * 40  # 10240 bytes, no zero runs
    write(p, data)
    truncate(p, 1000)
    assert p.stat().st_size == 1000
    assert read(p) == data[:1000]
    truncate(p, 5000)
    assert p.stat().st_size == 5000
    assert read(p) == data[:1000] + bytes(4000)
    truncate(p, 0)
    assert read(p) == b""
    truncate(p, 3)
    assert read(p) == b"\0\0\0"


def test_ftruncate_while_open_for_write(ws: Path) -> None:
    p = ws / "t2.bin"
    with fd_open(p, os.O_RDWR | os.O_CREAT) as fd:
        os.write(fd, b"x" * 100)
        os.ftruncate(fd, 10)
        os.pwrite(fd, b"yz", 20)  # past the new EOF: leaves a hole 10..20
        assert os.fstat(fd).st_size == 22
    assert read(p) == b"x" * 10 + bytes(10) + b"yz"


def test_sparse_write_past_eof(ws: Path) -> None:
    p = ws / "sparse.bin"
    hole = 3 * 1024 * 1024 + 17
    with fd_open(p, os.O_RDWR | os.O_CREAT) as fd:
        os.write(fd, b"head")
        os.pwrite(fd, b"tail", hole)
    assert p.stat().st_size == hole + 4
    data = read(p)
    assert data[:4] == b"head"
    assert data[4:hole] == bytes(hole - 4)
    assert data[hole:] == b"tail"


# ---------------------------------------------------------------- rename


def test_rename_file_over_existing_file(ws: Path) -> None:
    (ws / "d").mkdir()
    write(ws / "src", b"new content")
    write(ws / "d" / "dst", b"old content that is longer")
    os.rename(ws / "src", ws / "d" / "dst")
    assert read(ws / "d" / "dst") == b"new content"
    assert not (ws / "src").exists()
    assert sorted(os.listdir(ws)) == ["d"]
    assert os.listdir(ws / "d") == ["dst"]


def test_rename_over_open_target_keeps_old_bytes_for_its_fd(ws: Path) -> None:
    write(ws / "src", b"NEW")
    write(ws / "dst", b"OLD")
    with fd_open(ws / "dst", os.O_RDONLY) as fd:
        os.rename(ws / "src", ws / "dst")
        assert read_fd(fd, 100) == b"OLD"
    assert read(ws / "dst") == b"NEW"


def test_rename_directory_tree(ws: Path) -> None:
    files = {
        "a.txt": b"A",
        "sub/b.txt": b"B" * 5000,
        "sub/deeper/c.bin": bytes(range(256)),
        "sub/deeper/empty": b"",
        "other/d.txt": b"D",
    }
    make_tree(ws / "tree", files)
    (ws / "tree" / "emptydir").mkdir()
    (ws / "moved").mkdir()
    os.rename(ws / "tree", ws / "moved" / "tree2")
    expect_errno(errno.ENOENT, os.stat, ws / "tree")
    expect_errno(errno.ENOENT, os.stat, ws / "tree" / "sub" / "b.txt")
    assert_tree(ws / "moved" / "tree2", files)
    assert (ws / "moved" / "tree2" / "emptydir").is_dir()
    # the renamed tree stays writable in its new place
    write(ws / "moved" / "tree2" / "sub" / "new.txt", b"N")
    assert read(ws / "moved" / "tree2" / "sub" / "new.txt") == b"N"


def test_rename_dir_over_empty_dir(ws: Path) -> None:
    make_tree(ws / "src", {"f": b"payload"})
    (ws / "dst").mkdir()
    os.rename(ws / "src", ws / "dst")
    assert not (ws / "src").exists()
    assert read(ws / "dst" / "f") == b"payload"
    assert os.listdir(ws) == ["dst"]


def test_rename_dir_over_non_empty_dir(ws: Path) -> None:
    make_tree(ws / "src", {"f": b"s"})
    make_tree(ws / "dst", {"g": b"d"})
    expect_errno(errno.ENOTEMPTY, os.rename, ws / "src", ws / "dst")
    assert read(ws / "src" / "f") == b"s"
    assert os.listdir(ws / "dst") == ["g"]


def test_rename_file_over_dir(ws: Path) -> None:
    write(ws / "f", b"x")
    (ws / "d").mkdir()
    expect_errno(errno.EISDIR, os.rename, ws / "f", ws / "d")
    assert read(ws / "f") == b"x"
    assert (ws / "d").is_dir()


def test_rename_dir_over_file(ws: Path) -> None:
    write(ws / "f", b"x")
    (ws / "d").mkdir()
    expect_errno(errno.ENOTDIR, os.rename, ws / "d", ws / "f")
    assert read(ws / "f") == b"x"
    assert (ws / "d").is_dir()


@local_store_only
def test_rename_dir_into_itself(ws: Path) -> None:
    (ws / "d" / "sub").mkdir(parents=True)
    expect_errno(errno.EINVAL, os.rename, ws / "d", ws / "d" / "sub" / "x")
    assert (ws / "d" / "sub").is_dir()


# ---------------------------------------------------------------- namespace errors


@local_store_only
def test_mkdir_existing(ws: Path) -> None:
    (ws / "d").mkdir()
    write(ws / "f", b"")
    expect_errno(errno.EEXIST, os.mkdir, ws / "d")
    expect_errno(errno.EEXIST, os.mkdir, ws / "f")


@local_store_only
def test_rmdir_non_empty(ws: Path) -> None:
    make_tree(ws / "d", {"f": b"x"})
    expect_errno(errno.ENOTEMPTY, os.rmdir, ws / "d")
    assert read(ws / "d" / "f") == b"x"
    os.unlink(ws / "d" / "f")
    os.rmdir(ws / "d")
    assert os.listdir(ws) == []


@local_store_only
def test_rmdir_non_empty_only_subdir(ws: Path) -> None:
    (ws / "d" / "sub").mkdir(parents=True)
    expect_errno(errno.ENOTEMPTY, os.rmdir, ws / "d")


@local_store_only
def test_rmdir_on_file(ws: Path) -> None:
    write(ws / "f", b"x")
    expect_errno(errno.ENOTDIR, os.rmdir, ws / "f")
    assert read(ws / "f") == b"x"


@local_store_only
def test_unlink_dir(ws: Path) -> None:
    (ws / "d").mkdir()
    expect_errno(errno.EISDIR, os.unlink, ws / "d")
    assert (ws / "d").is_dir()


@local_store_only
def test_open_missing(ws: Path) -> None:
    expect_errno(errno.ENOENT, os.open, ws / "missing", os.O_RDONLY)
    expect_errno(errno.ENOENT, os.stat, ws / "missing")
    expect_errno(errno.ENOENT, os.open, ws / "nodir" / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.ENOENT, os.unlink, ws / "missing")


@local_store_only
def test_path_through_a_file(ws: Path) -> None:
    write(ws / "f", b"x")
    expect_errno(errno.ENOTDIR, os.stat, ws / "f" / "x")
    expect_errno(errno.ENOTDIR, os.open, ws / "f" / "x", os.O_WRONLY | os.O_CREAT, 0o644)


# ---------------------------------------------------------------- unlink while open


def test_unlinked_open_file_stays_usable(ws: Path) -> None:
    p = ws / "victim"
    with fd_open(p, os.O_RDWR | os.O_CREAT) as fd:
        os.write(fd, b"before unlink")
        os.unlink(p)
        assert "victim" not in os.listdir(ws)
        expect_errno(errno.ENOENT, os.stat, p)
        assert read_fd(fd, 100) == b"before unlink"
        assert os.pwrite(fd, b"AFTER", 7) == 5
        os.pwrite(fd, b"!", 20)
        assert os.fstat(fd).st_size == 21
        assert read_fd(fd, 100) == b"before AFTERk" + bytes(7) + b"!"
    assert os.listdir(ws) == []


def test_new_file_under_name_of_unlinked_open_file(ws: Path) -> None:
    p = ws / "name"
    write(p, b"old")
    with fd_open(p, os.O_RDWR) as fd:
        os.unlink(p)
        write(p, b"brand new")
        os.pwrite(fd, b"OLD!", 0)
        assert read_fd(fd, 100) == b"OLD!"
        assert read(p) == b"brand new"
    assert read(p) == b"brand new"


# ---------------------------------------------------------------- symlinks


@local_store_only
def test_symlink_readlink_lstat_stat(ws: Path) -> None:
    write(ws / "target.txt", b"0123456789")
    os.symlink("target.txt", ws / "link")
    assert os.readlink(ws / "link") == "target.txt"
    assert read(ws / "link") == b"0123456789"
    lst = os.lstat(ws / "link")
    st = os.stat(ws / "link")
    assert stat.S_ISLNK(lst.st_mode)
    assert lst.st_size == len("target.txt")
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 10
    assert st.st_ino == os.stat(ws / "target.txt").st_ino
    assert lst.st_ino != st.st_ino


@local_store_only
def test_symlink_dangling_and_to_dir(ws: Path) -> None:
    os.symlink("../nowhere/x", ws / "dangling")
    assert os.readlink(ws / "dangling") == "../nowhere/x"
    assert stat.S_ISLNK(os.lstat(ws / "dangling").st_mode)
    expect_errno(errno.ENOENT, os.stat, ws / "dangling")
    make_tree(ws / "dir", {"inside": b"i"})
    os.symlink("dir", ws / "dirlink")
    assert read(ws / "dirlink" / "inside") == b"i"
    assert os.listdir(ws / "dirlink") == ["inside"]
    os.unlink(ws / "dirlink")  # removes the link, not the directory
    assert read(ws / "dir" / "inside") == b"i"


@local_store_only
def test_symlink_long_target(ws: Path) -> None:
    target = "/".join(["d" * 200] * 20)  # 4019 bytes, < PATH_MAX
    os.symlink(target, ws / "long")
    assert os.readlink(ws / "long") == target
    assert os.lstat(ws / "long").st_size == len(target)


# ---------------------------------------------------------------- metadata


MTIME_NS = 1_600_000_000_123_456_789
ATIME_NS = 1_500_000_000_987_654_321


def _set_meta(p: Path) -> None:
    os.chmod(p, 0o640)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(ATIME_NS, MTIME_NS))


def _assert_meta(st: os.stat_result) -> None:
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_mtime_ns == MTIME_NS
    assert st.st_atime_ns == ATIME_NS


@local_store_only
def test_chmod_chown_utime_reflected_in_stat(ws: Path) -> None:
    require_root()
    p = ws / "meta"
    write(p, b"data")
    _set_meta(p)
    _assert_meta(os.stat(p))
    assert read(p) == b"data"


def test_chmod_chown_utime_persist_after_close_and_reopen(ws: Path) -> None:
    require_root()
    p = ws / "meta"
    with fd_open(p, os.O_WRONLY | os.O_CREAT) as fd:
        os.write(fd, b"data")
    _set_meta(p)
    with fd_open(p, os.O_RDONLY) as fd:
        _assert_meta(os.fstat(fd))
    _assert_meta(os.stat(p))
    # a metadata-only change must not touch content, nor content size
    assert p.stat().st_size == 4


@local_store_only
def test_chmod_modes(ws: Path) -> None:
    p = ws / "m"
    write(p, b"")
    for mode in (0o600, 0o755, 0o444, 0o4755, 0o2750, 0o1777, 0o000):
        os.chmod(p, mode)
        assert stat.S_IMODE(os.stat(p).st_mode) == mode
    (ws / "d").mkdir()
    os.chmod(ws / "d", 0o750)
    st = os.stat(ws / "d")
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o750


@local_store_only
def test_create_mode_respects_umask(ws: Path) -> None:
    old = os.umask(0o027)
    try:
        with fd_open(ws / "f", os.O_WRONLY | os.O_CREAT, 0o666):
            pass
        os.mkdir(ws / "d", 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(ws / "f").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(ws / "d").st_mode) == 0o750


def test_write_updates_mtime(ws: Path) -> None:
    p = ws / "f"
    write(p, b"x")
    os.utime(p, ns=(ATIME_NS, MTIME_NS))
    with open(p, "ab") as f:
        f.write(b"y")
    assert os.stat(p).st_mtime_ns > MTIME_NS


def test_statvfs_sane(ws: Path) -> None:
    sv = os.statvfs(ws)
    assert sv.f_bsize > 0
    assert sv.f_frsize > 0
    assert sv.f_namemax == 255
    assert sv.f_blocks > 0
    assert 0 < sv.f_bavail <= sv.f_blocks
    assert sv.f_bfree <= sv.f_blocks


def test_fsync_and_fdatasync(ws: Path) -> None:
    p = ws / "synced"
    with fd_open(p, os.O_RDWR | os.O_CREAT) as fd:
        os.write(fd, b"abc")
        assert os.fsync(fd) is None
        os.write(fd, b"def")
        assert os.fdatasync(fd) is None
        assert read_fd(fd, 10) == b"abcdef"
    with fd_open(ws, os.O_RDONLY) as dfd:  # fsync of a directory, as rename-safe code does
        assert os.fsync(dfd) is None
    assert read(p) == b"abcdef"


# ---------------------------------------------------------------- mmap


def test_mmap_read(ws: Path) -> None:
    p = ws / "m.bin"
    data = random.Random(7).randbytes(3 * mmap.PAGESIZE + 123)
    write(p, data)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert len(m) == len(data)
        assert m[:] == data
        assert m[mmap.PAGESIZE - 2:mmap.PAGESIZE + 2] == data[mmap.PAGESIZE - 2:mmap.PAGESIZE + 2]


def test_mmap_shared_write(ws: Path) -> None:
    p = ws / "m.bin"
    size = 4 * mmap.PAGESIZE
    write(p, b"a" * size)
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        m[10:15] = b"HELLO"
        m[size - 5:] = b"WORLD"
        m.flush()
        m.close()
    expected = b"a" * 10 + b"HELLO" + b"a" * (size - 20) + b"WORLD"
    assert read(p) == expected
    assert p.stat().st_size == size


# ---------------------------------------------------------------- directories and names


def test_directory_with_many_entries(ws: Path, store_url: str) -> None:
    # 10,000 entries; on moto 2,000 unless AGENTFS_BIG_S3=1 (each create is a
    # request to a slow in-memory server; 2,000 still spans two S3 list pages).
    count = 2_000 if store_url.startswith("s3://") and not os.environ.get("AGENTFS_BIG_S3") else 10_000
    d = ws / "big"
    d.mkdir()
    names = [f"entry-{i:05d}" for i in range(count)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for n in names:
        os.close(os.open(d / n, flags, 0o644))
    listed = os.listdir(d)
    assert len(listed) == count
    assert sorted(listed) == names
    with os.scandir(d) as it:
        assert sum(1 for e in it if e.is_file(follow_symlinks=False)) == count
    assert os.stat(d / names[-1]).st_size == 0


@local_store_only
def test_name_length_limit(ws: Path) -> None:
    ok = "a" * 255
    too_long = "b" * 256
    write(ws / ok, b"x")
    assert read(ws / ok) == b"x"
    assert ok in os.listdir(ws)
    expect_errno(errno.ENAMETOOLONG, os.open, ws / too_long, os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, ws / too_long)
    expect_errno(errno.ENAMETOOLONG, os.rename, ws / ok, ws / too_long)
    expect_errno(errno.ENAMETOOLONG, os.symlink, "t", ws / too_long)
    assert os.listdir(ws) == [ok]


@local_store_only
def test_name_length_limit_counts_bytes(ws: Path) -> None:
    ok = "文" * 85  # 255 bytes of UTF-8
    too_long = "é" * 128  # 128 characters, 256 bytes
    assert len(ok.encode()) == 255 and len(too_long.encode()) == 256
    (ws / ok).mkdir()
    assert os.listdir(ws) == [ok]
    expect_errno(errno.ENAMETOOLONG, os.mkdir, ws / too_long)


def test_unicode_names_round_trip(ws: Path) -> None:
    names = ["naïve-文件-🚀.txt", "Ωmega", "spaces and\ttab", "emoji-🧪-dir"]
    for n in names[:-1]:
        write(ws / n, n.encode())
    (ws / names[-1]).mkdir()
    assert sorted(os.listdir(ws)) == sorted(names)
    for n in names[:-1]:
        assert read(ws / n) == n.encode()
    assert sorted(os.listdir(os.fsencode(ws))) == sorted(n.encode() for n in names)


def test_unicode_names_are_not_normalized(ws: Path) -> None:
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    write(ws / nfc, b"composed")
    write(ws / nfd, b"decomposed")
    assert sorted(os.listdir(ws)) == sorted([nfc, nfd])
    assert read(ws / nfc) == b"composed"
    assert read(ws / nfd) == b"decomposed"


@local_store_only
def test_names_are_case_sensitive(ws: Path) -> None:
    write(ws / "File", b"upper")
    write(ws / "file", b"lower")
    assert sorted(os.listdir(ws)) == ["File", "file"]
    assert read(ws / "File") == b"upper"


@local_store_only
def test_scandir_types(ws: Path) -> None:
    write(ws / "file", b"x")
    (ws / "dir").mkdir()
    os.symlink("file", ws / "link-file")
    os.symlink("dir", ws / "link-dir")
    os.symlink("missing", ws / "link-dangling")
    with os.scandir(ws) as it:
        entries = {e.name: e for e in it}
    assert set(entries) == {"file", "dir", "link-file", "link-dir", "link-dangling"}
    kinds = {
        name: (e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False),
               e.is_symlink(), e.is_file(), e.is_dir())
        for name, e in entries.items()
    }
    assert kinds == {
        "file": (True, False, False, True, False),
        "dir": (False, True, False, False, True),
        "link-file": (False, False, True, True, False),
        "link-dir": (False, False, True, False, True),
        "link-dangling": (False, False, True, False, False),
    }
    for name, e in entries.items():  # readdir's d_ino agrees with stat's st_ino
        assert e.inode() == os.lstat(ws / name).st_ino, name


@local_store_only
def test_dot_and_dotdot(ws: Path) -> None:
    (ws / "a" / "b").mkdir(parents=True)
    assert os.path.samestat(os.stat(ws / "a" / "b" / ".."), os.stat(ws / "a"))
    assert os.path.samestat(os.stat(ws / "a" / "."), os.stat(ws / "a"))
    assert os.listdir(ws / "a" / "b" / "..") == ["b"]
    with os.scandir(ws / "a") as it:
        assert [e.name for e in it] == ["b"]


@local_store_only
def test_inode_numbers_distinct_and_stable(ws: Path) -> None:
    for i in range(20):
        write(ws / f"f{i}", b"")
    inos = [os.stat(ws / f"f{i}").st_ino for i in range(20)]
    assert len(set(inos)) == 20
    os.rename(ws / "f0", ws / "renamed")
    assert os.stat(ws / "renamed").st_ino == inos[0]
    assert [os.stat(ws / f"f{i}").st_ino for i in range(1, 20)] == inos[1:]


# ---------------------------------------------------------------- xattrs


def _xattr_file(ws: Path) -> Path:
    p = ws / "x"
    write(p, b"content")
    return p


def _user_xattrs(p: Path) -> set[str]:
    return {n for n in os.listxattr(p) if n.startswith("user.")}


@local_store_only
def test_xattr_set_get_list_remove(ws: Path) -> None:
    p = _xattr_file(ws)
    os.setxattr(p, "user.one", b"1")
    os.setxattr(p, "user.two", b"")
    assert os.getxattr(p, "user.one") == b"1"
    assert os.getxattr(p, "user.two") == b""
    assert _user_xattrs(p) == {"user.one", "user.two"}
    os.setxattr(p, "user.one", b"uno")
    assert os.getxattr(p, "user.one") == b"uno"
    os.removexattr(p, "user.one")
    assert _user_xattrs(p) == {"user.two"}
    expect_errno(errno.ENODATA, os.getxattr, p, "user.one")
    assert read(p) == b"content"


@local_store_only
def test_xattr_on_directory(ws: Path) -> None:
    (ws / "d").mkdir()
    os.setxattr(ws / "d", "user.tag", b"dir")
    assert os.getxattr(ws / "d", "user.tag") == b"dir"
    assert _user_xattrs(ws / "d") == {"user.tag"}


def test_xattr_persists_after_close(ws: Path) -> None:
    p = ws / "x"
    with fd_open(p, os.O_WRONLY | os.O_CREAT) as fd:
        os.write(fd, b"abc")
        os.setxattr(fd, "user.k", b"v")
    with fd_open(p, os.O_RDONLY) as fd:
        assert os.getxattr(fd, "user.k") == b"v"
    assert os.getxattr(p, "user.k") == b"v"


def test_xattr_64k_value(ws: Path) -> None:
    p = _xattr_file(ws)
    value = random.Random(3).randbytes(XATTR_SIZE_MAX)
    try:
        os.setxattr(p, "user.big", value)
    except OSError as e:
        if LOCALDIR and e.errno == errno.ENOSPC:
            pytest.skip("local ext4 without ea_inode cannot hold a 64 KiB xattr value")
        raise
    assert os.getxattr(p, "user.big") == value


@local_store_only
def test_xattr_binary_value_with_nul(ws: Path) -> None:
    p = _xattr_file(ws)
    value = b"\0a\0\xff\xfe\0" + bytes(range(256)) + b"\0"
    os.setxattr(p, "user.bin", value)
    assert os.getxattr(p, "user.bin") == value


@local_store_only
def test_xattr_create_on_existing(ws: Path) -> None:
    p = _xattr_file(ws)
    os.setxattr(p, "user.k", b"first", os.XATTR_CREATE)
    expect_errno(errno.EEXIST, os.setxattr, p, "user.k", b"second", os.XATTR_CREATE)
    assert os.getxattr(p, "user.k") == b"first"


@local_store_only
def test_xattr_replace_on_missing(ws: Path) -> None:
    p = _xattr_file(ws)
    expect_errno(errno.ENODATA, os.setxattr, p, "user.k", b"v", os.XATTR_REPLACE)
    assert "user.k" not in os.listxattr(p)
    os.setxattr(p, "user.k", b"v")
    os.setxattr(p, "user.k", b"w", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.k") == b"w"


@local_store_only
def test_xattr_get_missing(ws: Path) -> None:
    p = _xattr_file(ws)
    expect_errno(errno.ENODATA, os.getxattr, p, "user.nope")


@local_store_only
def test_xattr_remove_missing(ws: Path) -> None:
    p = _xattr_file(ws)
    expect_errno(errno.ENODATA, os.removexattr, p, "user.nope")


@local_store_only
def test_xattr_value_too_big(ws: Path) -> None:
    p = _xattr_file(ws)
    expect_errno(too_big_xattr_errnos(), os.setxattr, p, "user.huge", b"v" * (XATTR_SIZE_MAX + 1))
    assert "user.huge" not in os.listxattr(p)


# ---------------------------------------------------------------- hard links


@local_store_only
def test_hard_link_not_supported(ws: Path) -> None:
    if LOCALDIR:
        pytest.skip("local filesystems support hard links; agentfs does not")
    write(ws / "f", b"x")
    expect_errno({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK},
                 os.link, ws / "f", ws / "g")
    assert os.listdir(ws) == ["f"]
    assert read(ws / "f") == b"x"


# ---------------------------------------------------------------- visibility while open


def test_size_visible_while_open(ws: Path) -> None:
    p = ws / "growing"
    with fd_open(p, os.O_WRONLY | os.O_CREAT) as fd:
        os.write(fd, b"x" * 1000)
        assert os.fstat(fd).st_size == 1000
        assert os.stat(p).st_size == 1000
        os.write(fd, b"y" * 24)
        assert os.stat(p).st_size == 1024
        assert os.fstat(fd).st_size == 1024


def test_read_sees_writes_of_other_fd(ws: Path) -> None:
    p = ws / "shared"
    with fd_open(p, os.O_WRONLY | os.O_CREAT) as w, fd_open(p, os.O_RDONLY) as r:
        assert read_fd(r, 10) == b""
        os.write(w, b"hello")
        assert read_fd(r, 10) == b"hello"
        os.pwrite(w, b"J", 0)
        assert read_fd(r, 10) == b"Jello"
        os.write(w, b" world")
        assert os.read(r, 100) == b"Jello world"  # r's own offset was still 0
