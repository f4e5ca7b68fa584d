"""LangGraph checkpoints in a workspace (agentfs.langgraph.AgentFSSaver).

A real LangGraph graph (tests/helpers/lg_graph.py: three deterministic nodes that write
files) runs with the saver: interrupted and resumed from a fresh saver, killed
with SIGKILL and resumed, listed, and time-travelled with ``files=True`` (the
rewound node sees the files it had then).  LangGraph's own conformance suite
runs against the saver on the in-process store (and, with
``AGENTFS_LANGGRAPH_CONFORMANCE=1``, on a local store and on moto S3).  The
local store of each test must check clean afterwards (the ``url`` fixture).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.types import Command

from agentfs.agentstate import read_records
from agentfs.errors import (
    AlreadyExists,
    CheckpointConflict,
    CorruptRecord,
    InvalidArgument,
    NotFound,
)
from agentfs.journal import Journal
from agentfs.langgraph import AgentFSSaver
from agentfs.langgraph.records import files_checkpoint_name, files_checkpoint_prefix
from agentfs.models import Commit
from agentfs.store import open_store
from tests.helpers.api import checked_clean
from tests.helpers.lg_graph import build

ROOT = Path(__file__).resolve().parents[2]
Saver = Callable[..., AgentFSSaver]


@pytest.fixture(params=["file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A local directory store (the S3 tests ask for ``s3_url``); checked clean afterwards."""
    yield from checked_clean(f"file://{tmp_path}/store")


