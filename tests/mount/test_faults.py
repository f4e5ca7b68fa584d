"""Store faults: transient errors, latency spikes and total outages.

The :class:`FaultyStore` wrapper injects the failures; the
:class:`RetryingStore` above it is the one layer that retries.  Tests run the
store layer directly, a Workspace through the Python API (thousands of mixed
operations, every byte checked against a model), and a real FUSE mount with
``AGENTFS_FAULTS`` set in its environment.

Every run is seeded; a failure message names the seed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentfs import errors
from agentfs.api import WorkspaceClient
from agentfs.check import check_store
from agentfs.store import MemoryStore, open_backend, open_store
from agentfs.store.faults import FaultConfig, FaultyStore
from agentfs.store.retry import RetryingStore, RetryPolicy, unwrap
from tests.helpers.mount import Mount

SEED = int(os.environ.get("AGENTFS_TEST_SEED", "7"))
#: Operations of the library workload (the soak script raises it).
LIB_OPS = int(os.environ.get("AGENTFS_FAULT_OPS", "2500"))
MOUNT_OPS = int(os.environ.get("AGENTFS_FAULT_MOUNT_OPS", "400"))
FAST = RetryPolicy(deadline=20, base=0.002, cap=0.05)

#: Totals for the closing note (printed with -s).
TOTALS: dict[str, int] = {}


def _count(name: str, n: int) -> None:
    TOTALS[name] = TOTALS.get(name, 0) + n


@pytest.fixture(autouse=True, scope="module")
def _report() -> Iterator[None]:
    yield
    print(f"\n[faults] totals: {TOTALS}")


def faulty(inner_url: str, **cfg: float | int | str) -> tuple[RetryingStore, FaultyStore]:
    f = FaultyStore(open_backend(inner_url), FaultConfig(**cfg))  # type: ignore[arg-type]
    return RetryingStore(f, FAST, seed=1), f


# -- the store layer -------------------------------------------------------------------


def test_config_parse_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    c = FaultConfig.parse(f"seed=3, rate=0.05,spike=0.01,latency=0.2,after=1,outage_file={tmp_path}/x")
    assert (c.seed, c.rate, c.spike, c.latency, c.after) == (3, 0.05, 0.01, 0.2, 1.0)
    for bad in ("rate=2", "nope=1", "rate", "seed=x", "latency=-1"):
        with pytest.raises(errors.InvalidArgument):
            FaultConfig.parse(bad)
    with pytest.raises(errors.InvalidArgument):
        RetryPolicy.parse("deadline=-1")
    assert RetryPolicy.parse("deadline=2,cap=0.5") == RetryPolicy(deadline=2, cap=0.5)
    monkeypatch.setenv("AGENTFS_FAULTS", "seed=1,rate=0.5")
    monkeypatch.setenv("AGENTFS_RETRY", "deadline=3")
    st = open_store(f"memory://f{uuid.uuid4().hex}")
    assert isinstance(st, RetryingStore) and isinstance(st.inner, FaultyStore)
    assert st.policy.deadline == 3 and st.inner.config.rate == 0.5
    monkeypatch.delenv("AGENTFS_FAULTS")
    st = open_store(f"memory://f{uuid.uuid4().hex}")
    assert isinstance(st, RetryingStore) and not isinstance(st.inner, FaultyStore)


def test_seeded_faults_are_reproducible() -> None:
    def run() -> list[str]:
        f = FaultyStore(MemoryStore(f"r{uuid.uuid4().hex}"), FaultConfig(seed=5, rate=0.3))
        out = []
        for i in range(200):
            try:
                f.put(f"k{i}", b"x")
                out.append("ok")
            except errors.StoreUnavailable as e:
                out.append(str(e))
        return out

    a, b = run(), run()
    assert a == b and 30 < sum(x != "ok" for x in a) < 100
    kinds = {x.split("failed")[1] for x in a if x != "ok"}
    assert len(kinds) >= 4  # 500, 503, reset, timeout (before/after)


def test_transient_errors_are_retried_conditional_writes_settled() -> None:
    """At 40% faults, half of them after the request was carried out, every
    request succeeds, and a conditional write whose earlier attempt succeeded
    is reported as done, never as a false conflict."""
    st, f = faulty(f"memory://t{uuid.uuid4().hex}", seed=SEED, rate=0.4, after=1.0)
    rng = random.Random(SEED)
    model: dict[str, bytes] = {}
    for i in range(600):
        key = f"d{i % 7}/k{i % 50}"
        data = rng.randbytes(rng.randrange(0, 3000))
        if key not in model:
            info = st.put(key, data, if_absent=True)
        else:
            info = st.put(key, data, if_match=st.head(key).etag)
        model[key] = data
        assert info.size == len(data)
        assert st.get(key) == data, f"seed {SEED}"
        if i % 13 == 0:
            st.delete(key, if_match=st.head(key).etag)
            del model[key]
            with pytest.raises(errors.NotFound):
                st.get(key)
        if i % 50 == 0:
            assert {o.key for o in st.list("")} == set(model)
    assert f.stats["after"] > 20 and st.retries > 100, (f.stats, st.retries)
    # a real conflict is still a conflict
    key = next(iter(model))
    with pytest.raises(errors.PreconditionFailed):
        st.put(key, b"other bytes", if_absent=True)
    with pytest.raises(errors.PreconditionFailed):
        st.put(key, b"other bytes", if_match="not-the-etag")
    _count("store ops under faults", 600 * 3)


def test_put_file_settles_after_lost_response(tmp_path: Path) -> None:
    st, f = faulty(f"file://{tmp_path}/s", seed=SEED, rate=0.5, after=1.0)
    src = tmp_path / "src"
    for i in range(40):
        data = os.urandom(10_000 + i)
        src.write_bytes(data)
        st.put_file(f"f{i}", str(src), if_absent=True)
        assert st.get(f"f{i}") == data
    assert f.stats["after"] > 3


def test_total_outage_fails_in_bounded_time() -> None:
    st, f = faulty(f"memory://o{uuid.uuid4().hex}")
    st.policy = RetryPolicy(deadline=1.0, base=0.01, cap=0.2)
    st.put("k", b"v")
    f.outage = True
    t0 = time.monotonic()
    for op in (lambda: st.put("k2", b"x"), lambda: st.get("k"), lambda: list(st.list(""))):
        with pytest.raises(errors.StoreUnavailable) as ei:
            op()
        assert ei.value.errno == errno.EIO
    took = time.monotonic() - t0
    assert took < 3 * 1.0 + 2, took  # three requests, each bounded by the deadline
    assert f.stats["outage"] >= 6  # retried, not given up at once
    f.outage = False
    assert st.get("k") == b"v"


def test_retry_never_retries_final_errors() -> None:
    st, f = faulty(f"memory://n{uuid.uuid4().hex}")
    with pytest.raises(errors.NotFound):
        st.get("missing")
    st.put("k", b"1")
    with pytest.raises(errors.PreconditionFailed):
        st.put("k", b"2", if_absent=True)
    assert f.stats["requests"] == 3 and st.retries == 0


def test_list_resumes_after_broken_page() -> None:
    st, _f = faulty(f"memory://l{uuid.uuid4().hex}", seed=SEED, rate=0.3)
    keys = sorted(f"p/{i:04d}" for i in range(300))
    for k in keys:
        st.put(k, b"")
    for _ in range(20):
        assert [o.key for o in st.list("p/")] == keys


def test_s3_backend_makes_one_attempt(s3_url: str) -> None:
    """botocore's own retries are off under the retry layer (they would multiply)."""
    st = open_store(s3_url)
    backend = unwrap(st)
    backend.put("k", b"v")
    cfg = backend._get_fs().s3._client_config.retries  # type: ignore[attr-defined]
    assert cfg["total_max_attempts"] == 1 and backend._get_fs().retries == 1  # type: ignore[attr-defined]
    assert st.get("k") == b"v"


