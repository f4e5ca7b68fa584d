"""The pure namespace tree (``agentfs.namespace``): no I/O, no store, no FUSE.

Applying journal ops is total and deterministic: every mount that applies the
same log reaches the same tree.  These tests build trees directly from
``PutOp``/``DelOp``/``MoveOp`` and check the tree, the inode numbers, the
tombstones and the state snapshot round trip.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentfs.models import DelOp, Entry, MoveOp, PutOp, State
from agentfs.namespace import TOMBSTONE_TTL, InodeTable, Namespace, Node

T0 = 1_700_000_000.0  # a fixed "when" for ops (journal record time)
NOW = T0 + 10.0  # "now" for to_state (tombstones younger than the TTL are kept)


def root_entry() -> Entry:
    return Entry(kind="d", mode=0o755, mtime_ns=1, ctime_ns=1)


def new_ns() -> Namespace:
    return Namespace(InodeTable(), root_entry())


def f(etag: str | None = "e1", size: int = 1, **kw) -> Entry:
    return Entry(kind="f", mode=0o644, size=size, etag=etag, mtime_ns=5, ctime_ns=5, **kw)


def d(mode: int = 0o755, **kw) -> Entry:
    return Entry(kind="d", mode=mode, mtime_ns=7, ctime_ns=7, **kw)


def sym(target: str = "x") -> Entry:
    return Entry(kind="l", mode=0o777, target=target, mtime_ns=9, ctime_ns=9)


def put(ns: Namespace, path: str, entry: Entry, when: float = T0) -> None:
    ns.apply(PutOp(path=path, entry=entry), when)


def paths(ns: Namespace) -> set[str]:
    return {p for p, _ in ns.walk()}


def node(ns: Namespace, path: str) -> Node:
    n = ns.resolve(path)
    assert n is not None, path
    return n


# ------------------------------------------------------------------ put


def test_put_creates_implicit_parents() -> None:
    ns = new_ns()
    put(ns, "a/b/c.txt", f())
    assert paths(ns) == {"a", "a/b", "a/b/c.txt"}
    assert node(ns, "a").is_dir and node(ns, "a/b").is_dir
    assert node(ns, "a/b/c.txt").entry == f()
    assert ns.path_of(node(ns, "a/b/c.txt")) == "a/b/c.txt"
    # every node is in the inode table under its number
    for _, n in ns.walk():
        assert ns.table.get(n.ino) is n


def test_put_replaces_in_place_and_keeps_inode() -> None:
    ns = new_ns()
    put(ns, "a.txt", f("e1", 1))
    ino = node(ns, "a.txt").ino
    ch = ns.apply(PutOp(path="a.txt", entry=f("e2", 2)), T0)
    n = node(ns, "a.txt")
    assert n.ino == ino
    assert n.entry.etag == "e2"
    assert ino in ch.data  # bytes changed: the kernel must drop its page cache


def test_put_of_other_kind_replaces_node() -> None:
    ns = new_ns()
    put(ns, "x", f())
    old = node(ns, "x")
    put(ns, "x/inner", f())  # a file is in the way of a directory: it is replaced
    assert node(ns, "x").is_dir
    assert paths(ns) == {"x", "x/inner"}
    assert not old.attached
    assert ns.table.get(old.ino) is None


def test_put_keeps_children_of_replaced_dir_entry() -> None:
    ns = new_ns()
    put(ns, "dir/f", f())
    put(ns, "dir", d(xattrs={"user.k": "dg=="}))
    assert paths(ns) == {"dir", "dir/f"}
    assert node(ns, "dir").entry.xattrs == {"user.k": "dg=="}


def test_put_root_entry() -> None:
    ns = new_ns()
    e = Entry(kind="d", mode=0o700, mtime_ns=3, ctime_ns=3)
    put(ns, "", e)
    assert ns.root.entry == e


# ------------------------------------------------------------------ del


def test_del_removes_subtree() -> None:
    ns = new_ns()
    put(ns, "a/b/c.txt", f())
    put(ns, "a/d.txt", f())
    put(ns, "z.txt", f())
    ns.apply(DelOp(path="a"), T0)
    assert paths(ns) == {"z.txt"}


def test_del_of_missing_path_is_a_noop() -> None:
    ns = new_ns()
    put(ns, "a/b.txt", f())
    before = ns.to_state(NOW)
    for p in ("nope", "a/nope", "a/b.txt/under-a-file", "x/y/z"):
        ch = ns.apply(DelOp(path=p), T0)
        assert not ch.entries and not ch.inodes
    assert ns.to_state(NOW) == before


def test_del_of_root_is_ignored() -> None:
    ns = new_ns()
    put(ns, "a", f())
    ns.apply(DelOp(path=""), T0)
    assert paths(ns) == {"a"}


# ------------------------------------------------------------------ mv


def test_mv_file_keeps_inode() -> None:
    ns = new_ns()
    put(ns, "a/old.txt", f())
    ino = node(ns, "a/old.txt").ino
    ns.apply(MoveOp(src="a/old.txt", dst="b/new.txt", etags={"": "e9"}), T0)
    assert ns.resolve("a/old.txt") is None
    n = node(ns, "b/new.txt")
    assert n.ino == ino
    assert n.name == "new.txt"
    assert n.entry.etag == "e9"  # the copy at the new natural key
    assert paths(ns) == {"a", "b", "b/new.txt"}


def test_mv_dir_subtree_keeps_inodes_and_paths() -> None:
    ns = new_ns()
    put(ns, "src/a.txt", f("ea"))
    put(ns, "src/sub/b.txt", f("eb"))
    put(ns, "src/sub/link", sym("a.txt"))
    put(ns, "src/empty", d())
    inos = {p: n.ino for p, n in ns.walk()}
    ns.apply(MoveOp(src="src", dst="dst/moved", etags={"a.txt": "ea2", "sub/b.txt": "eb2"}), T0)
    assert ns.resolve("src") is None
    assert paths(ns) == {"dst", "dst/moved", "dst/moved/a.txt", "dst/moved/sub",
                         "dst/moved/sub/b.txt", "dst/moved/sub/link", "dst/moved/empty"}
    for old, ino in inos.items():
        new = "dst/moved" + old[len("src"):]
        assert node(ns, new).ino == ino, new
        assert ns.path_of(node(ns, new)) == new
    assert node(ns, "dst/moved/a.txt").entry.etag == "ea2"
    assert node(ns, "dst/moved/sub/b.txt").entry.etag == "eb2"
    assert node(ns, "dst/moved/sub/link").entry.target == "a.txt"


def test_mv_over_existing_file_replaces_it() -> None:
    ns = new_ns()
    put(ns, "a.txt", f("ea"))
    put(ns, "b.txt", f("eb"))
    a, b = node(ns, "a.txt"), node(ns, "b.txt")
    ns.apply(MoveOp(src="a.txt", dst="b.txt", etags={"": "ea2"}), T0)
    assert paths(ns) == {"b.txt"}
    assert node(ns, "b.txt") is a
    assert a.entry.etag == "ea2"
    assert not b.attached
    assert ns.table.get(b.ino) is None  # nobody holds it: dropped
    assert ns.table.get(a.ino) is a


def test_mv_into_itself_is_ignored() -> None:
    ns = new_ns()
    put(ns, "a/b/c.txt", f())
    before = ns.to_state(NOW)
    inos = {p: n.ino for p, n in ns.walk()}
    for dst in ("a/b/x", "a/inside", "a/b/c.txt/deeper"):
        ns.apply(MoveOp(src="a", dst=dst), T0)
    ns.apply(MoveOp(src="a", dst="a"), T0)
    assert ns.to_state(NOW) == before
    assert {p: n.ino for p, n in ns.walk()} == inos


def test_mv_of_missing_src_is_a_noop() -> None:
    ns = new_ns()
    put(ns, "keep.txt", f())
    before = ns.to_state(NOW)
    ns.apply(MoveOp(src="ghost", dst="keep.txt"), T0)
    ns.apply(MoveOp(src="ghost/x", dst="new/place"), T0)
    assert ns.to_state(NOW) == before


def test_mv_sibling_with_common_prefix_is_not_into_itself() -> None:
    ns = new_ns()
    put(ns, "a/f", f())
    ns.apply(MoveOp(src="a", dst="ab"), T0)
    assert paths(ns) == {"ab", "ab/f"}


# ------------------------------------------------------------------ tombstones


def test_tombstone_on_del_and_cleared_on_put() -> None:
    ns = new_ns()
    put(ns, "a.txt", f())
    put(ns, "dir/x.txt", f())
    put(ns, "dir/never-uploaded", f(etag=None))
    ns.apply(DelOp(path="a.txt"), T0 + 1)
    assert ns.tombstones == {"a.txt": T0 + 1}
    ns.apply(DelOp(path="dir"), T0 + 2)
    # only keys that held bytes (files with an etag) are tombstoned
    assert ns.tombstones == {"a.txt": T0 + 1, "dir/x.txt": T0 + 2}
    put(ns, "a.txt", f("new"))
    assert ns.tombstones == {"dir/x.txt": T0 + 2}


def test_tombstone_on_mv_of_old_keys() -> None:
    ns = new_ns()
    put(ns, "a.txt", f())
    put(ns, "dir/one", f())
    put(ns, "dir/sub/two", f())
    put(ns, "dir/link", sym())
    ns.apply(MoveOp(src="a.txt", dst="b.txt", etags={"": "e2"}), T0 + 1)
    assert ns.tombstones == {"a.txt": T0 + 1}
    ns.apply(MoveOp(src="dir", dst="d2", etags={"one": "x", "sub/two": "y"}), T0 + 2)
    assert ns.tombstones == {"a.txt": T0 + 1, "dir/one": T0 + 2, "dir/sub/two": T0 + 2}
    # moving back onto a tombstoned key clears it (the key holds live bytes again)
    ns.apply(MoveOp(src="b.txt", dst="a.txt", etags={"": "e3"}), T0 + 3)
    assert "a.txt" not in ns.tombstones
    assert ns.tombstones["b.txt"] == T0 + 3


def test_mv_of_symlink_over_file_tombstones_the_replaced_key() -> None:
    """The replaced file's object at ``dst`` is garbage (nothing was copied over
    it): it must be tombstoned, so a crash before its delete leaves a leftover
    that the scan removes, not an "external write"."""
    ns = new_ns()
    put(ns, "link", sym("target"))
    put(ns, "file.txt", f("ef"))
    ns.apply(MoveOp(src="link", dst="file.txt"), T0 + 1)
    assert node(ns, "file.txt").entry.kind == "l"
    assert ns.tombstones.get("file.txt") == T0 + 1


def test_to_state_drops_expired_tombstones() -> None:
    ns = new_ns()
    put(ns, "old", f())
    put(ns, "new", f())
    ns.apply(DelOp(path="old"), T0)
    ns.apply(DelOp(path="new"), T0 + TOMBSTONE_TTL)
    st_ = ns.to_state(now=T0 + TOMBSTONE_TTL + 5)
    assert st_.tombstones == {"new": T0 + TOMBSTONE_TTL}


# ------------------------------------------------------------------ state snapshots


def build_sample() -> Namespace:
    ns = new_ns()
    ns.seq = 42
    put(ns, "a/b/c.txt", f("c", 3, xattrs={"user.x": "AAE="}))
    put(ns, "a/empty", d())
    put(ns, "a/link", sym("b/c.txt"))
    put(ns, "top.bin", f("t", 10))
    put(ns, "gone.txt", f("g"))
    ns.apply(DelOp(path="gone.txt"), T0 + 1)
    ns.apply(MoveOp(src="top.bin", dst="a/top.bin", etags={"": "t2"}), T0 + 2)
    return ns


def test_to_state_load_state_round_trip() -> None:
    ns = build_sample()
    state = ns.to_state(NOW)
    assert state.seq == 42
    assert set(state.entries) == {"", "a", "a/b", "a/b/c.txt", "a/empty", "a/link", "a/top.bin"}
    assert state.tombstones == {"gone.txt": T0 + 1, "top.bin": T0 + 2}
    # through JSON, as it is stored
    again = State.model_validate_json(state.model_dump_json())
    ns2 = new_ns()
    ns2.load_state(again)
    s2 = ns2.to_state(NOW)
    assert (s2.entries, s2.tombstones, s2.seq) == (state.entries, state.tombstones, state.seq)


def test_pending_nodes_excluded_from_state() -> None:
    ns = build_sample()
    before = ns.to_state(NOW)
    parent = node(ns, "a")
    p = ns.add_pending(parent, "draft.txt", f(etag=None, size=0))
    assert p.pending and ns.resolve("a/draft.txt") is p
    assert ns.to_state(NOW) == before
    # once committed (a put at its path) it is part of the state, same inode
    put(ns, "a/draft.txt", f("d1"))
    assert node(ns, "a/draft.txt") is p and not p.pending
    assert "a/draft.txt" in ns.to_state(NOW).entries


def test_detach_pending_node() -> None:
    ns = new_ns()
    p = ns.add_pending(ns.root, "tmp", f(etag=None))
    ns.detach(p)
    assert ns.resolve("tmp") is None
    assert ns.table.get(p.ino) is None


# ------------------------------------------------------------------ inode table


def test_detached_node_with_lookups_stays_until_forgotten() -> None:
    ns = new_ns()
    put(ns, "dir/f.txt", f())
    put(ns, "dir/g.txt", f())
    held, free = node(ns, "dir/f.txt"), node(ns, "dir/g.txt")
    dir_node = node(ns, "dir")
    held.lookups = 2
    ns.apply(DelOp(path="dir"), T0)
    assert ns.resolve("dir") is None
    assert not held.attached
    assert ns.table.get(held.ino) is held  # the kernel still refers to it
    assert ns.table.get(free.ino) is None
    assert ns.table.get(dir_node.ino) is None
    held.lookups -= 1
    ns.table.maybe_drop(held)
    assert ns.table.get(held.ino) is held
    held.lookups -= 1
    ns.table.maybe_drop(held)
    assert ns.table.get(held.ino) is None


def test_open_node_stays_until_closed() -> None:
    ns = new_ns()
    put(ns, "f", f())
    n = node(ns, "f")
    n.opens = 1
    ns.apply(DelOp(path="f"), T0)
    assert ns.table.get(n.ino) is n
    n.opens = 0
    ns.table.maybe_drop(n)
    assert ns.table.get(n.ino) is None


def test_attached_node_is_never_dropped() -> None:
    ns = new_ns()
    put(ns, "f", f())
    n = node(ns, "f")
    n.lookups = 0
    ns.table.maybe_drop(n)
    assert ns.table.get(n.ino) is n


def test_replaced_node_with_lookups_stays_detached() -> None:
    ns = new_ns()
    put(ns, "a", f("ea"))
    put(ns, "b", f("eb"))
    b = node(ns, "b")
    b.lookups = 1
    ns.apply(MoveOp(src="a", dst="b", etags={"": "ea2"}), T0)
    assert ns.table.get(b.ino) is b and not b.attached
    assert ns.path_of(b) is None


def test_inode_numbers_are_never_reused() -> None:
    ns = new_ns()
    seen = set()
    for i in range(20):
        put(ns, f"f{i}", f())
        n = node(ns, f"f{i}")
        assert n.ino not in seen
        seen.add(n.ino)
        ns.apply(DelOp(path=f"f{i}"), T0)


def test_two_namespaces_share_one_table_without_clashes() -> None:
    table = InodeTable()
    a, b = Namespace(table, root_entry()), Namespace(table, root_entry())
    put(a, "x/y", f())
    put(b, "x/y", f())
    inos_a = {n.ino for _, n in a.walk()} | {a.root.ino}
    inos_b = {n.ino for _, n in b.walk()} | {b.root.ino}
    assert not inos_a & inos_b


# ------------------------------------------------------------------ properties

NAMES = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)
ENTRIES = st.one_of(
    st.builds(lambda e, s: f(e, s), st.sampled_from(["e1", "e2", "e3", None]), st.integers(0, 5)),
    st.builds(lambda m: d(mode=m), st.sampled_from([0o755, 0o700])),
    st.builds(sym, st.sampled_from(["a", "../b"])),
)
ETAGS = st.dictionaries(st.sampled_from(["", "a", "b/c"]), st.sampled_from(["m1", "m2"]), max_size=2)
OPS = st.one_of(
    st.builds(lambda p, e: PutOp(path=p, entry=e), PATHS, ENTRIES),
    st.builds(lambda p: DelOp(path=p), PATHS),
    st.builds(lambda s, t, e: MoveOp(src=s, dst=t, etags=e), PATHS, PATHS, ETAGS),
)


def run_ops(ops: list) -> Namespace:
    ns = new_ns()
    for i, op in enumerate(ops):
        ns.apply(op, T0 + i)
        ns.seq = i + 1
    return ns


def check_tree_invariants(ns: Namespace) -> None:
    for p, n in ns.walk():
        assert ns.resolve(p) is n
        assert ns.path_of(n) == p
        assert ns.table.get(n.ino) is n
        assert (n.children is not None) == n.is_dir
    # no unreachable node lingers in the table (nobody holds lookups here)
    live = {n.ino for _, n in ns.walk()} | {ns.root.ino}
    assert set(ns.table.nodes) == live


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=25))
def test_apply_is_deterministic(ops: list) -> None:
    """Two fresh namespaces applying the same log reach the same state."""
    a = run_ops(ops)
    b = run_ops(ops)
    now = T0 + len(ops) + 1
    assert a.to_state(now) == b.to_state(now)
    check_tree_invariants(a)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=25))
def test_state_round_trip_is_a_fixed_point(ops: list) -> None:
    ns = run_ops(ops)
    now = T0 + len(ops) + 1
    s1 = ns.to_state(now)
    ns2 = new_ns()
    ns2.load_state(State.model_validate_json(s1.model_dump_json()))
    s2 = ns2.to_state(now)
    assert s2 == s1
    ns3 = new_ns()
    ns3.load_state(s2)
    assert ns3.to_state(now) == s2
    check_tree_invariants(ns2)


def test_mv_onto_own_ancestor_is_a_no_op() -> None:
    """Found by hypothesis: moving a/c onto a (its parent) must not corrupt the tree."""
    ns = new_ns()
    put(ns, "a/c", d())
    c = node(ns, "a/c")
    ns.apply(MoveOp(src="a/c", dst="a"), T0)
    assert paths(ns) == {"a", "a/c"}
    assert ns.table.get(c.ino) is c
