"""An in-memory model of a file system, the real tree it is checked against, and a seeded random operation generator.

Used by the model-based tests: every operation runs on both and the outcomes must agree.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import signal
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NAMES", "XATTRS", "Gen", "Model", "Op", "Real", "Runner", "fail", "first_diff", "fmt", "grow", "outcome", "parent", "rand_size", "under"]


def fail(code: int) -> None:
    """Raise the OSError of ``code`` (a model operation's failure)."""
    raise OSError(code, os.strerror(code))


def parent(p: str) -> str:
    """The parent of a model path (``""`` is the root)."""
    return p.rpartition("/")[0]


def under(p: str, top: str) -> bool:
    """``p`` is ``top`` or inside it ("" is the root)."""
    return top == "" or p == top or p.startswith(top + "/")


class Model:
    """A directory tree as plain dicts keyed by relative path ("" is the root)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {""}
        self.links: dict[str, str] = {}
        self.xattrs: dict[str, dict[str, bytes]] = {}

    # helpers
    def kind(self, p: str) -> str | None:
        if p in self.files:
            return "file"
        if p in self.dirs:
            return "dir"
        return "link" if p in self.links else None

    def paths(self) -> list[str]:
        return sorted([*self.files, *self.dirs, *self.links])

    def children(self, d: str) -> list[str]:
        return sorted(q.rpartition("/")[2] for q in self.paths() if q and parent(q) == d)

    def _ancestors(self, p: str) -> None:
        """Every proper ancestor of ``p`` must be a directory."""
        parts = p.split("/")[:-1]
        for i in range(len(parts)):
            a = "/".join(parts[: i + 1])
            if a not in self.dirs:
                fail(errno.ENOENT if self.kind(a) is None else errno.ENOTDIR)

    def _lookup(self, p: str) -> str | None:
        self._ancestors(p)
        return self.kind(p)

    def _file(self, p: str) -> bytes:
        k = self._lookup(p)
        assert k != "link", f"generator bug: file op on symlink {p}"
        if k is None:
            fail(errno.ENOENT)
        if k == "dir":
            fail(errno.EISDIR)
        return self.files[p]

    def _inode(self, p: str) -> dict[str, bytes]:
        """The xattrs of an existing file or directory."""
        k = self._lookup(p)
        assert k != "link", f"generator bug: xattr op on symlink {p}"
        if k is None:
            fail(errno.ENOENT)
        return self.xattrs.setdefault(p, {})

    def _remove(self, p: str) -> None:
        self.files.pop(p, None)
        self.links.pop(p, None)
        self.dirs.discard(p)
        self.xattrs.pop(p, None)

    # operations: same names and arguments as Real's; failures raise OSError
    def create(self, p: str, data: bytes) -> None:
        if self._lookup(p) == "dir":
            fail(errno.EISDIR)
        self.files[p] = data  # O_TRUNC on an existing file keeps its xattrs

    def write(self, p: str, off: int, data: bytes) -> None:
        c = self._file(p).ljust(off, b"\0")
        self.files[p] = c[:off] + data + c[off + len(data):]

    def append(self, p: str, data: bytes) -> None:
        self.files[p] = self._file(p) + data

    def mmap_write(self, p: str, off: int, data: bytes) -> None:
        c = self._file(p)
        assert off + len(data) <= len(c), "generator bug: mmap past EOF"
        self.files[p] = c[:off] + data + c[off + len(data):]

    def truncate(self, p: str, size: int) -> None:
        self.files[p] = self._file(p)[:size].ljust(size, b"\0")

    def read(self, p: str) -> bytes:
        return self._file(p)

    def stat(self, p: str) -> tuple[str, int | None]:
        k = self._lookup(p)
        if k is None:
            fail(errno.ENOENT)
        if k == "dir":
            return k, None
        return k, len(self.files[p]) if k == "file" else len(self.links[p].encode())

    def mkdir(self, p: str) -> None:
        if self._lookup(p) is not None:
            fail(errno.EEXIST)
        self.dirs.add(p)

    def rmdir(self, p: str) -> None:
        k = self._lookup(p)
        if k is None:
            fail(errno.ENOENT)
        if k != "dir":
            fail(errno.ENOTDIR)
        if self.children(p):
            fail(errno.ENOTEMPTY)
        self._remove(p)

    def unlink(self, p: str) -> None:
        k = self._lookup(p)
        if k is None:
            fail(errno.ENOENT)
        if k == "dir":
            fail(errno.EISDIR)
        self._remove(p)

    def unlink_open(self, p: str, newdata: bytes | None) -> tuple[bytes, int]:
        data = self._file(p)
        self._remove(p)
        if newdata is not None:
            self.files[p] = newdata
        return data, len(data)

    def rename(self, src: str, dst: str) -> None:
        self._ancestors(src)
        self._ancestors(dst)
        ks, kd = self.kind(src), self.kind(dst)
        if ks is None:
            fail(errno.ENOENT)
        if src == dst:
            return
        if under(dst, src):
            fail(errno.EINVAL)  # a directory into itself
        if under(src, dst):
            fail(errno.ENOTEMPTY)  # over one of its own ancestors
        if ks == "dir" and kd not in (None, "dir"):
            fail(errno.ENOTDIR)
        if ks != "dir" and kd == "dir":
            fail(errno.EISDIR)
        if kd == "dir" and self.children(dst):
            fail(errno.ENOTEMPTY)
        if kd is not None:
            self._remove(dst)
        for table in (self.files, self.links, self.xattrs):
            for q in [q for q in table if under(q, src)]:
                table[dst + q[len(src):]] = table.pop(q)
        for q in [q for q in self.dirs if under(q, src)]:
            self.dirs.remove(q)
            self.dirs.add(dst + q[len(src):])

    def symlink(self, target: str, p: str) -> None:
        if self._lookup(p) is not None:
            fail(errno.EEXIST)
        self.links[p] = target

    def readlink(self, p: str) -> str:
        k = self._lookup(p)
        if k is None:
            fail(errno.ENOENT)
        if k != "link":
            fail(errno.EINVAL)
        return self.links[p]

    def listdir(self, d: str) -> list[str]:
        k = self._lookup(d)
        if k is None:
            fail(errno.ENOENT)
        if k != "dir":
            fail(errno.ENOTDIR)
        return self.children(d)

    def setxattr(self, p: str, name: str, value: bytes, flags: int) -> None:
        xs = self._inode(p)
        if flags == os.XATTR_CREATE and name in xs:
            fail(errno.EEXIST)
        if flags == os.XATTR_REPLACE and name not in xs:
            fail(errno.ENODATA)
        xs[name] = value

    def getxattr(self, p: str, name: str) -> bytes:
        xs = self._inode(p)
        if name not in xs:
            fail(errno.ENODATA)
        return xs[name]

    def removexattr(self, p: str, name: str) -> None:
        xs = self._inode(p)
        if name not in xs:
            fail(errno.ENODATA)
        del xs[name]

    def listxattr(self, p: str) -> list[str]:
        return sorted(self._inode(p))

    def snapshot(self) -> dict[str, Any]:
        return {
            "dirs": set(self.dirs),
            "files": dict(self.files),
            "links": dict(self.links),
            "xattrs": {p: dict(x) for p, x in self.xattrs.items() if x},
        }


def _write_all(fd: int, data: bytes, off: int | None = None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if off is None else os.pwrite(fd, view, off)
        view = view[n:]
        off = None if off is None else off + n


def _read_fd(fd: int) -> bytes:
    chunks, off = [], 0
    while chunk := os.pread(fd, 1 << 20, off):
        chunks.append(chunk)
        off += len(chunk)
    return b"".join(chunks)


class Real:
    """The same operations as Model, on a real directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _p(self, p: str) -> str:
        return str(self.root / p) if p else str(self.root)

    def _with_fd(self, p: str, flags: int, fn, mode: int = 0o644):
        fd = os.open(self._p(p), flags, mode)
        try:
            return fn(fd)
        finally:
            os.close(fd)

    def create(self, p: str, data: bytes) -> None:
        self._with_fd(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, lambda fd: _write_all(fd, data))

    def write(self, p: str, off: int, data: bytes) -> None:
        self._with_fd(p, os.O_WRONLY, lambda fd: _write_all(fd, data, off))

    def append(self, p: str, data: bytes) -> None:
        self._with_fd(p, os.O_WRONLY | os.O_APPEND, lambda fd: _write_all(fd, data))

    def mmap_write(self, p: str, off: int, data: bytes) -> str | None:
        """Done in a forked child: a SIGBUS on a bad page must fail this op, not kill pytest."""
        if (pid := os.fork()) == 0:
            code = 0
            try:
                fd = os.open(self._p(p), os.O_RDWR)
                with mmap.mmap(fd, os.fstat(fd).st_size) as mm:
                    mm[off:off + len(data)] = data
                    mm.flush()
                os.close(fd)
            except OSError as e:
                code = e.errno or 255
            except BaseException:
                code = 255
            os._exit(code)
        status = os.waitpid(pid, 0)[1]
        if os.WIFSIGNALED(status):
            return f"child killed by {signal.Signals(os.WTERMSIG(status)).name}"
        if code := os.WEXITSTATUS(status):
            raise OSError(code, os.strerror(code))
        return None

    def truncate(self, p: str, size: int) -> None:
        os.truncate(self._p(p), size)

    def read(self, p: str) -> bytes:
        return self._with_fd(p, os.O_RDONLY, _read_fd)

    def stat(self, p: str) -> tuple[str, int | None]:
        st_ = os.lstat(self._p(p))
        if stat.S_ISDIR(st_.st_mode):
            return "dir", None
        return ("link" if stat.S_ISLNK(st_.st_mode) else "file"), st_.st_size

    def mkdir(self, p: str) -> None:
        os.mkdir(self._p(p))

    def rmdir(self, p: str) -> None:
        os.rmdir(self._p(p))

    def unlink(self, p: str) -> None:
        os.unlink(self._p(p))

    def unlink_open(self, p: str, newdata: bytes | None) -> tuple[bytes, int]:
        def go(fd: int) -> tuple[bytes, int]:
            os.unlink(self._p(p))
            if newdata is not None:
                self.create(p, newdata)
            return _read_fd(fd), os.fstat(fd).st_size
        return self._with_fd(p, os.O_RDONLY, go)

    def rename(self, src: str, dst: str) -> None:
        os.rename(self._p(src), self._p(dst))

    def symlink(self, target: str, p: str) -> None:
        os.symlink(target, self._p(p))

    def readlink(self, p: str) -> str:
        return os.readlink(self._p(p))

    def listdir(self, d: str) -> list[str]:
        return sorted(os.listdir(self._p(d)))

    def setxattr(self, p: str, name: str, value: bytes, flags: int) -> None:
        os.setxattr(self._p(p), name, value, flags)

    def getxattr(self, p: str, name: str) -> bytes:
        return os.getxattr(self._p(p), name)

    def removexattr(self, p: str, name: str) -> None:
        os.removexattr(self._p(p), name)

    def listxattr(self, p: str) -> list[str]:
        return sorted(n for n in os.listxattr(self._p(p)) if n.startswith("user."))

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"dirs": {""}, "files": {}, "links": {}, "xattrs": {}, "sizes": {}}

        def visit(rel: str) -> None:
            if xs := {n: self.getxattr(rel, n) for n in self.listxattr(rel)}:
                snap["xattrs"][rel] = xs
            for name in sorted(os.listdir(self._p(rel))):
                p = f"{rel}/{name}" if rel else name
                st_ = os.lstat(self._p(p))
                if stat.S_ISLNK(st_.st_mode):
                    snap["links"][p] = self.readlink(p)
                elif stat.S_ISDIR(st_.st_mode):
                    snap["dirs"].add(p)
                    visit(p)
                else:
                    snap["files"][p] = self.read(p)
                    snap["sizes"][p] = st_.st_size
                    if xs := {n: self.getxattr(p, n) for n in self.listxattr(p)}:
                        snap["xattrs"][p] = xs

        visit("")
        return snap