# -- a workspace under faults (Python API, no FUSE) --------------------------------------


class Model:
    """The expected tree: files (bytes), directories, xattrs."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {""}
        self.xattrs: dict[str, dict[str, bytes]] = {}

    def parent_ok(self, path: str) -> bool:
        return path.rpartition("/")[0] in self.dirs

    def names(self, d: str) -> set[str]:
        pre = f"{d}/" if d else ""
        out = {p[len(pre):].split("/")[0] for p in list(self.files) + list(self.dirs)
               if p and p.startswith(pre)}
        return out

    def move(self, src: str, dst: str) -> None:
        def mv(p: str) -> str:
            return dst + p[len(src):] if p == src or p.startswith(src + "/") else p

        self.files = {mv(p): v for p, v in self.files.items()}
        self.dirs = {mv(p) for p in self.dirs}
        self.xattrs = {mv(p): v for p, v in self.xattrs.items()}


def run_workload(c: WorkspaceClient, ops: int, seed: int, m: Model | None = None) -> tuple[Model, int]:
    """``ops`` mixed operations on ``c``, each checked; returns the model and bytes verified."""
    rng = random.Random(seed)
    m = m or Model()
    verified = 0
    for i in range(ops):
        files, dirs = sorted(m.files), sorted(m.dirs)
        r = rng.random()
        try:
            if r < 0.28 or not files:  # write a new or whole file
                d = rng.choice(dirs)
                p = f"{d}/f{rng.randrange(40)}" if d else f"f{rng.randrange(40)}"
                if p in m.dirs:
                    continue
                size = rng.choice([0, 1, 100, 4096, 70_000, 300_000])
                data = rng.randbytes(size)
                c.write_bytes(p, data)
                m.files[p] = data
                m.xattrs.setdefault(p, {})
            elif r < 0.50:  # read and verify
                p = rng.choice(files)
                got = c.read_bytes(p)
                assert got == m.files[p], f"seed {seed} op {i}: {p} differs"
                verified += len(got)
            elif r < 0.58:  # append
                p = rng.choice(files)
                extra = rng.randbytes(rng.randrange(1, 5000))
                with c.open(p, "ab") as fh:
                    fh.write(extra)
                m.files[p] += extra
            elif r < 0.63:  # overwrite in the middle
                p = rng.choice(files)
                cur = m.files[p]
                off = rng.randrange(len(cur) + 1)
                patch = rng.randbytes(rng.randrange(1, 2000))
                with c.open(p, "r+b") as fh:
                    fh.seek(off)
                    fh.write(patch)
                m.files[p] = cur[:off] + patch + cur[off + len(patch):]
            elif r < 0.70:  # mkdir
                d = rng.choice(dirs)
                p = f"{d}/d{rng.randrange(8)}" if d else f"d{rng.randrange(8)}"
                if p in m.dirs or p in m.files:
                    continue
                c.mkdir(p)
                m.dirs.add(p)
            elif r < 0.78:  # rename a file
                p = rng.choice(files)
                d = rng.choice(dirs)
                q = f"{d}/r{rng.randrange(40)}" if d else f"r{rng.randrange(40)}"
                if q in m.dirs or q == p:
                    continue
                c.rename(p, q)
                data, xa = m.files.pop(p), m.xattrs.pop(p, {})
                m.files[q], m.xattrs[q] = data, xa
            elif r < 0.82:  # rename a directory
                cands = [d for d in dirs if d]
                if not cands:
                    continue
                src = rng.choice(cands)
                parent = rng.choice([d for d in dirs if d != src and not d.startswith(src + "/")])
                dst = f"{parent}/m{rng.randrange(8)}" if parent else f"m{rng.randrange(8)}"
                if dst in m.dirs or dst in m.files:
                    continue
                c.rename(src, dst)
                m.move(src, dst)
            elif r < 0.88:  # remove a file
                p = rng.choice(files)
                c.remove(p)
                del m.files[p]
                m.xattrs.pop(p, None)
            elif r < 0.93:  # xattr
                p = rng.choice(files)
                v = rng.randbytes(rng.randrange(0, 64))
                c.setxattr(p, "user.t", v)
                m.xattrs.setdefault(p, {})["user.t"] = v
                assert c.getxattr(p, "user.t") == v
            else:  # listing
                d = rng.choice(dirs)
                assert set(c.listdir(d)) == m.names(d), f"seed {seed} op {i}: listing of {d!r}"
        except AssertionError:
            raise
        except Exception as e:
            raise AssertionError(f"seed {seed} op {i}: {type(e).__name__}: {e}") from e
    return m, verified


def verify_all(c: WorkspaceClient, m: Model) -> int:
    n = 0
    for p, data in m.files.items():
        got = c.read_bytes(p)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), p
        n += len(got)
        for name, v in m.xattrs.get(p, {}).items():
            assert c.getxattr(p, name) == v
    for d in m.dirs:
        assert set(c.listdir(d)) == m.names(d), d
    return n


@pytest.mark.parametrize("backend", ["memory", "file"])
def test_workspace_workload_under_faults(backend: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of mixed operations at 5% transient faults (with latency spikes):
    all succeed, every read matches the model, and a fresh client without
    faults reads back every byte; the store checks clean."""
    url = f"memory://w{uuid.uuid4().hex}" if backend == "memory" else f"file://{tmp_path}/store"
    monkeypatch.setenv("AGENTFS_FAULTS", f"seed={SEED},rate=0.05,spike=0.002,latency=0.05,after=0.5")
    monkeypatch.setenv("AGENTFS_RETRY", "deadline=20,base=0.002,cap=0.05")
    store = open_store(url)
    f = store.inner
    assert isinstance(f, FaultyStore)
    c = WorkspaceClient(store, "ws", create=True)
    try:
        m, verified = run_workload(c, LIB_OPS, SEED)
    finally:
        c.close()
    assert f.stats["requests"] > LIB_OPS and sum(f.stats[k] for k in ("500", "503", "reset", "timeout")) > 50
    monkeypatch.delenv("AGENTFS_FAULTS")
    clean = open_store(url)
    c2 = WorkspaceClient(clean, "ws")
    try:
        verified += verify_all(c2, m)
    finally:
        c2.close()
    rep = check_store(open_store(url))
    assert rep.clean, rep.model_dump_json(indent=1)
    # no conflict copies: every retried write was settled as ours
    assert not [p for p in m.files if "conflict" in p]
    _count("workspace ops under faults", LIB_OPS)
    _count("store requests under faults", f.stats["requests"])
    _count("faults injected", sum(f.stats[k] for k in ("500", "503", "reset", "timeout")))
    _count("bytes verified", verified)
    print(f"\n[faults] {backend}: ops={LIB_OPS} requests={f.stats['requests']} "
          f"stats={dict(f.stats)} retries={store.retries} bytes_verified={verified}")


