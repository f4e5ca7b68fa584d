"""Racing writers on two mounts of one store: nothing acknowledged is lost.

The rules (docs/SEMANTICS.md §3, "The write rules"): every close/fsync that
returned success left its bytes at the path, or they were replaced later by a
writer that had seen them; a writer that lost gets ``ESTALE`` and its bytes
are in a conflict copy; an ``O_TRUNC`` is never published as an empty version
on its own; after the writers stop, both mounts serve the committed bytes.

Each test runs over a local store and moto S3, several seeded rounds each
(``AGENTFS_RACE_ROUNDS`` raises the count for a soak).  Where a version went is
read from the store itself (objects and journal records), not from the mount.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentfs.journal import Journal
from agentfs.models import PutOp, Record
from agentfs.store import open_store
from tests.helpers.mount import Mount
from tests.helpers.mounts import VISIBLE_WITHIN, Pair, read_or_none, wait_for, write_all

ROUNDS = int(os.environ.get("AGENTFS_RACE_ROUNDS", "4"))


@pytest.fixture
def pair(mounter: Callable[..., Mount], store_url: str) -> Pair:
    a = mounter(store_url, "--agent", "agent-a")
    b = mounter(store_url, "--agent", "agent-b")
    (a.path / "ws").mkdir()
    wait_for(lambda: (b.path / "ws").is_dir(), 5.0, "workspace ws on mount B")
    return Pair(a, b, a.path / "ws", b.path / "ws")


def records(store_url: str, ws: str = "ws") -> list[Record]:
    with open_store(store_url) as store:
        return [r for c in Journal(store, ws).commits_after(0) for r in c.records]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fate(store_url: str, name: str, data: bytes, recs: list[Record]) -> str:
    """Where the bytes ``data`` written to ``name`` are: ``path`` (the current
    object), ``copy`` (a conflict copy of ``name``), ``replaced`` (a later
    write of ``name`` was based on this very version), or ``lost``."""
    h = sha(data)
    with open_store(store_url) as store:
        if store.get(f"ws/{name}") == data:
            return "path"
        for r in recs:
            if (isinstance(r.op, PutOp) and r.action == "conflict" and r.detail.get("of") == name
                    and r.detail.get("sha256") == h and store.get(f"ws/{r.op.path}") == data):
                return "copy"
    mine = [r for r in recs if isinstance(r.op, PutOp) and r.op.path == name and r.op.entry.sha256 == h
            and r.action in ("create", "write")]
    etags = {r.op.entry.etag for r in mine}
    later = [r for r in recs if isinstance(r.op, PutOp) and r.op.path == name and r.action in ("create", "write")
             and r.detail.get("base") in etags]
    return "replaced" if mine and later else "lost"


def conflict_copies(ws: Path, name: str) -> dict[str, bytes | None]:
    stem = name.rpartition(".")[0]
    return {n: read_or_none(ws / n) for n in sorted(os.listdir(ws)) if n.startswith(stem + ".conflict-")}


def assert_mounts_agree(pair: Pair, store_url: str, name: str) -> None:
    """Within 2 s both mounts list the same conflict copies and serve the
    store's bytes at ``name`` (no mount keeps a losing local version)."""
    with open_store(store_url) as store:
        want = store.get(f"ws/{name}")

    def agree() -> bool:
        return (read_or_none(pair.wa / name) == want and read_or_none(pair.wb / name) == want
                and conflict_copies(pair.wa, name) == conflict_copies(pair.wb, name))
    wait_for(agree, VISIBLE_WITHIN, f"both mounts serve the committed {name} ({want!r})")


def sh_overwrite(path: Path, text: str) -> subprocess.Popen:
    return subprocess.Popen(["sh", "-c", f"printf '%s\\n' '{text}' > '{path}'"])


# ---------------------------------------------------------------- shell overwrites


