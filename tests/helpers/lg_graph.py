"""A small deterministic LangGraph graph whose nodes write workspace files,
shared by ``tests/api/test_langgraph.py`` and the process it kills.

Nodes ``a``, ``b``, ``c`` run in a line; each writes ``out/<node>.txt`` with
the files it saw in ``out/`` (so a rewound node shows what it had then).
``interrupt_at`` makes that node ask for a value first (LangGraph ``interrupt``);
``kill_at`` makes that node SIGKILL its own process before writing.
"""

from __future__ import annotations

import itertools
import operator
import os
import signal
import sys
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from agentfs.api import WorkspaceClient
from agentfs.errors import NotFound

__all__ = ["NODES", "build", "main"]

NODES = ("a", "b", "c")


class State(TypedDict):
    """The graph's state: the nodes that ran, in order."""
    steps: Annotated[list[str], operator.add]


def seen(client: WorkspaceClient) -> list[str]:
    """The files the nodes wrote under ``out/`` (one per node run), sorted."""
    try:
        return sorted(client.listdir("out"))
    except NotFound:
        return []


def build(saver: Any, client: WorkspaceClient, *, interrupt_at: str = "", kill_at: str = "") -> Any:
    """The three-node graph checkpointed by ``saver``; it may interrupt or kill itself at a node."""
    def node(name: str) -> Any:
        def run(state: State) -> dict[str, list[str]]:
            answer = interrupt(f"approve {name}?") if name == interrupt_at else ""
            if name == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            body = f"{name} saw {','.join(seen(client))} {answer}".strip()
            client.mkdir("out", parents=True)
            client.write_bytes(f"out/{name}.txt", body.encode())
            return {"steps": [name]}
        return run

    g = StateGraph(State)
    for n in NODES:
        g.add_node(n, node(n))
    g.add_edge(START, NODES[0])
    for x, y in itertools.pairwise(NODES):
        g.add_edge(x, y)
    g.add_edge(NODES[-1], END)
    return g.compile(checkpointer=saver)


def main() -> None:
    """``python -m tests.helpers.lg_graph URL THREAD KILL_AT``: run the graph until it kills itself."""
    from agentfs.langgraph import AgentFSSaver

    url, thread, kill_at = sys.argv[1:4]
    with AgentFSSaver.open(url, "ws", files=True, agent="killed-agent") as saver:
        build(saver, saver.client, kill_at=kill_at).invoke(
            {"steps": []}, {"configurable": {"thread_id": thread}}, durability="sync")


if __name__ == "__main__":
    main()
