"""Model-based random testing of the newer features, on a real mount.

Extends the model of ``tests/mount/test_model.py`` (``tests/helpers/model.py``: Model, Real, Runner and Gen) with operations
that need a real mount and a store:

- typed ``user.agentfs.*`` state (status with its lifecycle, owner, task, labels,
  note), valid and invalid values, alongside the plain ``user.*`` xattrs;
- mmap reads (``MAP_SHARED``) next to the mmap writes (``flush`` = msync) of the base;
- checkpoints: ``mkdir .snapshots/NAME``; the model keeps a frozen copy and every read
  of the view (and the whole view at the end) must equal it after later writes;
- out-of-band writes: an object put at a natural key through the store directly (not
  through agentfs); once the mount has adopted it the model accepts it;
- a second mount of the same store: reads there must converge to the model within
  the coherence bound (and its whole tree at the end).

The writes at offsets, truncates, appends, renames of files and directories, unlinks
with open fds and mmap writes of the base generator stay in the mix.

Budget: ``AGENTFS_MODEL_EXT_SEEDS`` (default ``1``) and ``AGENTFS_MODEL_EXT_OPS``
(default 600) per store; a failure names the seed and prints the replay command.
``test_state_machine_ext`` is a small hypothesis state machine over the same
operations (typed state, mmap, checkpoints) on one mount.
"""

from __future__ import annotations

import errno
import itertools
import json
import mmap
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from agentfs.store import open_store
from tests.helpers.model import Gen, Model, Op, Real, Runner, fail, fmt, outcome, under
from tests.helpers.mount import Mount

SEEDS = [int(s) for s in os.environ.get("AGENTFS_MODEL_EXT_SEEDS", "1").split(",") if s.strip()]
N_OPS = int(os.environ.get("AGENTFS_MODEL_EXT_OPS", "400"))
#: The coherence promise between mounts is 2 s (SEMANTICS); a loaded CI machine
#: gets more.  This is a bound for convergence, not a timing assertion.
CONVERGE_WITHIN = float(os.environ.get("AGENTFS_MODEL_CONVERGE", "15"))
ADOPT_WITHIN = 30.0
P = "user.agentfs."
#: Stamped by agentfs on every state change; their values are not the model's business.
STAMPS = {P + "updated_by", P + "updated_at"}
TRANSITIONS = {  # the default lifecycle, as docs/SEMANTICS.md states it
    "draft": ["in_progress", "review", "failed", "archived"],
    "in_progress": ["draft", "review", "failed", "archived"],
    "review": ["in_progress", "approved", "failed", "archived"],
    "approved": ["final", "review", "failed", "archived"],
    "final": ["archived"],
    "failed": ["draft", "in_progress", "archived"],
    "archived": ["draft"],
}
LABELS = ["q4", "finance", "draft:2", "team/a", "x@y", "v1.2"]


def poll(fn: Callable[[], Any], ok: Callable[[Any], bool], within: float) -> Any:
    """Call ``fn`` until ``ok(result)`` or ``within`` seconds pass; the last result (or OSError)."""
    t0 = time.monotonic()
    while True:
        try:
            got: Any = fn()
        except OSError as e:
            got = e
        if ok(got) or time.monotonic() - t0 > within:
            if isinstance(got, OSError):
                raise got
            return got
        time.sleep(0.1)


class ExtModel(Model):
    def __init__(self) -> None:
        super().__init__()
        self.cps: dict[str, dict[str, Any]] = {}

    def listxattr(self, p: str) -> list[str]:
        return sorted(n for n in self._inode(p) if n not in STAMPS)

    def state_set(self, p: str, short: str, value: bytes) -> bytes:
        xs = self._inode(p)
        text = value.decode("utf-8", "replace").strip()
        if short == "status":
            old = xs.get(P + "status")
            old_s = old.decode() if old is not None else None
            if text not in TRANSITIONS or (old_s not in (None, text) and text not in TRANSITIONS[old_s]):
                fail(errno.EINVAL)
            stored = text.encode()
        elif short in ("owner", "task"):
            if not text or len(text) > 128:
                fail(errno.EINVAL)
            stored = text.encode()
        elif short == "labels":
            out: list[str] = []
            for item in (i.strip() for i in text.split(",")):
                if item and item not in out:
                    out.append(item)
            stored = json.dumps(out).encode()
        elif short == "note":
            if not text or len(text.encode()) > 4096:
                fail(errno.EINVAL)
            stored = text.encode()
        else:
            fail(errno.EINVAL)
        xs[P + short] = stored
        return stored

    def mmap_read(self, p: str, off: int, n: int) -> bytes:
        return self._file(p)[off:off + n]

    def checkpoint(self, name: str) -> None:
        if name in self.cps:
            fail(errno.EEXIST)
        snap = self.snapshot()
        snap["xattrs"] = {q: {n: v for n, v in xs.items() if n not in STAMPS}
                          for q, xs in snap["xattrs"].items()}
        self.cps[name] = snap

    def frozen(self, name: str) -> ExtModel:
        """The tree as of checkpoint ``name``, as a model of its own."""
        snap, m = self.cps[name], ExtModel()
        m.dirs, m.files = set(snap["dirs"]), dict(snap["files"])
        m.links, m.xattrs = dict(snap["links"]), {p: dict(x) for p, x in snap["xattrs"].items()}
        return m

    def cp_read(self, name: str, p: str) -> bytes:
        return self.frozen(name).read(p)

    def cp_write(self, name: str, p: str) -> None:
        fail(errno.EROFS)

    def oob_put(self, p: str, data: bytes) -> None:
        self._ancestors(p)
        self.files[p] = data  # an overwrite keeps the file's xattrs

    def peer_read(self, p: str) -> bytes:
        return self._file(p)

    def peer_listdir(self, d: str) -> list[str]:
        return self.listdir(d)


