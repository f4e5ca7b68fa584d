"""Agent state (typed ``user.agentfs.*`` xattrs), the audit log, the state
index, TTL pruning and STATE.md, driven through the library without FUSE
(``WorkspaceClient``, which runs the same ``Workspace`` core as a mount) and
through the ``agentfs`` command.  Stores: memory and a local directory; every
store is consistent (``agentfs check``) at the end of a test.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import agentfs
from agentfs import agentstate
from agentfs.api import WorkspaceClient
from agentfs.check import check_store
from agentfs.cli.state import log_rows, parse_since
from agentfs.journal import Journal
from agentfs.models import Lifecycle
from agentfs.store import open_store

REPO = Path(__file__).resolve().parents[2]
WS = "ws"
P = agentstate.PREFIX


@pytest.fixture(params=["memory", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    u = f"memory://t{uuid.uuid4().hex}" if request.param == "memory" else f"file://{tmp_path}/store"
    yield u
    rep = check_store(open_store(u))
    assert rep.clean, rep.model_dump_json(indent=2)


@pytest.fixture
def clients(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., WorkspaceClient]]:
    monkeypatch.delenv("AGENTFS_AGENT", raising=False)
    opened: list[WorkspaceClient] = []

    def make(agent: str = "alice") -> WorkspaceClient:
        c = agentfs.open_workspace(url, WS, agent=agent)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


@pytest.fixture
def w(clients: Callable[..., WorkspaceClient]) -> WorkspaceClient:
    c = clients()
    c.write_bytes("report.md", b"# report\n")
    return c


def get(w: WorkspaceClient, path: str, short: str) -> str:
    return w.getxattr(path, P + short).decode()


def records(w: WorkspaceClient, **filters) -> list[dict]:
    return log_rows(list(agentstate.read_records(Journal(w.store, WS))), **filters)


def raises_errno(code: int, fn: Callable, *args) -> OSError:
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.errno == code, f"{args}: errno {ei.value.errno} ({ei.value}), expected {code}"
    return ei.value


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    full.pop("AGENTFS_LOG", None)
    return subprocess.run([sys.executable, "-m", "agentfs", *args], cwd=REPO, env=full, capture_output=True,
                          timeout=120)


# ---------------------------------------------------------------- the schema


def test_values_are_stored_in_canonical_form_and_stamped(w: WorkspaceClient) -> None:
    before = time.time()
    w.setxattr("report.md", P + "status", b"draft")
    w.setxattr("report.md", P + "owner", b"research-agent")
    w.setxattr("report.md", P + "task", b"42")
    w.setxattr("report.md", P + "labels", b"q4, finance,q4")
    w.setxattr("report.md", P + "note", "line one\nline two \u2713".encode())
    w.setxattr("report.md", P + "ttl", b"1h30m")
    assert get(w, "report.md", "status") == "draft"
    assert get(w, "report.md", "owner") == "research-agent"
    assert get(w, "report.md", "task") == "42"
    assert json.loads(get(w, "report.md", "labels")) == ["q4", "finance"]  # comma list -> JSON, deduplicated
    assert get(w, "report.md", "note") == "line one\nline two \u2713"
    ttl = json.loads(get(w, "report.md", "ttl"))
    assert ttl["seconds"] == 5400
    assert before + 5400 <= ttl["expires_at"] <= time.time() + 5400
    assert ttl["expires"].endswith("Z")
    assert get(w, "report.md", "updated_by") == "alice"
    stamp = get(w, "report.md", "updated_at")
    assert stamp.endswith("Z") and stamp[:4].isdigit()
    # JSON forms are accepted too
    w.setxattr("report.md", P + "labels", b'["a", "b:c"]')
    w.setxattr("report.md", P + "status", b'"in_progress"')
    assert json.loads(get(w, "report.md", "labels")) == ["a", "b:c"]
    assert get(w, "report.md", "status") == "in_progress"
    row = w.state("report.md")
    assert row is not None and row.status == "in_progress" and row.labels == ["a", "b:c"]
    assert row.owner == "research-agent" and row.task == "42" and row.updated_by == "alice"


def test_stored_ttl_form_is_accepted_as_is(w: WorkspaceClient) -> None:
    """What getfattr shows can be written back (cp -a, rsync -X): the expiry is kept."""
    w.setxattr("report.md", P + "ttl", b"600")
    stored = w.getxattr("report.md", P + "ttl")
    w.write_bytes("copy.md", b"x")
    w.setxattr("copy.md", P + "ttl", stored)
    assert json.loads(w.getxattr("copy.md", P + "ttl")) == json.loads(stored)


INVALID = [
    ("status", b"bogus"),                    # unknown status
    ("status", b"final"),                    # forbidden transition draft -> final
    ("status", b""),                         # empty
    ("status", b"\xff\xfe"),                 # not UTF-8
    ("status", b'"unterminated'),            # bad JSON string
    ("status", b"[1]"),                      # wrong type
    ("status", b"d" * 100),                  # oversize
    ("owner", b"x" * 129),
    ("owner", b"two\nlines"),
    ("task", b""),
    ("labels", b"[bad json"),
    ("labels", b'{"a": 1}'),                 # wrong type
    ("labels", b'["ok", 3]'),
    ("labels", b"has space"),
    ("labels", b",".join(b"l%d" % i for i in range(65))),
    ("labels", b"x" * 5000),
    ("ttl", b"soon"),
    ("ttl", b"-5"),
    ("ttl", b"0"),
    ("ttl", b"1y"),
    ("ttl", b"100000w"),                     # over ten years
    ("ttl", b'{"seconds": "x"}'),
    ("note", b"n" * 4097),
    ("lifecycle", b'{"statuses": ["a"]}'),   # only on the workspace root
    ("bogus", b"x"),                         # unknown user.agentfs.* name
    ("sync", b"1"),
]


@pytest.mark.parametrize(("short", "value"), INVALID, ids=[f"{n}-{i}" for i, (n, _) in enumerate(INVALID)])
def test_invalid_values_are_einval_and_change_nothing(w: WorkspaceClient, short: str, value: bytes) -> None:
    w.setxattr("report.md", P + "status", b"draft")
    seq_before = len(records(w, show_all=True))
    xattrs_before = {n: w.getxattr("report.md", n) for n in w.listxattr("report.md")}
    raises_errno(errno.EINVAL, w.setxattr, "report.md", P + short, value)
    assert {n: w.getxattr("report.md", n) for n in w.listxattr("report.md")} == xattrs_before
    assert len(records(w, show_all=True)) == seq_before


def test_maintained_attributes_are_eperm(w: WorkspaceClient) -> None:
    w.setxattr("report.md", P + "status", b"draft")
    for short in ("updated_by", "updated_at"):
        raises_errno(errno.EPERM, w.setxattr, "report.md", P + short, b"mallory")
        raises_errno(errno.EPERM, w.removexattr, "report.md", P + short)
    assert get(w, "report.md", "updated_by") == "alice"


def test_plain_and_pass_through_names_stay_free_form(w: WorkspaceClient) -> None:
    w.setxattr("report.md", "user.anything", b"\x00\xffbinary")
    w.setxattr("report.md", P + "conflict", b"{not json")
    assert w.getxattr("report.md", "user.anything") == b"\x00\xffbinary"
    names = w.listxattr("report.md")
    assert P + "updated_by" not in names  # pass-through names are not agent state
    w.removexattr("report.md", P + "conflict")
    assert w.state("report.md") is None


def test_registry_lets_a_feature_plug_in_a_handler(w: WorkspaceClient) -> None:
    old = agentstate.ATTRS["lock"]

    def only_x(value: bytes, ctx: object) -> bytes:
        if value != b"x":
            raise agentstate.InvalidState("lock: expected x")
        return value

    agentstate.register(agentstate.AttrSpec("lock", only_x, stamped=False), replace=True)
    try:
        w.setxattr("report.md", P + "lock", b"x")
        raises_errno(errno.EINVAL, w.setxattr, "report.md", P + "lock", b"y")
    finally:
        agentstate.register(old, replace=True)
    with pytest.raises(ValueError):
        agentstate.register(old)


# ---------------------------------------------------------------- lifecycle


def test_default_lifecycle_transitions(w: WorkspaceClient) -> None:
    def go(status: str) -> None:
        w.setxattr("report.md", P + "status", status.encode())
        assert get(w, "report.md", "status") == status

    for s in ("draft", "in_progress", "review", "in_progress", "review", "approved", "final"):
        go(s)
    go("final")  # the same status again is allowed
    for forbidden in ("draft", "review", "approved", "failed"):
        raises_errno(errno.EINVAL, w.setxattr, "report.md", P + "status", forbidden.encode())
    go("archived")
    go("draft")
    go("failed")
    raises_errno(errno.EINVAL, w.setxattr, "report.md", P + "status", b"approved")
    # removing the status starts over (any status may be the first)
    w.removexattr("report.md", P + "status")
    go("approved")


def test_workspace_lifecycle_is_configurable(w: WorkspaceClient, clients: Callable[..., WorkspaceClient]) -> None:
    lc = {"statuses": ["todo", "doing", "done"], "transitions": {"todo": ["doing"], "doing": ["done", "todo"]},
          "initial": ["todo"]}
    w.setxattr("", P + "lifecycle", json.dumps(lc).encode())
    assert Lifecycle.model_validate_json(w.getxattr("", P + "lifecycle")).statuses == ["todo", "doing", "done"]
    raises_errno(errno.EINVAL, w.setxattr, "report.md", P + "status", b"draft")   # not in this lifecycle
    raises_errno(errno.EINVAL, w.setxattr, "report.md", P + "status", b"doing")   # not an initial status
    w.setxattr("report.md", P + "status", b"todo")
    raises_errno(errno.EINVAL, w.setxattr, "report.md", P + "status", b"done")
    w.setxattr("report.md", P + "status", b"doing")
    w.setxattr("report.md", P + "status", b"done")
    raises_errno(errno.EINVAL, w.setxattr, "report.md", P + "status", b"todo")    # done is terminal
    # another client (another mount) applies the same lifecycle: it is in the journal
    other = clients("bob")
    raises_errno(errno.EINVAL, other.setxattr, "report.md", P + "status", b"doing")
    for bad in (b"{", b'{"statuses": []}', b'{"statuses": ["A b"]}',
                b'{"statuses": ["a"], "transitions": {"a": ["zzz"]}}', b'{"statuses": ["a"], "extra": 1}'):
        raises_errno(errno.EINVAL, w.setxattr, "", P + "lifecycle", bad)
    w.removexattr("", P + "lifecycle")  # back to the default
    w.write_bytes("new.md", b"")
    w.setxattr("new.md", P + "status", b"draft")


# ---------------------------------------------------------------- audit log and attribution


def test_every_mutation_is_one_attributed_record(clients: Callable[..., WorkspaceClient]) -> None:
    alice, bob = clients("alice"), clients("bob")
    alice.mkdir("docs")
    alice.write_bytes("docs/a.md", b"hello")
    bob.write_bytes("docs/a.md", b"hello again")
    alice.setxattr("docs/a.md", P + "status", b"draft")
    bob.setxattr("docs/a.md", P + "status", b"review")
    bob.setxattr("docs/a.md", "user.plain", b"v")
    alice.rename("docs/a.md", "docs/b.md")
    alice.remove("docs/b.md")
    alice.rmdir("docs")
    rows = records(alice)
    assert all({"seq", "time", "agent", "pid", "uid", "action", "path"} <= set(r) for r in rows)
    summary = [(r["action"], r["agent"], r["path"]) for r in rows]
    assert ("mkdir", "alice", "docs") in summary
    assert ("create", "alice", "docs/a.md") in summary
    assert ("write", "bob", "docs/a.md") in summary
    assert ("setxattr", "bob", "docs/a.md") in summary
    assert ("rename", "alice", "docs/a.md -> docs/b.md") in summary
    assert ("delete", "alice", "docs/b.md") in summary
    assert ("rmdir", "alice", "docs") in summary
    write = next(r for r in rows if r["action"] == "write")
    assert write["size"] == len(b"hello again") and len(write["sha256"]) == 64
    states = [(r["agent"], r["name"], r["old"], r["new"]) for r in rows if r["action"] == "state"]
    assert states == [("alice", "status", None, "draft"), ("bob", "status", "draft", "review")]
    assert all(r["pid"] == os.getpid() and r["uid"] == os.getuid() for r in rows)
    # filters
    assert {r["agent"] for r in records(alice, agent="bob")} == {"bob"}
    assert [r["action"] for r in records(alice, path="docs/b.md")] == ["rename", "delete"]
    assert records(alice, since=time.time() + 60) == []
    assert not any(r["action"] == "touch-dir" for r in rows)
    assert any(r["action"] == "touch-dir" for r in records(alice, show_all=True))


def test_damaged_record_is_reported_and_reading_goes_on(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/store"
    with agentfs.open_workspace(url, WS, agent="alice") as c:
        c.write_bytes("a", b"1")
        c.setxattr("a", P + "status", b"draft")
    store = open_store(url)
    j = Journal(store, WS)
    seqs = [int(o.key.rsplit("/", 1)[1][:20]) for o in store.list(f"{j.prefix}log/")]
    damaged_seq = seqs[-1]
    store.put(j.log_key(damaged_seq), b'{"v": 1, "seq": "garbage"')
    store.put(j.log_key(damaged_seq + 1), store.get(j.log_key(seqs[-2])).replace(
        b'"seq":%d' % seqs[-2], b'"seq":%d' % (damaged_seq + 1)))
    items = list(agentstate.read_records(j))
    assert [type(i).__name__ for i in items[-2:]] == ["Damaged", "Commit"]
    r = cli("log", f"{url}/{WS}", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert any(x["action"] == "damaged" and x["seq"] == damaged_seq for x in rows)
    assert rows[-1]["seq"] == damaged_seq + 1  # the records after it are still shown
    assert b"damaged journal record" in r.stderr and b"Traceback" not in r.stderr
    r = cli("state", "ls", f"{url}/{WS}")
    assert r.returncode == 0 and b"damaged journal record" in r.stderr and b"Traceback" not in r.stderr


def test_since_parsing() -> None:
    now = 1_800_000_000.0
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2h", now) == now - 7200
    assert parse_since("2026-11-24T06:00:00Z", now) == parse_since("2026-11-24T06:00", now)
    with pytest.raises(OSError) as ei:
        parse_since("yesterday-ish", now)
    assert ei.value.errno == errno.EINVAL


# ---------------------------------------------------------------- the index and queries


def test_state_ls_answers_from_the_journal(w: WorkspaceClient, url: str) -> None:
    w.mkdir("data")
    for name, status, owner, labels in (("a.md", "review", "alice", "q4"), ("b.md", "draft", "bob", "q4,x"),
                                        ("data/c.csv", "review", "bob", "x")):
        w.write_bytes(name, b"")
        w.set_state(name, status=status, owner=owner, labels=labels)
    w.set_state("data", owner="bob")
    store = open_store(url)
    ns, damaged, _ = agentstate.replay(store, WS)
    assert damaged == []
    paths = lambda **f: [r.path for r in agentstate.state_rows(ns, **f)]  # noqa: E731
    assert paths() == ["a.md", "b.md", "data", "data/c.csv"]
    assert paths(status="review") == ["a.md", "data/c.csv"]
    assert paths(owner="bob") == ["b.md", "data", "data/c.csv"]
    assert paths(label="q4") == ["a.md", "b.md"]
    assert paths(status="review", owner="bob", label="x") == ["data/c.csv"]
    assert paths(under="data") == ["data", "data/c.csv"]
    assert w.state_ls(status="draft")[0].path == "b.md"
    if url.startswith("file://"):  # the CLI, in a separate process
        r = cli("state", "ls", f"{url}/{WS}", "--status", "review", "--json")
        assert r.returncode == 0, r.stderr
        assert [x["path"] for x in json.loads(r.stdout)] == ["a.md", "data/c.csv"]
        r = cli("state", "ls", f"{url}/{WS}", "--owner", "bob")
        assert r.returncode == 0 and b"data/c.csv" in r.stdout and b"a.md" not in r.stdout


def test_cli_state_set_get_lifecycle_and_exit_codes(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/store"
    with agentfs.open_workspace(url, WS) as c:
        c.write_bytes("r.md", b"x")
    env = {"AGENTFS_AGENT": "cli-agent"}
    r = cli("state", "set", f"{url}/{WS}/r.md", "status=draft", "owner=me", "labels=a,b", "--json", env=env)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["status"] == "draft" and row["labels"] == ["a", "b"] and row["updated_by"] == "cli-agent"
    r = cli("state", "set", f"{url}/{WS}/r.md", "status=final", env=env)
    assert r.returncode == 64
    assert r.stderr.decode().strip().splitlines() == [
        "agentfs: user.agentfs.status: transition draft -> final is not allowed "
        "(allowed: in_progress, review, failed, archived): r.md"]
    assert cli("state", "set", f"{url}/{WS}/r.md", "updated_by=x").returncode == 64
    assert cli("state", "set", f"{url}/{WS}/r.md", "nonsense").returncode == 64
    assert cli("state", "get", f"{url}/{WS}/missing").returncode == 2
    r = cli("state", "set", f"{url}/{WS}/r.md", "owner=", env=env)  # FIELD= removes
    assert r.returncode == 0, r.stderr
    r = cli("state", "get", f"{url}/{WS}/r.md", "--json")
    assert json.loads(r.stdout)["owner"] is None
    r = cli("state", "lifecycle", f"{url}/{WS}", "--set", '{"statuses": ["draft", "done"]}', env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(cli("state", "lifecycle", f"{url}/{WS}").stdout)["statuses"] == ["draft", "done"]
    assert cli("state", "set", f"{url}/{WS}/r.md", "status=done", env=env).returncode == 0
    assert cli("state", "lifecycle", f"{url}/{WS}", "--set", "{bad").returncode == 64
    assert cli("state", "lifecycle", f"{url}/{WS}", "--reset").returncode == 0
    r = cli("log", f"{url}/{WS}/r.md", "--action", "state", "--agent", "cli-agent", "--json")
    changes = [(x["name"], x["old"], x["new"]) for x in json.loads(r.stdout)]
    assert changes == [("status", None, "draft"), ("owner", None, "me"), ("labels", None, '["a", "b"]'),
                       ("owner", "me", None), ("status", "draft", "done")]
    assert cli("log", f"{url}/nope").returncode == 2
    assert cli("log", f"{url}/{WS}", "--since", "whenever").returncode == 64
    assert check_store(open_store(url)).clean


# ---------------------------------------------------------------- TTL


def _expired(seconds_ago: float = 5) -> bytes:
    return json.dumps({"seconds": 1, "expires_at": time.time() - seconds_ago}).encode()


def test_prune_removes_expired_files_and_trees(w: WorkspaceClient, url: str) -> None:
    w.mkdir("tmp")
    w.mkdir("tmp/sub")
    w.write_bytes("tmp/sub/x", b"x")
    w.write_bytes("scratch", b"s")
    w.write_bytes("keep", b"k")
    w.setxattr("tmp", P + "ttl", _expired())
    w.setxattr("scratch", P + "ttl", _expired())
    w.setxattr("keep", P + "ttl", b"1h")
    assert sorted(w.prune(dry_run=True)) == ["scratch", "tmp"]
    assert w.exists("scratch")
    assert sorted(w.prune()) == ["scratch", "tmp"]
    assert not w.exists("scratch") and not w.exists("tmp") and w.exists("keep")
    store = open_store(url)
    assert not any(o.key.startswith(f"{WS}/tmp/") or o.key == f"{WS}/scratch" for o in store.list(f"{WS}/"))
    pruned = [(r["action"], r["path"]) for r in records(w, agent=agentstate.TTL_AGENT)]
    assert ("delete", "scratch") in pruned and ("delete", "tmp/sub/x") in pruned and ("rmdir", "tmp") in pruned
    assert w.prune() == []


def test_prune_spares_open_files_and_checkpoints(w: WorkspaceClient) -> None:
    w.write_bytes("open.txt", b"data")
    w.setxattr("open.txt", P + "ttl", _expired())
    w.mkdir(".snapshots")
    w.write_bytes(".snapshots/old", b"frozen")
    w.setxattr(".snapshots/old", P + "ttl", _expired())
    f = w.open("open.txt", "rb")
    try:
        assert w.prune() == []
        assert f.read() == b"data"
    finally:
        f.close()
    assert w.prune() == ["open.txt"]
    assert w.exists(".snapshots/old")


def test_cli_prune(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/store"
    with agentfs.open_workspace(url, WS) as c:
        c.write_bytes("old", b"x")
        c.setxattr("old", P + "ttl", _expired())
    r = cli("prune", f"{url}/{WS}", "--dry-run")
    assert r.returncode == 0 and r.stdout.decode().split() == ["would", "remove", "old"]
    r = cli("prune", f"{url}/{WS}", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == ["old"]
    with agentfs.open_workspace(url, WS) as c:
        assert not c.exists("old")
    assert "expired (ttl)" in open_store(url).get(f".agentfs/{WS}/STATE.md").decode()


# ---------------------------------------------------------------- STATE.md


def test_state_md_summarises_counts_and_recent_changes(clients: Callable[..., WorkspaceClient], url: str) -> None:
    alice, bob = clients("alice"), clients("bob")
    for n in ("a.md", "b.md", "c.md"):
        alice.write_bytes(n, b"")
    alice.set_state("a.md", status="draft")
    alice.set_state("b.md", status="draft")
    bob.set_state("c.md", status="review", owner="bob")
    md = open_store(url).get(f".agentfs/{WS}/STATE.md").decode()
    assert md.startswith(f"# State of workspace `{WS}`")
    assert "| draft | 2 |" in md and "| review | 1 |" in md
    assert "| `c.md` | review | bob |" in md
    recent = md.split("## Recent changes", 1)[1]
    assert "| bob | `c.md` | status: (none) -> review |" in recent
    assert "| alice | `a.md` | status: (none) -> draft |" in recent
    # newest first
    assert recent.index("c.md") < recent.index("a.md")


def test_render_state_md_without_state() -> None:
    md = agentstate.render_state_md("w", [], [], now=0)
    assert "No file has agent state yet." in md and "1970-01-01T00:00:00Z" in md


def test_cli_help() -> None:
    for args in (("state", "--help"), ("state", "ls", "--help"), ("state", "set", "--help"),
                 ("state", "get", "--help"), ("state", "lifecycle", "--help"), ("log", "--help"),
                 ("prune", "--help")):
        r = cli(*args)
        assert r.returncode == 0 and b"Usage" in r.stdout and not r.stderr, (args, r.stderr)
    top = cli("--help").stdout.decode()
    assert "state" in top and "prune" in top and "log" in top
