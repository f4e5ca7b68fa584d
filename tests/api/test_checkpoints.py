"""Checkpoints through the library (no FUSE): create, copy-on-write, restore,
fork, diff, prune, gc.

Every test runs on a memory store, a local directory store and moto S3, and
ends with ``agentfs check`` finding the store consistent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from agentfs.api import WorkspaceClient
from agentfs.checkpoints import gc, parse_duration, state_at
from agentfs.errors import AlreadyExists, BadName, Busy, NotFound
from agentfs.journal import META
from agentfs.store import open_store
from agentfs.workspace.cow import blob_id
from tests.helpers.api import WS


def blobs(url: str, ws: str = WS) -> list[str]:
    st = open_store(url)
    try:
        return sorted(o.key for o in st.list(f"{META}/{ws}/blobs/"))
    finally:
        st.close()


def tree(c: WorkspaceClient) -> dict[str, Any]:
    """Everything a user sees: kind, mode, bytes, symlink target, xattrs."""
    out: dict[str, Any] = {}
    for st in c.walk(""):
        x = {n: c.getxattr(st.path, n) for n in c.listxattr(st.path)}
        body = c.read_bytes(st.path) if st.kind == "file" else st.target
        out[st.path] = (st.kind, st.mode, body, x)
    return out


def populate(c: WorkspaceClient) -> None:
    c.write_bytes("a.txt", b"alpha v1")
    c.mkdir("docs")
    c.write_bytes("docs/b.md", b"# b v1\n")
    c.write_bytes("docs/keep.bin", bytes(range(256)) * 64)
    c.symlink("docs/b.md", "link")
    c.chmod("a.txt", 0o600)
    c.setxattr("docs/b.md", "user.agentfs.status", b"draft")


class CountingStore:
    """Delegates to a store and counts calls per method (the creation budget)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: dict[str, int] = {}
        self.counting = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def wrapped(*a: Any, **k: Any) -> Any:
            if self.counting:
                self.calls[name] = self.calls.get(name, 0) + 1
            r = attr(*a, **k)
            if name == "list":
                r = list(r)
            return r
        return wrapped


def test_create_is_one_commit_and_copies_nothing(url: str) -> None:
    counting = CountingStore(open_store(url))
    c = WorkspaceClient(counting, WS, create=True)  # type: ignore[arg-type]
    try:
        populate(c)
        before = c.stat("a.txt").etag
        counting.counting = True
        cp = c.checkpoint("first", note="before the risky step")
        counting.counting = False
        assert cp.seq > 0 and cp.files == 3 and cp.note == "before the risky step"
        # one journal PUT + the two records, plus the catch-up GET: never a copy,
        # never a data read, never a listing
        assert counting.calls.get("copy", 0) == 0 and counting.calls.get("list", 0) == 0
        assert counting.calls.get("put", 0) == 3, counting.calls
        assert sum(counting.calls.values()) <= 5, counting.calls
        assert blobs(url) == []
        assert c.stat("a.txt").etag == before
        st = open_store(url)
        md = st.get(f"{META}/{WS}/snapshots/first.md").decode()
        assert "first" in md and "before the risky step" in md
        assert [x.name for x in c.checkpoints()] == ["first"]
        with pytest.raises(AlreadyExists):
            c.checkpoint("first")
        with pytest.raises(BadName):
            c.checkpoint("../x")
    finally:
        c.close()


def test_copy_on_write_keeps_the_view_byte_identical(clients: Callable[..., WorkspaceClient], url: str) -> None:
    c = clients()
    populate(c)
    c.checkpoint("one")
    want = {p: c.read_bytes(p) for p in ("a.txt", "docs/b.md", "docs/keep.bin")}
    # overwrite, truncate, delete, rename away, rename over
    c.write_bytes("a.txt", b"alpha v2")
    with c.open("docs/b.md", "r+b") as f:
        f.truncate(3)
    c.write_bytes("other.txt", b"other")
    c.rename("other.txt", "docs/keep.bin")  # over a checkpointed file
    c.remove("docs/b.md")
    c.write_bytes("docs/b.md", b"new b")
    for p, data in want.items():
        assert c.read_checkpoint_bytes("one", p) == data, p
    # each changed version preserved exactly once
    assert len(blobs(url)) == 3
    # overwriting again copies nothing more (the new versions are not referenced)
    c.write_bytes("a.txt", b"alpha v3")
    assert len(blobs(url)) == 3
    assert c.read_checkpoint_bytes("one", "a.txt") == b"alpha v1"