class ExtReal(Real):
    """Real operations on mount A, plus the store directly and mount B."""

    def __init__(self, root: Path, ws: str, store_url: str | None, peer: Path | None) -> None:
        super().__init__(root)
        self.ws, self.peer = ws, peer
        self.store = open_store(store_url) if store_url else None

    def listxattr(self, p: str) -> list[str]:
        return [n for n in super().listxattr(p) if n not in STAMPS]

    def state_set(self, p: str, short: str, value: bytes) -> bytes:
        os.setxattr(self._p(p), P + short, value)
        return os.getxattr(self._p(p), P + short)

    def mmap_read(self, p: str, off: int, n: int) -> bytes:
        fd = os.open(self._p(p), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return b""
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
                return bytes(mm[off:off + n])
        finally:
            os.close(fd)

    def checkpoint(self, name: str) -> None:
        os.mkdir(self._p(f".snapshots/{name}"))

    def cp_read(self, name: str, p: str) -> bytes:
        return self.read(f".snapshots/{name}/{p}")

    def cp_write(self, name: str, p: str) -> None:
        self.write(f".snapshots/{name}/{p}", 0, b"nope")

    def oob_put(self, p: str, data: bytes) -> None:
        """Put the object through the store, then wait until mount A shows it (adoption)."""
        assert self.store is not None
        self.store.put(f"{self.ws}/{p}", data)
        poll(lambda: self.read(p), lambda got: got == data, ADOPT_WITHIN)

    def _peer(self) -> Real:
        assert self.peer is not None
        return Real(self.peer)

    def peer_read(self, p: str, want: bytes | None = None) -> bytes:
        return poll(lambda: self._peer().read(p), lambda got: got == want, CONVERGE_WITHIN)

    def peer_listdir(self, d: str, want: list[str] | None = None) -> list[str]:
        return poll(lambda: self._peer().listdir(d), lambda got: got == want, CONVERGE_WITHIN)


class ExtRunner(Runner):
    def __init__(self, real: ExtReal, label: str) -> None:
        super().__init__(real.root, label)
        self.real, self.model = real, ExtModel()

    def step(self, op: Op) -> Any:
        if op.name in ("peer_read", "peer_listdir"):
            # the peer converges to what the model holds now (or its error)
            try:
                want = getattr(self.model, op.name)(*op.args)
            except OSError:
                want = None
            real_fn = getattr(self.real, op.name)
            model_fn = getattr(self.model, op.name)
            i = len(self.history)
            self.history.append(op)
            got = outcome(lambda *a: real_fn(*a, want=want), *op.args)
            exp = outcome(model_fn, *op.args)
            if got != exp:
                raise AssertionError(self.context(
                    f"op #{i} {op} (mount B did not converge within {CONVERGE_WITHIN}s)",
                    f"mount B: {got[0]} {fmt(got[1])}\nmodel:   {exp[0]} {fmt(exp[1])}"))
            return got[1]
        return super().step(op)

    def compare_frozen(self, name: str) -> None:
        saved = self.model
        self.model = saved.frozen(name)
        try:
            self.compare_tree(self.real.root / ".snapshots" / name, f"checkpoint view {name}")
        finally:
            self.model = saved

    def snapshot_real(self, root: Path | None) -> dict:
        real_cls = ExtReal.__new__(ExtReal)
        Real.__init__(real_cls, root or self.real.root)
        return real_cls.snapshot()

    def normalise(self, snap: dict) -> None:
        # the base snapshot lists every user.* name; drop the stamps from both sides
        snap["xattrs"] = {p: xs for p, xs in
                          ((p, {n: v for n, v in x.items() if n not in STAMPS}) for p, x in snap["xattrs"].items())
                          if xs}


class ExtGen(Gen):
    WEIGHTS = {**Gen.WEIGHTS, "state": 5, "mmap_read": 3, "checkpoint": 2, "cp_read": 5,
               "cp_write": 1, "oob_put": 2, "peer_read": 4, "peer_listdir": 1}

    def __init__(self, rng: random.Random, model: ExtModel, *, oob: bool, peer: bool) -> None:
        super().__init__(rng, model)
        self.m: ExtModel = model
        self.oob, self.has_peer, self.n_cp = oob, peer, 0

    def g_state(self):
        p = self.inode()
        short = self.rng.choice(["status", "status", "owner", "task", "labels", "note", "bogus"])
        r = self.rng.random()
        if short == "status":
            value = self.rng.choice(list(TRANSITIONS)).encode()
        elif short in ("owner", "task"):
            value = (f"agent-{self.rng.randint(0, 99)}" if r > 0.1 else "   ").encode()
        elif short == "labels":
            value = ", ".join(self.rng.choice(LABELS) for _ in range(self.rng.randint(1, 4))).encode()
        elif short == "note":
            value = (f"  step {self.rng.randint(0, 9)}\nline two  " if r > 0.1 else "n" * 5000).encode()
        else:
            value = b"x"
        return Op("state_set", (p, short, value))

    def g_mmap_read(self):
        if (p := self.file()) is None:
            return None
        size = len(self.m.files[p])
        off = self.rng.randint(0, max(0, size - 1))
        return Op("mmap_read", (p, off, self.rng.randint(1, 70_000)))

    def g_checkpoint(self):
        self.n_cp += 1
        return Op("checkpoint", (f"cp{self.n_cp}",))

    def g_cp_read(self):
        if not self.m.cps:
            return None
        name = self.pick(self.m.cps)
        frozen = self.m.cps[name]["files"]
        p = self.pick(frozen) if frozen and self.rng.random() < 0.8 else self.fresh()
        return Op("cp_read", (name, p))

    def g_cp_write(self):
        if not self.m.cps:
            return None
        name = self.pick(self.m.cps)
        return (p := self.pick(self.m.cps[name]["files"])) and Op("cp_write", (name, p))

    def g_oob_put(self):
        if not self.oob:
            return None
        # A name never used before: an object landing within 1 s of a delete at the same
        # path is taken for a crash leftover and removed.
        self.n_oob = getattr(self, "n_oob", 0) + 1
        # Another tool overwrites a tracked file.  Not one whose bytes a checkpoint may
        # still need at its natural key: agentfs preserves old bytes only for writes that
        # go through it (such a view then reads ESTALE and check reports the loss).
        frozen = {b for cp in self.m.cps.values() for b in cp["files"].values()}
        free = [q for q, b in self.m.files.items() if b not in frozen]
        if free and self.rng.random() < 0.3:
            return Op("oob_put", (self.pick(free), self.data() or b"oob"))
        d = self.pick(q for q in self.m.dirs if q.count("/") < 3)
        return Op("oob_put", (f"{d}/oob{self.n_oob}" if d else f"oob{self.n_oob}", self.data() or b"oob"))

    def g_peer_read(self):
        if not self.has_peer:
            return None
        return (p := self.file()) and Op("peer_read", (p,))

    def g_peer_listdir(self):
        if not self.has_peer:
            return None
        return Op("peer_listdir", (self.pick(self.m.dirs),))


def test_random_ops_ext(mounter: Callable[..., Mount], store_url: str, request: pytest.FixtureRequest) -> None:
    # Mount A adopts out-of-band objects at once; mount B is a plain second mount.
    a = mounter(store_url, "--scan-interval", "1", env={"AGENTFS_ADOPT_GRACE": "0"})
    b = mounter(store_url)
    node = request.node.nodeid
    counts: dict[str, int] = {}
    for seed in SEEDS:
        root = a.path / f"m{seed}"  # a workspace per seed (.snapshots is at a workspace root)
        root.mkdir()
        poll((b.path / root.name).is_dir, bool, CONVERGE_WITHIN)
        real = ExtReal(root, root.name, store_url, b.path / root.name)
        runner = ExtRunner(real, label=f"seed={seed} ({node})")
        gen = ExtGen(random.Random(seed), runner.model, oob=True, peer=True)
        for i in range(N_OPS):
            runner.replay = (f"replay: AGENTFS_MODEL_EXT_SEEDS={seed} AGENTFS_MODEL_EXT_OPS={i + 1} "
                             f"pytest '{node}'")
            op = gen.next()
            counts[op.name] = counts.get(op.name, 0) + 1
            runner.step(op)
        runner.compare_tree()
        for name in sorted(runner.model.cps):
            runner.compare_frozen(name)
        # mount B converges to the whole tree
        t0 = time.monotonic()
        while True:
            try:
                runner.compare_tree(b.path / root.name, "tree on mount B")
                break
            except (AssertionError, OSError):  # B may be between two states of the journal
                if time.monotonic() - t0 > CONVERGE_WITHIN:
                    raise
                time.sleep(0.2)
    print(f"model ext ops ({store_url.split(':')[0]}): {sum(counts.values())} {sorted(counts.items())}")
    for kind in ("state_set", "mmap_read", "checkpoint", "cp_read", "oob_put", "peer_read"):
        assert counts.get(kind), f"the generator never produced {kind}: {counts}"


PATHS = st.sampled_from(["a", "b", "d/a", "d/c"])  # "d" starts as a directory


@pytest.mark.parametrize("store_url", ["local"], indirect=True)
def test_state_machine_ext(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url)
    examples = itertools.count()

    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            root = m.path / f"ex{next(examples)}"  # a workspace each
            root.mkdir()
            self.run = ExtRunner(ExtReal(root, "", None, None), label=f"hypothesis example {root.name}")
            self.run.replay = "(hypothesis prints the failing steps below)"
            self.run.step(Op("mkdir", ("d",)))
            self.n = 0

        @rule(p=PATHS, data=st.binary(max_size=300))
        def create(self, p: str, data: bytes) -> None:
            self.run.step(Op("create", (p, data)))

        @rule(p=PATHS, off=st.integers(0, 5000), data=st.binary(min_size=1, max_size=300))
        def write(self, p: str, off: int, data: bytes) -> None:
            self.run.step(Op("write", (p, off, data)))

        @rule(p=PATHS, size=st.integers(0, 5000))
        def truncate(self, p: str, size: int) -> None:
            self.run.step(Op("truncate", (p, size)))

        @rule(src=PATHS, dst=PATHS)
        def rename(self, src: str, dst: str) -> None:
            self.run.step(Op("rename", (src, dst)))

        @rule(p=PATHS, off=st.integers(0, 400), n=st.integers(1, 600))
        def mmap_read(self, p: str, off: int, n: int) -> None:
            self.run.step(Op("mmap_read", (p, off, n)))

        @rule(p=st.sampled_from(["a", "d"]), short=st.sampled_from(["status", "owner", "labels"]),
              v=st.sampled_from(["draft", "review", "in_progress", "q4,finance", "agent-1"]))
        def state(self, p: str, short: str, v: str) -> None:
            self.run.step(Op("state_set", (p, short, v.encode())))

        @rule()
        def checkpoint(self) -> None:
            self.n += 1
            self.run.step(Op("checkpoint", (f"h{self.n}",)))

        @invariant()
        def views_frozen(self) -> None:
            for name in self.run.model.cps:
                for p in self.run.model.cps[name]["files"]:
                    self.run.step(Op("cp_read", (name, p)))

        def teardown(self) -> None:
            self.run.compare_tree()
            for name in self.run.model.cps:
                self.run.compare_frozen(name)

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=8, stateful_step_count=25, deadline=None, database=None))