def test_shell_overwrites_racing_keep_every_version(pair: Pair, store_url: str) -> None:
    """``printf > x`` on B, then on A after 0-400 ms: each version is at the
    path, in a conflict copy, or was replaced by a writer that had read it;
    no conflict copy is empty; the mounts agree."""
    rng = random.Random(12)
    for r in range(ROUNDS):
        name = f"x{r}.txt"
        (pair.wa / name).write_bytes(b"base\n")
        wait_for(lambda name=name: read_or_none(pair.wb / name) == b"base\n", what="base on B")
        gap = rng.uniform(0, 0.4)
        pb = sh_overwrite(pair.wb / name, f"from B {r}")
        time.sleep(gap)
        pa = sh_overwrite(pair.wa / name, f"from A {r}")
        assert pb.wait(30) == 0 and pa.wait(30) == 0
        assert_mounts_agree(pair, store_url, name)
        recs = records(store_url)
        for who in "AB":
            data = f"from {who} {r}\n".encode()
            where = fate(store_url, name, data, recs)
            assert where != "lost", f"round {r} (gap {gap:.3f}s): {who}'s closed write is nowhere"
        for cname, data in conflict_copies(pair.wa, name).items():
            assert data, f"round {r}: empty conflict copy {cname}"
            assert data in (f"from A {r}\n".encode(), f"from B {r}\n".encode()), (cname, data)


def test_o_trunc_is_not_published_empty(pair: Pair, store_url: str) -> None:
    """An ``O_TRUNC`` open whose duplicate descriptor is closed before the
    write (what a shell ``>`` does) publishes nothing: the other mount and the
    store keep the old bytes until the write's close, which is one upload."""
    p = pair.wa / "t.txt"
    p.write_bytes(b"old bytes\n")
    wait_for(lambda: read_or_none(pair.wb / "t.txt") == b"old bytes\n", what="t.txt on B")
    before = len(records(store_url))
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(os.dup(fd))  # FUSE flush of an empty, truncated file
    time.sleep(1.2)  # a group commit and B's tail would have shown an empty upload by now
    with open_store(store_url) as store:
        assert store.get("ws/t.txt") == b"old bytes\n"
    assert read_or_none(pair.wb / "t.txt") == b"old bytes\n"
    write_all(fd, b"new bytes\n")
    os.close(fd)
    wait_for(lambda: read_or_none(pair.wb / "t.txt") == b"new bytes\n", what="new bytes on B")
    puts = [r for r in records(store_url)[before:] if isinstance(r.op, PutOp) and r.op.path == "t.txt"]
    assert [r.action for r in puts] == ["write"], f"expected one upload, journal has {puts}"
    # a truncation alone (no write) is still published, by the last close
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    wait_for(lambda: read_or_none(pair.wb / "t.txt") == b"", what="the truncation on B")


def test_truncate_right_after_the_close_of_a_new_file(mount: Mount) -> None:
    """The last close of a new file uploads in the background; a truncate by
    path that arrives meanwhile holds the open file again (never EBADF on a
    working copy the release closed) and its size is what stays."""
    ws = mount.path / "ws"
    ws.mkdir()
    for i in range(40):
        p = ws / f"n{i}"
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        os.truncate(p, 100 + i)
        assert p.stat().st_size == 100 + i
    mount.unmount()
    with open_store(mount.store_url) as store:
        for i in range(40):
            assert store.get(f"ws/n{i}") == bytes(100 + i), f"n{i}"


# ---------------------------------------------------------------- the loser is told