def test_unchanged_files_are_never_copied_and_checkpoints_share_blobs(
        clients: Callable[..., WorkspaceClient], url: str) -> None:
    c = clients()
    populate(c)
    c.checkpoint("one")
    c.chmod("docs/keep.bin", 0o644)  # metadata only: bytes unchanged
    c.checkpoint("two")
    c.write_bytes("a.txt", b"changed")
    c.write_bytes("docs/keep.bin", b"changed too")
    # a.txt and keep.bin: one blob each although two checkpoints reference them
    assert len(blobs(url)) == 2
    assert c.read_checkpoint_bytes("two", "docs/keep.bin") == bytes(range(256)) * 64
    assert c.read_checkpoint_bytes("one", "docs/b.md") == b"# b v1\n"
    st = open_store(url)
    keys = blobs(url)
    e = state_at(st, WS, c.checkpoints()[0].seq).entries["a.txt"]
    assert f"{META}/{WS}/blobs/{blob_id(e, 'a.txt')}" in keys


def test_restore_is_exact_and_undoable(clients: Callable[..., WorkspaceClient], url: str) -> None:
    c = clients()
    populate(c)
    c.checkpoint("good")
    good = tree(c)
    c.write_bytes("a.txt", b"broken")
    c.rmtree("docs")
    c.mkdir("junk")
    c.write_bytes("junk/x", b"x")
    c.symlink("nowhere", "dangling")
    c.setxattr("a.txt", "user.agentfs.status", b"failed")
    bad = tree(c)
    undo = c.restore("good")
    assert tree(c) == good
    # a second client (another process) sees the same
    other = clients()
    assert tree(other) == good
    c.restore(undo.name)
    assert tree(c) == bad
    d = c.diff("good", "head")
    assert "junk/x" in d.added and "docs/b.md" in d.removed and "a.txt" in d.changed
    assert any(s["name"] == "user.agentfs.status" and s["path"] == "a.txt" for s in d.state)
    assert "## Added" in d.markdown()


def test_restore_before_materialisation_reads_the_blobs(clients: Callable[..., WorkspaceClient]) -> None:
    c = clients()
    populate(c)
    c.checkpoint("good")
    good = tree(c)
    c.write_bytes("a.txt", b"broken")
    c.write_bytes("docs/keep.bin", b"small now")
    c.restore("good", materialize=False)
    assert c.stat("a.txt").etag is not None
    assert tree(c) == good  # served from the blobs through data_key
    # writing to an unmaterialised file works and is not a conflict
    c.write_bytes("docs/keep.bin", b"rewritten")
    assert c.read_bytes("docs/keep.bin") == b"rewritten"
    assert c.materialize() == 1  # a.txt; keep.bin was rewritten meanwhile
    assert c.read_bytes("a.txt") == b"alpha v1"
    assert [n for n in c.listdir("docs") if "conflict" in n] == []