def test_generator_covers_every_kind() -> None:
    """The generator itself (no mount): every new kind comes up within a short run."""
    model = ExtModel()
    gen = ExtGen(random.Random(5), model, oob=True, peer=True)
    seen = set()
    for _ in range(3000):
        op = gen.next()
        seen.add(op.name)
        try:
            getattr(model, op.name)(*op.args)
        except OSError:
            pass
    want = {"state_set", "mmap_read", "checkpoint", "cp_read", "cp_write", "oob_put", "peer_read",
            "peer_listdir", "unlink_open", "mmap_write", "rename", "truncate", "append", "write"}
    assert want <= seen, want - seen
    assert any(under(p, "") for p in model.files)


def test_checkpoint_view_root_keeps_the_workspace_root_xattrs(mounter: Callable[..., Mount], s3_url: str,
                                                             tmp_path: Path) -> None:
    """Found by the model test: ``.snapshots/NAME`` must show the workspace root's
    xattrs (plain and typed) as of the checkpoint, like every other directory."""
    for url in (f"file://{tmp_path / 'store'}", s3_url):
        if url.startswith("file://"):
            (tmp_path / "store").mkdir()
        m = mounter(url)
        ws = m.path / "ws"
        ws.mkdir()
        os.setxattr(ws, "user.a", b"root value")
        os.setxattr(ws, P + "owner", b"agent-7")
        (ws / "f").write_bytes(b"x")
        os.mkdir(ws / ".snapshots" / "c1")
        os.setxattr(ws, "user.a", b"changed later")
        view = ws / ".snapshots" / "c1"
        assert os.getxattr(view, "user.a") == b"root value"
        assert os.getxattr(view, P + "owner") == b"agent-7"
        assert {"user.a", P + "owner"} <= set(os.listxattr(view))