def test_workspace_workload_under_faults_s3(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on moto S3 (shorter: moto is slow)."""
    monkeypatch.setenv("AGENTFS_FAULTS", f"seed={SEED},rate=0.05,after=0.5")
    monkeypatch.setenv("AGENTFS_RETRY", "deadline=20,base=0.002,cap=0.05")
    store = open_store(s3_url)
    c = WorkspaceClient(store, "ws", create=True)
    try:
        m, verified = run_workload(c, 300, SEED + 1)
    finally:
        c.close()
    monkeypatch.delenv("AGENTFS_FAULTS")
    c2 = WorkspaceClient(open_store(s3_url), "ws")
    try:
        verified += verify_all(c2, m)
    finally:
        c2.close()
    assert check_store(open_store(s3_url)).clean
    _count("workspace ops under faults", 300)
    _count("bytes verified", verified)


# -- a real mount under faults -----------------------------------------------------------


def _mount_env(**extra: str) -> dict[str, str]:
    env = {"AGENTFS_RETRY": "deadline=20,base=0.005,cap=0.1"}
    env.update(extra)
    return env


def test_mount_workload_under_faults(mounter: Callable[..., Mount], store_url: str) -> None:
    """A shorter workload through the kernel with 5% faults in the daemon."""
    m = mounter(store_url, env=_mount_env(AGENTFS_FAULTS=f"seed={SEED},rate=0.05,after=0.5"))
    root = m.path / "ws"
    root.mkdir()
    rng = random.Random(SEED)
    model: dict[str, bytes] = {}
    verified = 0
    for i in range(MOUNT_OPS):
        r = rng.random()
        names = sorted(model)
        if r < 0.4 or not names:
            p = f"f{rng.randrange(30)}"
            data = rng.randbytes(rng.choice([0, 10, 5000, 200_000]))
            (root / p).write_bytes(data)
            model[p] = data
        elif r < 0.7:
            p = rng.choice(names)
            got = (root / p).read_bytes()
            assert got == model[p], f"seed {SEED} op {i}: {p}"
            verified += len(got)
        elif r < 0.8:
            p = rng.choice(names)
            extra = rng.randbytes(1000)
            with open(root / p, "ab") as fh:
                fh.write(extra)
                os.fsync(fh.fileno())
            model[p] += extra
        elif r < 0.9:
            p = rng.choice(names)
            q = f"g{rng.randrange(30)}"
            os.rename(root / p, root / q)
            model[q] = model.pop(p)
        else:
            p = rng.choice(names)
            os.unlink(root / p)
            del model[p]
        if i % 50 == 0:
            assert sorted(os.listdir(root)) == sorted(model), f"seed {SEED} op {i}"
    assert m.unmount() == 0
    assert "injected fault" in m.log_text() or "fault injection on" in m.log_text()
    # A release slowed by retries may outlive the kernel's interest in its reply
    # (pyfuse3 logs that as an ERROR; nothing is lost). Any other ERROR fails.
    m.expect_errors = True
    other = [ln for ln in m.error_lines() if "fuse_reply_* failed with No such file" not in ln]
    assert not other, other
    # every byte is in the store: read back without faults and without the mount
    c = WorkspaceClient(open_store(store_url), "ws")
    try:
        for p, data in model.items():
            assert c.read_bytes(p) == data, p
            verified += len(data)
        assert not [n for n in c.listdir("") if "conflict" in n]
    finally:
        c.close()
    _count("mount ops under faults", MOUNT_OPS)
    _count("bytes verified", verified)


def test_mount_total_outage(mounter: Callable[..., Mount], tmp_path: Path) -> None:
    """Under a total outage a write fails with EIO in bounded time (no hang),
    cached data stays readable, and when the store is back the kept working
    copy is delivered by the mount's background retrier."""
    store = tmp_path / "store"
    store.mkdir()
    url = f"file://{store}"
    switch = tmp_path / "outage"
    m = mounter(url, env=_mount_env(AGENTFS_FAULTS=f"outage_file={switch}",
                                    AGENTFS_RETRY="deadline=2,base=0.01,cap=0.3"))
    root = m.path / "ws"
    root.mkdir()
    cached = os.urandom(300_000)
    (root / "cached").write_bytes(cached)
    assert (root / "cached").read_bytes() == cached  # now in the block cache
    switch.touch()
    try:
        t0 = time.monotonic()
        payload = os.urandom(50_000)
        fd = os.open(root / "new", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, payload)
            with pytest.raises(OSError) as ei:
                os.fsync(fd)
            assert ei.value.errno == errno.EIO
        finally:
            with pytest.raises(OSError) as ei2:
                os.close(fd)  # flush: the same failure; the working copy is kept
            assert ei2.value.errno == errno.EIO
        took = time.monotonic() - t0
        assert took < 30, f"outage write took {took:.1f}s"
        # reads of cached data and of the namespace keep working
        assert (root / "cached").read_bytes() == cached
        assert sorted(os.listdir(root)) == ["cached", "new"]
        assert (root / "new").read_bytes() == payload  # the kept working copy
        st = os.stat(root / "new")
        assert st.st_size == len(payload)
    finally:
        switch.unlink()
    # the store is back: the background retrier delivers the kept upload
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        c = WorkspaceClient(open_store(url), "ws")
        try:
            if c.exists("new") and c.read_bytes("new") == payload:
                break
        finally:
            c.close()
        time.sleep(0.5)
    else:
        raise AssertionError("the kept upload was not delivered after the outage")
    assert m.unmount() == 0
    assert "outage" in m.log_text()
    _count("bytes verified", len(payload) + 2 * len(cached))