def _racing_writers(pair: Pair, name: str, da: bytes, db: bytes, *, fsync: bool) -> dict[str, int]:
    """Python writers on both mounts (open 'w', write, [fsync], close) released
    together; returns each writer's errno (0: every call succeeded)."""
    go = threading.Barrier(2)
    result: dict[str, int] = {}

    def writer(who: str, p: Path, data: bytes) -> None:
        err = 0
        try:
            f = open(p, "wb")
            go.wait(20)
            f.write(data)
            f.flush()
            if fsync:
                try:
                    os.fsync(f.fileno())
                except OSError as e:
                    err = e.errno or -1
            try:
                f.close()
            except OSError as e:
                err = err or e.errno or -1
        except threading.BrokenBarrierError:
            err = -2
        result[who] = err

    ts = [threading.Thread(target=writer, args=("A", pair.wa / name, da)),
          threading.Thread(target=writer, args=("B", pair.wb / name, db))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return result


@pytest.mark.parametrize("fsync", [False, True], ids=["close", "fsync"])
def test_loser_is_told_and_its_bytes_are_the_conflict_copy(pair: Pair, store_url: str, fsync: bool) -> None:
    """A writer whose close (or fsync) succeeded has its bytes at the path (or
    knowingly replaced); a writer told ``ESTALE`` has them in a conflict copy."""
    rng = random.Random(7 + fsync)
    for r in range(ROUNDS):
        name = f"p{r}.txt"
        (pair.wa / name).write_bytes(b"base")
        wait_for(lambda name=name: read_or_none(pair.wb / name) == b"base", what="base on B")
        da, db = b"A" * rng.randrange(1, 5000), b"B" * rng.randrange(1, 5000)
        errs = _racing_writers(pair, name, da, db, fsync=fsync)
        assert set(errs.values()) <= {0, errno.ESTALE}, errs
        assert_mounts_agree(pair, store_url, name)
        recs = records(store_url)
        for who, data in (("A", da), ("B", db)):
            where = fate(store_url, name, data, recs)
            if errs[who]:
                assert where == "copy", f"round {r}: {who} was told ESTALE but its bytes are {where}"
            else:
                assert where in ("path", "replaced"), f"round {r}: {who}'s acknowledged write is {where}"


def test_disjoint_regions_one_wins_the_other_is_told(pair: Pair, store_url: str) -> None:
    """Two mounts write disjoint halves of one 2 MiB file and fsync: one half
    is at the path, the other writer gets ESTALE and its whole file is the
    conflict copy; both mounts then serve the same bytes."""
    half = 1 << 20
    base = b"." * (2 * half)
    (pair.wa / "big.bin").write_bytes(base)
    wait_for(lambda: read_or_none(pair.wb / "big.bin") == base, 5.0, "big.bin on B")
    go = threading.Barrier(2)
    errs: dict[str, int] = {}

    def writer(who: str, p: Path, off: int) -> None:
        fd = os.open(p, os.O_WRONLY)
        try:
            os.pwrite(fd, who.encode() * half, off)
            go.wait(20)
            os.fsync(fd)
            errs[who] = 0
        except OSError as e:
            errs[who] = e.errno or -1
        finally:
            try:
                os.close(fd)
            except OSError as e:
                errs[who] = errs.get(who) or e.errno or -1

    ts = [threading.Thread(target=writer, args=("A", pair.wa / "big.bin", 0)),
          threading.Thread(target=writer, args=("B", pair.wb / "big.bin", half))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert sorted(errs.values()) == [0, errno.ESTALE], errs
    winner = "A" if errs["A"] == 0 else "B"
    a_file, b_file = b"A" * half + b"." * half, b"." * half + b"B" * half
    won, lost = (a_file, b_file) if winner == "A" else (b_file, a_file)
    assert_mounts_agree(pair, store_url, "big.bin")
    assert read_or_none(pair.wa / "big.bin") == won
    copies = conflict_copies(pair.wa, "big.bin")
    assert list(copies.values()) == [lost], f"conflict copies: {list(copies)}"


# ---------------------------------------------------------------- agentfs check finds lost writes


def _put(path: str, etag: str, digest: str, action: str = "write", **detail: str | None) -> Record:
    from agentfs.models import Entry
    return Record(action=action, op=PutOp(path=path, entry=Entry(kind="f", mode=0o644, etag=etag, sha256=digest,
                                                                 size=1)), agent="t", detail=detail)


def test_lost_writes_rule() -> None:
    """A version replaced by a writer whose base is another version is lost,
    unless the same bytes replaced it or a conflict copy kept them."""
    from agentfs.check import lost_writes
    from agentfs.models import Commit

    def commits(*recs: Record) -> list[Commit]:
        return [Commit(seq=i + 1, records=[r]) for i, r in enumerate(recs)]

    ok_chain = commits(_put("f", "e1", "s1", "create", base=None), _put("f", "e2", "s2", base="e1"))
    assert lost_writes(ok_chain) == []
    lost = commits(_put("f", "e1", "s1", "create", base=None), _put("f", "e2", "s2", base="e1"),
                   _put("f", "e3", "s3", base="e1"))
    assert len(lost_writes(lost)) == 1 and "'f'" in lost_writes(lost)[0]
    kept = [*lost, Commit(seq=4, records=[_put("f.conflict-x", "c1", "s2", "conflict", of="f", sha256="s2")])]
    assert lost_writes(kept) == []
    same_bytes = commits(_put("f", "e1", "s1", "create", base=None), _put("f", "e2", "s2", base="e1"),
                         _put("f", "e3", "s2", base="e1"))
    assert lost_writes(same_bytes) == []
    legacy = commits(_put("f", "e1", "s1", "create"), _put("f", "e2", "s2"))  # no base: not judged
    assert lost_writes(legacy) == []


def test_check_reports_a_lost_write_in_a_store(store_url: str) -> None:
    """A journal where a write replaced a version its writer never saw (what a
    store that ignores conditional writes allows) fails ``agentfs check``."""
    import agentfs
    from agentfs.journal import Journal
    from agentfs.models import Commit
    from tests.helpers.mounts import agentfs_cli

    with agentfs.open_workspace(store_url, "ws") as c:
        c.write_bytes("f.txt", b"v1")
        v1 = c.stat("f.txt").etag
        c.write_bytes("f.txt", b"v2 from b")
    r = agentfs_cli("check", store_url)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    with open_store(store_url) as store:
        info = store.put("ws/f.txt", b"v3 from a")  # a writer based on v1 overwrote v2
        j = Journal(store, "ws")
        seq = max(cm.seq for cm in j.commits_after(0)) + 1
        rec = _put("f.txt", info.etag, sha(b"v3 from a"), base=v1)
        rec.op.entry.size = 9  # type: ignore[union-attr]
        assert j.append(Commit(seq=seq, records=[rec]))
    r = agentfs_cli("check", store_url)
    assert r.returncode == 1 and "lost write" in r.stdout.decode(), r.stdout.decode() + r.stderr.decode()


# ---------------------------------------------------------------- TTL and files open elsewhere

FAST_PRUNE = {"AGENTFS_PRUNE_INTERVAL": "0.3"}


def test_ttl_never_prunes_a_file_open_on_another_mount(mounter: Callable[..., Mount], store_url: str) -> None:
    """A file open on A expires: neither A nor B prunes it while it is open
    (A's descriptor keeps reading); after A closes it, it is pruned once."""
    a = mounter(store_url, env=FAST_PRUNE)
    b = mounter(store_url, env=FAST_PRUNE)
    wa, wb = a.path / "ws", b.path / "ws"
    wa.mkdir()
    (wa / "held.txt").write_bytes(b"held bytes")
    (wa / "free.txt").write_bytes(b"free")
    wait_for(lambda: read_or_none(wb / "held.txt") == b"held bytes", what="held.txt on B")
    os.setxattr(wa / "held.txt", "user.agentfs.ttl", b"2s")
    os.setxattr(wa / "free.txt", "user.agentfs.ttl", b"2s")
    with open(wa / "held.txt", "rb") as f:
        wait_for(lambda: not (wb / "free.txt").exists() and not (wa / "free.txt").exists(), 10.0,
                 "free.txt pruned")
        time.sleep(2.0)  # many prune passes on both mounts
        assert (wb / "held.txt").exists(), "pruned while open on the other mount"
        assert f.read() == b"held bytes"
        f.seek(0)
        assert f.read() == b"held bytes"
    wait_for(lambda: not (wb / "held.txt").exists() and not (wa / "held.txt").exists(), 10.0,
             "held.txt pruned after its close")
    dels = [r for r in records(store_url) if r.action == "delete" and getattr(r.op, "path", "") == "held.txt"]
    assert len(dels) == 1, f"pruned {len(dels)} times"


# ---------------------------------------------------------------- two writer mounts, random operations

MODEL_SEEDS = [int(s) for s in os.environ.get("AGENTFS_RACE_MODEL_SEEDS", "1").split(",") if s.strip()]
MODEL_OPS = int(os.environ.get("AGENTFS_RACE_MODEL_OPS", "40"))


def _random_writer(ws: Path, who: str, rng: random.Random, names: list[str], n_ops: int,
                   acked: list[tuple[str, bytes, int]]) -> None:
    """``n_ops`` writes of random files in random styles; each appends
    (name, the exact bytes it closed, errno of its fsync/close or 0) to ``acked``
    (-1 for "not acknowledged": a write or a duplicate's close failed first)."""
    for i in range(n_ops):
        name = rng.choice(names)
        tag = f"<{who}{i}>".encode()
        style = rng.choice(["open-w", "shell", "patch", "fsync"])
        err = 0
        flags = os.O_RDWR | os.O_CREAT | (0 if style == "patch" else os.O_TRUNC)
        fd = os.open(ws / name, flags, 0o644)
        try:
            try:
                if style == "patch":  # r+ write at an offset of the current file
                    size = os.fstat(fd).st_size
                    os.pwrite(fd, tag * rng.randrange(1, 50), rng.randrange(0, size + 1))
                else:
                    if style == "shell":
                        os.close(os.dup(fd))  # a shell's redirection closes a duplicate first
                    os.write(fd, tag * rng.randrange(1, 200))
                data = os.pread(fd, 1 << 20, 0)  # exactly what this close acknowledges
                if style == "fsync":
                    try:
                        os.fsync(fd)
                    except OSError as e:
                        err = e.errno or -2
            except OSError as e:
                if e.errno != errno.ESTALE:
                    raise
                err = -1  # a write or a duplicate's close failed: nothing to acknowledge
                data = b""
        finally:
            try:
                os.close(fd)
            except OSError as e:
                err = err or e.errno or -1
        if err != -1:
            acked.append((name, data, err))
        time.sleep(rng.uniform(0, 0.15))


@pytest.mark.parametrize("seed", MODEL_SEEDS)
def test_two_writer_mounts_lose_no_acknowledged_close(pair: Pair, store_url: str, seed: int) -> None:
    """The model of two writer mounts: each random close that succeeded is at
    its path or was replaced by a writer that had seen it; each that failed
    with ESTALE is a conflict copy; no empty conflict copy; the mounts agree."""
    names = ["a.txt", "b.txt", "c.txt"]
    acked: dict[str, list[tuple[str, bytes, int]]] = {"A": [], "B": []}
    ts = [threading.Thread(target=_random_writer,
                           args=(ws, who, random.Random(seed * 31 + k), names, MODEL_OPS, acked[who]))
          for k, (who, ws) in enumerate((("A", pair.wa), ("B", pair.wb)))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    for name in names:
        assert_mounts_agree(pair, store_url, name)
    recs = records(store_url)
    problems = []
    for who, ops in acked.items():
        for i, (name, data, err) in enumerate(ops):
            where = fate(store_url, name, data, recs)
            if (err == 0 and where not in ("path", "replaced")) or (err and (err != errno.ESTALE or where != "copy")):
                problems.append(f"{who} op {i} on {name}: errno {err}, bytes are {where} ({data[:40]!r})")
    if problems:
        for r in recs:
            if isinstance(r.op, PutOp) and r.op.path.split(".")[0] in {n.split(".")[0] for n in names}:
                print(r.agent, r.action, r.op.path, r.op.entry.etag, r.op.entry.sha256[:10] if r.op.entry.sha256
                      else None, r.detail)
    assert not problems, f"seed {seed}: " + "; ".join(problems[:10])
    for name in names:
        for cname, data in conflict_copies(pair.wa, name).items():
            assert data, f"empty conflict copy {cname}"


def test_cli_put_that_loses_names_the_copy(store_url: str, tmp_path: Path) -> None:
    """``agentfs put`` whose upload loses to another writer exits 75 with one
    line naming the conflict copy, which holds the put's bytes."""
    import sys

    import agentfs
    from tests.helpers.mount import REPO

    with agentfs.open_workspace(store_url, "ws") as c:
        c.write_bytes("r.txt", b"base")
        fifo = tmp_path / "in.fifo"
        os.mkfifo(fifo)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        p = subprocess.Popen([sys.executable, "-m", "agentfs", "put", str(fifo), f"{store_url}/ws/r.txt"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO))
        with open(fifo, "wb") as w:
            w.write(b"from put")
            w.flush()
            time.sleep(1.5)  # put has opened r.txt (its base is "base") and waits for more input
            c.write_bytes("r.txt", b"from the other writer")
        out, err = p.communicate(timeout=60)
        assert p.returncode == 75, (out, err)
        lines = [ln for ln in err.decode().splitlines() if ln.startswith("agentfs: ")]
        assert len(lines) == 1 and "r.conflict-" in lines[0], err
        line = lines[0]
        copy = line[line.index("r.conflict-"):].split()[0].rstrip(")")
        assert c.read_bytes(copy) == b"from put"
        assert c.read_bytes("r.txt") == b"from the other writer"