def fmt(v: Any) -> str:
    """A short form of an outcome for failure messages."""
    if isinstance(v, bytes | bytearray):
        return f"bytes[{len(v)}]#{zlib.crc32(v):08x}"
    if isinstance(v, tuple | list):
        return "(" + ", ".join(fmt(x) for x in v) + ")"
    return repr(v)


@dataclass(frozen=True)
class Op:
    """One generated operation: its name and arguments."""
    name: str
    args: tuple

    def __str__(self) -> str:
        return f"{self.name}({', '.join(fmt(a) for a in self.args)})"


def outcome(fn, *args) -> tuple[str, Any]:
    """``("ok", result)`` or ``("err", errno name)`` of calling ``fn``."""
    try:
        return "ok", fn(*args)
    except OSError as e:
        return "err", errno.errorcode.get(e.errno, e.errno)


def first_diff(a: bytes, b: bytes) -> str:
    """Where two byte strings first differ, for failure messages."""
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"len {len(a)} vs {len(b)}, first difference at offset {i}"


class Runner:
    """Applies operations to a real directory and to the model and checks they agree."""

    def __init__(self, root: Path, label: str, replay: str = "") -> None:
        self.real, self.model = Real(root), Model()
        self.label, self.replay = label, replay
        self.history: list[Op] = []

    def context(self, headline: str, detail: str) -> str:
        start = max(0, len(self.history) - 10)
        recent = "\n".join(f"  #{i}: {op}" for i, op in enumerate(self.history) if i >= start)
        return f"{self.label}: {headline}\n{detail}\nlast operations:\n{recent}\n{self.replay}"

    def step(self, op: Op) -> Any:
        i = len(self.history)
        self.history.append(op)
        try:
            got = outcome(getattr(self.real, op.name), *op.args)
        except Exception as e:
            raise AssertionError(self.context(f"op #{i} {op}", f"raised {e!r}")) from e
        want = outcome(getattr(self.model, op.name), *op.args)
        if got != want:
            detail = f"filesystem: {got[0]} {fmt(got[1])}\nmodel:      {want[0]} {fmt(want[1])}"
            if isinstance(got[1], bytes) and isinstance(want[1], bytes):
                detail += f"\n{first_diff(got[1], want[1])}"
            raise AssertionError(self.context(f"op #{i} {op}", detail))
        return got[1]

    def snapshot_real(self, root: Path | None) -> dict:
        """The filesystem's tree (subclasses may read more of it)."""
        return (Real(root) if root else self.real).snapshot()

    def normalise(self, snap: dict) -> None:
        """Drop what the model does not predict (both sides; nothing here)."""

    def compare_tree(self, root: Path | None = None, what: str = "final tree") -> None:
        real = self.snapshot_real(root)
        model = self.model.snapshot()
        for snap in (real, model):
            self.normalise(snap)
        problems = []
        for key in ("dirs", "files", "links", "xattrs"):
            r, m = real[key], model[key]
            problems += [f"{key}: missing {p!r}" for p in sorted(set(m) - set(r))]
            problems += [f"{key}: unexpected {p!r}" for p in sorted(set(r) - set(m))]
            if key == "dirs":
                continue
            for p in sorted(set(r) & set(m)):
                if r[p] != m[p]:
                    diff = first_diff(r[p], m[p]) if key == "files" else f"{fmt(r[p])} != {fmt(m[p])}"
                    problems.append(f"{key}: {p!r} differs: {diff}")
        problems += [f"files: {p!r} st_size {n} != {len(model['files'][p])}"
                     for p, n in real["sizes"].items()
                     if p in model["files"] and n != len(model["files"][p])]
        if problems:
            raise AssertionError(self.context(
                f"{what} differs after {len(self.history)} ops", "\n".join(problems[:30])))