@pytest.fixture
def savers(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Saver]:
    """Factory of savers over workspace ``ws`` of ``url`` (each its own client, as
    another process or host would have); all closed at teardown."""
    monkeypatch.delenv("AGENTFS_AGENT", raising=False)
    opened: list[AgentFSSaver] = []

    def make(u: str = url, **kw: Any) -> AgentFSSaver:
        s = AgentFSSaver.open(u, "ws", agent=kw.pop("agent", "agent-1"), **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def cfg(thread: str, cid: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread}
    if cid:
        conf.update(checkpoint_ns="", checkpoint_id=cid)
    return {"configurable": conf}


def files_at(saver: AgentFSSaver, config: dict[str, Any]) -> list[str]:
    """The files under out/ in the agentfs checkpoint of a LangGraph checkpoint."""
    name = saver.files_checkpoint(config)
    assert name is not None
    return sorted(p for p in saver.client.state_of(name).entries if p.startswith("out/"))


def expected(step: int) -> list[str]:
    """Files the graph has written once step ``step`` is done (node k runs at step k)."""
    return [f"out/{n}.txt" for n in "abc"[: max(step, 0)]]


# -- the graph: sync durability, time travel with files ----------------------------------


def test_graph_checkpoints_list_and_time_travel_with_files(savers: Saver) -> None:
    saver = savers(files=True)
    c = saver.client
    graph = build(saver, c)
    assert graph.invoke({"steps": []}, cfg("t1"), durability="sync")["steps"] == ["a", "b", "c"]
    history = list(saver.list(cfg("t1")))
    assert [t.metadata["step"] for t in history] == [3, 2, 1, 0, -1]
    assert [t.metadata["source"] for t in history][-1] == "input"
    for t in history:  # sync: each snapshot holds exactly the files of its step
        assert files_at(saver, t.config) == expected(t.metadata["step"]), t.metadata
        name = saver.files_checkpoint(t.config)
        note = next(cp.note for cp in c.checkpoints() if cp.name == name)
        assert t.checkpoint["id"] in note  # the agentfs checkpoint names the LangGraph one
    assert c.read_bytes("out/c.txt") == b"c saw a.txt,b.txt"
    assert next(iter(saver.list(cfg("t1"), filter={"step": 1}, limit=5))).checkpoint["id"] == history[2].checkpoint["id"]
    assert [t.metadata["step"] for t in saver.list(cfg("t1"), before=history[1].config, limit=2)] == [1, 0]

    after_a = history[2].config  # step 1: only a.txt existed
    undo = saver.restore_files(after_a)
    assert c.listdir("out") == ["a.txt"]
    assert len(list(saver.list(cfg("t1")))) == 5  # the thread's history is kept
    out = graph.invoke(None, after_a, durability="sync")  # LangGraph time travel from step 1
    assert out["steps"] == ["a", "b", "c"]
    assert c.read_bytes("out/b.txt") == b"b saw a.txt"  # the rewound node saw the files of step 1
    assert c.read_bytes("out/c.txt") == b"c saw a.txt,b.txt"
    chain, tup = [], saver.get_tuple(cfg("t1"))
    while tup is not None:  # the new branch grows from the step-1 checkpoint
        chain.append(tup.checkpoint["id"])
        tup = saver.get_tuple(tup.parent_config) if tup.parent_config else None
    assert chain[3] == after_a["configurable"]["checkpoint_id"] and len(chain) == 6
    assert len(list(saver.list(cfg("t1")))) == 8  # fork + 2 new steps beside the old branch
    c.restore(undo)  # the restore is undoable: the files as they were before it
    assert sorted(c.listdir("out")) == ["a.txt", "b.txt", "c.txt"]


def test_agentfs_restore_rewinds_files_and_thread_together(savers: Saver) -> None:
    """Restoring the agentfs checkpoint (as `agentfs checkpoint restore` does)
    brings back the files and makes that LangGraph checkpoint the thread's latest."""
    saver = savers(files=True)
    graph = build(saver, saver.client)
    graph.invoke({"steps": []}, cfg("t1"), durability="sync")
    step2 = next(t for t in saver.list(cfg("t1")) if t.metadata["step"] == 2)
    saver.client.restore(saver.files_checkpoint(step2.config) or "")
    latest = saver.get_tuple(cfg("t1"))
    assert latest is not None and latest.checkpoint["id"] == step2.checkpoint["id"]
    assert sorted(saver.client.listdir("out")) == ["a.txt", "b.txt"]
    assert graph.invoke(None, cfg("t1"), durability="sync")["steps"] == ["a", "b", "c"]  # resumes at c

    # delete_thread drops the thread and the agentfs checkpoints cut for it, no other's
    keep = savers(files=True)
    cp = empty_checkpoint()
    keep.put(cfg("kept"), cp, {"source": "input", "step": -1}, {})
    saver.delete_thread("t1")
    left = [c.name for c in saver.client.checkpoints()]
    assert files_checkpoint_name("kept", "", cp["id"]) in left
    assert not [n for n in left if n.startswith(files_checkpoint_prefix("t1"))]
    assert [n for n in left if n.startswith("pre-restore")]  # the undo point of the restore stays
    assert saver.get_tuple(cfg("t1")) is None and keep.get_tuple(cfg("kept")) is not None


def test_interrupt_resume_from_another_saver_and_summary(savers: Saver) -> None:
    first = savers()
    r = build(first, first.client, interrupt_at="b").invoke({"steps": []}, cfg("t2"), durability="sync")
    assert r["__interrupt__"][0].value == "approve b?"
    tup = first.get_tuple(cfg("t2"))
    assert tup is not None and tup.metadata["step"] == 1
    md = first.client.read_bytes(f".agent/threads/t2/main/{tup.checkpoint['id']}.md").decode()
    assert f"# LangGraph checkpoint `{tup.checkpoint['id']}`" in md
    assert "- step: 1, source: loop" in md
    assert "- nodes that ran: `a`" in md
    assert "`steps`: `['a']`" in md
    assert "`__interrupt__`" in md and "approve b?" in md  # the pending interrupt
    assert "by `agent-1`" in md
    first.close()

    second = savers(agent="agent-2")  # another process resumes from the workspace
    out = build(second, second.client, interrupt_at="b").invoke(Command(resume="yes"), cfg("t2"),
                                                               durability="sync")
    assert out["steps"] == ["a", "b", "c"]
    assert second.client.read_bytes("out/b.txt") == b"b saw a.txt yes"
    steps = [t.metadata["step"] for t in second.list(cfg("t2"))]
    assert steps == [3, 2, 1, 0, -1]


def test_sigkill_mid_run_then_resume(savers: Saver, url: str) -> None:
    """A process killed inside node c loses nothing: the thread resumes at c."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "tests.helpers.lg_graph", url, "t3", "c"], cwd=ROOT, env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    saver = savers(files=True)
    tup = saver.get_tuple(cfg("t3"))
    assert tup is not None and tup.metadata["step"] == 2
    assert files_at(saver, tup.config) == expected(2)
    assert sorted(saver.client.listdir("out")) == ["a.txt", "b.txt"]
    out = build(saver, saver.client).invoke(None, cfg("t3"), durability="sync")
    assert out["steps"] == ["a", "b", "c"]
    assert saver.client.read_bytes("out/c.txt") == b"c saw a.txt,b.txt"


# -- what files=True holds under the other durability modes ----------------------------------


def test_files_under_async_and_exit_durability(savers: Saver) -> None:
    saver = savers(files=True)
    graph = build(saver, saver.client)
    graph.invoke({"steps": []}, cfg("async"), durability="async")
    hist = list(saver.list(cfg("async")))
    assert [t.metadata["step"] for t in hist] == [3, 2, 1, 0, -1]
    for t in hist:  # async: never fewer files than the step's (later steps' may be in)
        got = files_at(saver, t.config)
        assert set(expected(t.metadata["step"])) <= set(got) <= set(expected(3)), (t.metadata, got)

    saver.client.rmtree("out")
    graph.invoke({"steps": []}, cfg("exit"), durability="exit")
    hist = list(saver.list(cfg("exit")))
    assert [t.metadata["step"] for t in hist] == [3]  # exit: only the last checkpoint is written
    assert files_at(saver, hist[0].config) == expected(3)


# -- several writers ---------------------------------------------------------------------


def race(a: AgentFSSaver, b: AgentFSSaver, reader: AgentFSSaver) -> None:
    """Two writers put one checkpoint id at once: one wins, the other is told;
    puts of different ids by both on one thread all stay."""
    cp_a, cp_b = empty_checkpoint(), empty_checkpoint()
    cp_b["id"] = cp_a["id"]
    cp_a["channel_values"], cp_b["channel_values"] = {"who": "a"}, {"who": "b"}
    results: dict[str, object] = {}
    go = threading.Barrier(2)

    def put(name: str, s: AgentFSSaver, cp: Any) -> None:
        go.wait()
        try:
            results[name] = s.put(cfg("race"), cp, {"source": "loop", "step": 1}, {})
        except CheckpointConflict as e:
            results[name] = e

    ts = [threading.Thread(target=put, args=x) for x in (("a", a, cp_a), ("b", b, cp_b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    losers = [k for k, v in results.items() if isinstance(v, CheckpointConflict)]
    assert len(losers) == 1, results
    winner = "b" if losers == ["a"] else "a"
    got = reader.get_tuple(cfg("race", cp_a["id"]))  # read by another host at once
    assert got is not None and got.checkpoint["channel_values"] == {"who": winner}
    err = results[losers[0]]
    assert isinstance(err, CheckpointConflict) and err.errno == 116  # ESTALE

    # different ids from both writers on one thread: none is lost
    ids = []
    for i, s in enumerate([a, b, a, b]):
        cp = empty_checkpoint()
        s.put(cfg("both"), cp, {"source": "loop", "step": i}, {})
        ids.append(cp["id"])
    assert sorted(t.checkpoint["id"] for t in reader.list(cfg("both"))) == sorted(ids)


def test_two_writers_race_one_checkpoint_id(savers: Saver) -> None:
    a, b = savers(agent="host-a"), savers(agent="host-b")
    race(a, b, savers(agent="reader"))
    b.delete_thread("both")  # the folders a knows are gone: a's next put makes them again
    stored = a.put(cfg("both"), empty_checkpoint(), {"source": "loop", "step": 9}, {})
    a.put_writes(stored, [("steps", ["y"])], "task-2")
    assert [t.metadata["step"] for t in b.list(cfg("both"))] == [9]
    s = savers()
    s.client.write_bytes("once", b"1", exclusive=True)
    with pytest.raises(AlreadyExists):
        s.client.write_bytes("once", b"2", exclusive=True)
    assert s.client.read_bytes("once") == b"1"


def test_same_put_twice_is_idempotent(savers: Saver) -> None:
    s = savers()
    cp = empty_checkpoint()
    cp["channel_values"] = {"x": 1}
    first = s.put(cfg("t"), cp, {"source": "loop", "step": 0}, {"x": "1"})
    assert s.put(cfg("t"), cp, {"source": "loop", "step": 0}, {"x": "1"}) == first
    other = dict(cp, channel_values={"x": 2})
    with pytest.raises(CheckpointConflict):
        s.put(cfg("t"), other, {"source": "loop", "step": 0}, {"x": "2"})  # type: ignore[arg-type]
    tup = s.get_tuple(first)
    assert tup is not None and tup.checkpoint["channel_values"] == {"x": 1}


# -- layout, blobs and bad input -------------------------------------------------------------


def test_large_values_are_blob_files_and_odd_ids_round_trip(savers: Saver) -> None:
    s = savers(inline_limit=1024)
    thread = "../odd thread/é"
    cp = empty_checkpoint()
    cp["channel_values"] = {"big": "x" * 50_000, "small": "y"}
    stored = s.put(cfg(thread), cp, {"source": "loop", "step": 0}, {"big": "1", "small": "1"})
    top = ".agent/threads/..%2Fodd%20thread%2F%C3%A9".replace("..", "%2E.", 1)
    assert s.client.listdir(".agent/threads") == [top.rsplit("/", 1)[1]]
    blobs = s.client.listdir(f"{top}/main/blobs")
    assert len(blobs) == 1
    assert s.client.stat(f"{top}/main/{cp['id']}.json").size < 5_000  # not inlined
    tup = s.get_tuple(stored)
    assert tup is not None and tup.checkpoint["channel_values"] == {"big": "x" * 50_000, "small": "y"}
    assert [t.config["configurable"]["thread_id"] for t in s.list(None)] == [thread]
    s.client.write_bytes(f"{top}/main/blobs/{blobs[0]}", b"damaged")
    with pytest.raises(CorruptRecord):
        s.get_tuple(stored)
    s.delete_thread(thread)
    assert s.client.listdir(".agent/threads") == []


def test_bad_input_gets_clear_errors(savers: Saver) -> None:
    s = savers()
    cp = empty_checkpoint()
    for bad in ({}, {"configurable": {}}, {"configurable": {"thread_id": ""}},
                {"configurable": {"thread_id": ["x"]}}):
        with pytest.raises(InvalidArgument):
            s.get_tuple(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            s.put(bad, cp, {}, {})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="'id'"):
        s.put(cfg("t"), {**cp, "id": ""}, {}, {})  # type: ignore[typeddict-item]
    with pytest.raises(InvalidArgument, match="checkpoint_id"):
        s.put_writes(cfg("t"), [("ch", 1)], "task")
    with pytest.raises(InvalidArgument, match="limit"):
        list(s.list(cfg("t"), limit=-1))
    with pytest.raises(InvalidArgument):
        AgentFSSaver(s.client, directory="/")
    assert s.get_tuple(cfg("nobody")) is None
    assert s.get_tuple(cfg("t", "no-such-id")) is None
    s.delete_thread("nobody")  # a no-op
    stored = s.put(cfg("t"), cp, {"source": "input", "step": -1}, {})
    with pytest.raises(InvalidArgument, match="without files=True"):
        s.restore_files(stored)
    with pytest.raises(NotFound):
        s.restore_files(cfg("nobody"))
    s.client.write_bytes(f".agent/threads/t/main/{cp['id']}.json", b"{not json")
    with pytest.raises(CorruptRecord) as e:
        s.get_tuple(stored)
    assert e.value.path == f".agent/threads/t/main/{cp['id']}.json"


def test_prune_keeps_the_newest_and_what_they_use(savers: Saver, url: str) -> None:
    s = savers(files=True, inline_limit=2)  # every list value is a blob file
    graph = build(s, s.client)
    graph.invoke({"steps": []}, cfg("p"), durability="sync")
    history = list(s.list(cfg("p")))
    with pytest.raises(InvalidArgument):
        s.prune(["p"], keep_last=0)
    with pytest.raises(InvalidArgument):
        s.prune(["p"], strategy="newest")
    s.prune(["p"], keep_last=2)
    left = list(s.list(cfg("p")))
    assert [t.checkpoint["id"] for t in left] == [t.checkpoint["id"] for t in history[:2]]
    assert left[1].pending_writes == history[1].pending_writes  # kept with its writes
    assert left[0].checkpoint["channel_values"] == history[0].checkpoint["channel_values"]  # blobs kept
    assert len(s.client.listdir(".agent/threads/p/main")) == 6  # 2 x (.json, .md) + writes/ + blobs/
    # kept: ['a','b'], ['a','b','c'] (records) and ['c'] (a kept write); ['a'] and ['b'] went
    assert len(s.client.listdir(".agent/threads/p/main/blobs")) == 3
    lg = [c.name for c in s.client.checkpoints() if c.name.startswith(files_checkpoint_prefix("p"))]
    assert sorted(lg) == sorted(s.files_checkpoint(t.config) or "" for t in left)
    # every change is in the audit log, attributed to the saver's agent
    store = open_store(url)
    try:
        records = [r for c in read_records(Journal(store, "ws")) if isinstance(c, Commit) for r in c.records]
    finally:
        store.close()
    rec_path = f".agent/threads/p/main/{history[0].checkpoint['id']}.json"
    assert any(getattr(r.op, "path", "") == rec_path and r.agent == "agent-1" for r in records)


# -- LangGraph's conformance suite, and S3 ------------------------------------------------


def run_conformance(url: str) -> None:
    @checkpointer_test(name="AgentFSSaver")
    async def factory() -> Any:
        s = AgentFSSaver.open(url, "ws")
        yield s
        s.close()

    report = asyncio.run(validate(factory))
    assert report.passed_all_base() and report.passed_all(), report.to_dict()
    assert report.results["prune"].passed is True  # the extended capability we implement


def test_conformance_memory_store() -> None:
    """The whole suite through the core and journal (the in-process store keeps it quick)."""
    run_conformance(f"memory://lg{os.getpid()}")


#: Set to run the suite on the local store and on moto S3 too (about 15 s and 2 min here).
ALL = pytest.mark.skipif(not os.environ.get("AGENTFS_LANGGRAPH_CONFORMANCE"),
                         reason="set AGENTFS_LANGGRAPH_CONFORMANCE=1 (local store ~15 s, moto S3 ~2 min)")


@pytest.mark.slow
@ALL
def test_conformance_local_store(url: str) -> None:
    run_conformance(url)


@pytest.mark.slow
@ALL
def test_conformance_s3(s3_url: str) -> None:
    run_conformance(s3_url)


def test_race_across_hosts_on_s3(s3_url: str, savers: Saver) -> None:
    """On S3 the store's conditional create decides the race; the other host reads at once."""
    a, b = savers(s3_url, agent="host-a"), savers(s3_url, agent="host-b")
    race(a, b, b)
    stored = a.put(cfg("s3"), empty_checkpoint(), {"source": "loop", "step": 0}, {})
    b.put_writes(stored, [("steps", ["x"])], "task-1")
    tup = a.get_tuple(cfg("s3"))
    assert tup is not None and tup.pending_writes == [("task-1", "steps", ["x"])]