def test_fork_is_isolated(clients: Callable[..., WorkspaceClient], url: str) -> None:
    c = clients()
    populate(c)
    c.checkpoint("base")
    c.write_bytes("a.txt", b"source moved on")  # before the fork: the fork reads the blob
    n = c.fork("base", "exp", materialize=False)
    assert n >= 5
    f = clients("exp", create=False)
    assert f.read_bytes("a.txt") == b"alpha v1"
    assert f.getxattr("docs/b.md", "user.agentfs.status") == b"draft"
    with pytest.raises(Busy):
        c.delete_checkpoint("base")  # the fork still needs its bytes
    c.write_bytes("docs/b.md", b"source edit")
    f.write_bytes("docs/keep.bin", b"fork edit")
    assert f.read_bytes("docs/b.md") == b"# b v1\n"
    assert c.read_bytes("docs/keep.bin") == bytes(range(256)) * 64
    assert f.materialize() >= 2
    st = open_store(url)
    assert st.get("exp/a.txt") == b"alpha v1"
    assert st.get("exp/docs/keep.bin") == b"fork edit"
    with pytest.raises(AlreadyExists):
        c.fork("base", "exp")
    c.delete_checkpoint("base")  # materialised: allowed now
    assert f.read_bytes("docs/b.md") == b"# b v1\n"


def test_prune_and_gc_keep_what_is_referenced(clients: Callable[..., WorkspaceClient], url: str) -> None:
    c = clients()
    populate(c)
    c.checkpoint("c1")
    c.write_bytes("a.txt", b"v2")
    c.checkpoint("c2")
    c.write_bytes("a.txt", b"v3")
    c.checkpoint("c3")
    c.write_bytes("a.txt", b"v4")
    assert len(blobs(url)) == 3
    st = open_store(url)
    rep = gc(st, [WS], grace=0)
    assert rep.deleted == []
    assert c.prune_checkpoints(keep_last=1) == ["c1", "c2"]
    assert [x.name for x in c.checkpoints()] == ["c3"]
    rep = gc(st, [WS], grace=0)
    assert len(rep.deleted) == 2
    assert c.read_checkpoint_bytes("c3", "a.txt") == b"v3"
    assert c.prune_checkpoints(keep_within=parse_duration("1h")) == []
    with pytest.raises(NotFound):
        c.delete_checkpoint("c1")


def test_checkpoint_survives_compaction_and_reload(clients: Callable[..., WorkspaceClient], url: str) -> None:
    c = clients()
    c.write_bytes("f", b"0")
    c.checkpoint("early")
    for i in range(1, 30):
        c.write_bytes("f", str(i).encode())
    c._run(c._w.compact)  # a state snapshot after the checkpoint
    c.write_bytes("f", b"last")
    again = clients()
    assert [x.name for x in again.checkpoints()] == ["early"]
    assert again.read_checkpoint_bytes("early", "f") == b"0"
    h = hashlib.sha256(b"0").hexdigest()
    assert any(k.endswith(h) for k in blobs(url))


def test_namespace_stamps_versions_and_checkpoints() -> None:
    """Pure: vseq is the seq of the commit that brought the bytes; metadata
    changes keep it; a checkpoint name is taken by the first commit."""
    from agentfs.models import CheckpointOp, Entry, MoveOp, PutOp
    from agentfs.namespace import InodeTable, Namespace

    ns = Namespace(InodeTable(), Entry(kind="d", mode=0o755))

    def at(seq: int, op: Any) -> None:
        ns.seq = seq
        ns.apply(op, 0.0)

    f = Entry(kind="f", mode=0o644, size=1, etag="e1", sha256="s1")
    at(1, PutOp(path="f", entry=f))
    at(2, CheckpointOp(name="c"))
    at(3, PutOp(path="f", entry=f.model_copy(update={"mode": 0o600})))
    assert ns.resolve("f").entry.vseq == 1  # chmod: same bytes
    at(4, CheckpointOp(name="c"))  # a racing second "c" loses
    assert ns.checkpoints == {"c": 2}
    at(5, PutOp(path="f", entry=f.model_copy(update={"etag": "e2"})))
    assert ns.resolve("f").entry.vseq == 5
    at(6, MoveOp(src="f", dst="g", etags={"": "e3"}))
    assert ns.resolve("g").entry.vseq == 6
    assert ns.to_state().checkpoints == {"c": 2}
    at(7, CheckpointOp(name="c", delete=True))
    assert ns.checkpoints == {}