NAMES = ["a", "b", "c", "data.bin", "notes.txt", "x", "y", "z"]


XATTRS = ["user.a", "user.b", "user.checksum", "user.mime"]


def rand_size(rng: random.Random) -> int:
    """A random file size, mostly small, sometimes past block boundaries."""
    r = rng.random()
    if r < 0.05:
        return 0
    if r < 0.55:
        return rng.randint(1, 64)
    if r < 0.85:
        return rng.randint(65, 4096)
    return rng.randint(4097, 70_000)


def grow(rng: random.Random) -> int:
    """How far past EOF a write or truncate goes."""
    return rng.randint(1, 8192) if rng.random() < 0.9 else rng.randint(8193, 1 << 20)


class Gen:
    """Random operations that mostly succeed, with deliberate errors mixed in."""

    def __init__(self, rng: random.Random, model: Model) -> None:
        self.rng, self.m = rng, model

    def pick(self, items) -> Any:
        items = sorted(items)  # set order varies between runs; sorting keeps seeds replayable
        return self.rng.choice(items) if items else None

    def fresh(self, d: str | None = None) -> str:
        """A path that does not exist yet, in ``d`` or a random shallow directory."""
        if d is None:
            d = self.pick(q for q in self.m.dirs if q.count("/") < 3)
        name = self.rng.choice(NAMES)
        while self.m.kind(p := f"{d}/{name}" if d else name) is not None:
            name = f"{self.rng.choice(NAMES)}{self.rng.randint(1, 99)}"
        return p

    def data(self) -> bytes:
        return self.rng.randbytes(rand_size(self.rng))

    def file(self) -> str | None:
        return self.pick(self.m.files)

    def subdir(self) -> str | None:
        return self.pick(self.m.dirs - {""})

    # one method per kind of operation; None means "not applicable now"
    def g_create(self):
        r = self.rng.random()
        if r < 0.05 and self.subdir():
            return Op("create", (self.subdir(), self.data()))  # EISDIR
        p = self.file() if r < 0.25 and self.m.files else self.fresh()
        return Op("create", (p, self.data()))

    def g_write(self):
        if (p := self.file()) is None:
            return None
        size = len(self.m.files[p])
        off = self.rng.randint(0, size) if self.rng.random() < 0.6 else size + grow(self.rng)
        return Op("write", (p, off, self.data() or b"\x01"))

    def g_append(self):
        return (p := self.file()) and Op("append", (p, self.data()))

    def g_truncate(self):
        if self.rng.random() < 0.05:
            return Op("truncate", (self.fresh(), 10))  # ENOENT
        if (p := self.file()) is None:
            return None
        size = len(self.m.files[p])
        shrink = self.rng.random() < 0.5 or size > 2 << 20
        return Op("truncate", (p, self.rng.randint(0, size) if shrink else size + grow(self.rng)))

    def g_read(self):
        r = self.rng.random()
        if r < 0.05:
            return Op("read", (self.fresh(),))  # ENOENT
        if r < 0.1 and self.subdir():
            return Op("read", (self.subdir(),))  # EISDIR
        return (p := self.file()) and Op("read", (p,))

    def g_stat(self):
        return Op("stat", (self.pick(set(self.m.paths()) - {""}) or "",))

    def g_mmap_write(self):
        if (p := self.pick(q for q, c in self.m.files.items() if c)) is None:
            return None
        size = len(self.m.files[p])
        off = self.rng.randint(0, size - 1)
        return Op("mmap_write", (p, off, self.rng.randbytes(self.rng.randint(1, min(64, size - off)))))

    def g_rename_file(self):
        if self.rng.random() < 0.05:
            return Op("rename", (self.fresh(), self.fresh()))  # ENOENT
        if (src := self.pick([*self.m.files, *self.m.links])) is None:
            return None
        over = [q for q in [*self.m.files, *self.m.links] if q != src]
        dst = self.pick(over) if over and self.rng.random() < 0.3 else self.fresh()
        return Op("rename", (src, dst))

    def g_rename_dir(self):
        if (src := self.subdir()) is None:
            return None
        into = self.pick(d for d in self.m.dirs if not under(d, src) and d.count("/") < 3)
        return Op("rename", (src, self.fresh(into)))

    def g_mkdir(self):
        if self.rng.random() < 0.1 and (p := self.pick(set(self.m.paths()) - {""})):
            return Op("mkdir", (p,))  # EEXIST
        return Op("mkdir", (self.fresh(),))

    def g_rmdir(self):
        if self.rng.random() < 0.1 and (p := self.file()):
            return Op("rmdir", (p,))  # ENOTDIR
        empty = [d for d in self.m.dirs - {""} if not self.m.children(d)]
        p = self.pick(empty) if empty and self.rng.random() < 0.6 else self.subdir()
        return p and Op("rmdir", (p,))  # ENOTEMPTY when not empty

    def g_unlink(self):
        r = self.rng.random()
        if r < 0.05:
            return Op("unlink", (self.fresh(),))  # ENOENT
        if r < 0.1 and self.subdir():
            return Op("unlink", (self.subdir(),))  # EISDIR
        return (p := self.pick([*self.m.files, *self.m.links])) and Op("unlink", (p,))

    def g_unlink_open(self):
        newdata = self.data() if self.rng.random() < 0.5 else None
        return (p := self.file()) and Op("unlink_open", (p, newdata))

    def inode(self) -> str:
        return self.pick([*self.m.files, *self.m.dirs])

    def g_setxattr(self):
        flags = self.rng.choice([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE])
        value = self.rng.randbytes(self.rng.randint(0, 32))
        return Op("setxattr", (self.inode(), self.rng.choice(XATTRS), value, flags))

    def xattr(self) -> tuple[str, str]:
        """Mostly an existing (path, name); otherwise likely ENODATA."""
        have = [(p, n) for p, xs in self.m.xattrs.items() for n in xs]
        if have and self.rng.random() < 0.7:
            return self.pick(have)
        return self.inode(), self.rng.choice(XATTRS)

    def g_getxattr(self):
        return Op("getxattr", self.xattr())

    def g_removexattr(self):
        return Op("removexattr", self.xattr())

    def g_listxattr(self):
        return Op("listxattr", (self.inode(),))

    def g_symlink(self):
        if self.rng.random() < 0.1 and (p := self.pick(set(self.m.paths()) - {""})):
            return Op("symlink", ("anywhere", p))  # EEXIST
        target = self.rng.choice([self.pick(self.m.paths()) or ".", "../" + self.rng.choice(NAMES),
                                  f"no/such/{self.rng.randint(0, 999)}"])
        return Op("symlink", (target, self.fresh()))

    def g_readlink(self):
        if self.rng.random() < 0.1 and (p := self.file()):
            return Op("readlink", (p,))  # EINVAL
        return (p := self.pick(self.m.links)) and Op("readlink", (p,))

    def g_listdir(self):
        return Op("listdir", (self.pick(self.m.dirs),))

    WEIGHTS = {
        "create": 10, "write": 12, "append": 5, "truncate": 6, "read": 10, "stat": 5,
        "mmap_write": 2, "rename_file": 6, "rename_dir": 3, "mkdir": 5, "rmdir": 3,
        "unlink": 4, "unlink_open": 2, "setxattr": 4, "getxattr": 3, "removexattr": 2,
        "listxattr": 1, "symlink": 3, "readlink": 2, "listdir": 4,
    }

    def next(self) -> Op:
        kinds, weights = list(self.WEIGHTS), list(self.WEIGHTS.values())
        while True:
            op = getattr(self, "g_" + self.rng.choices(kinds, weights)[0])()
            if op:
                return op
