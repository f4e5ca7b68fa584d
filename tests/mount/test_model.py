"""Model-based tests: random filesystem operations checked against an in-memory model.

``test_random_ops`` drives seeded random operations (``random.Random(seed)``) on a
workspace directory and on a pure-Python model of the tree, and asserts that both
agree on every result: the returned data, or the errno of a failure.  At the end
the whole tree (files, directories, symlinks, user.* xattrs) is compared, and on a
real mount the store is unmounted, mounted again and compared once more.

``test_state_machine`` is a hypothesis ``RuleBasedStateMachine`` over a smaller set
of operations (create/write/truncate/rename/unlink/read) against the same model.

Budget: ``AGENTFS_MODEL_SEEDS`` (comma separated, default ``1,2,3``) and
``AGENTFS_MODEL_OPS`` (operations per seed, default 300).  A failure names the seed,
the index and description of the failing operation and the operations before it;
replay it with the printed command.
"""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from tests.helpers.model import Gen, Op, Runner

LOCALDIR = os.environ.get("AGENTFS_TEST_TARGET") == "localdir"
SEEDS = [int(s) for s in os.environ.get("AGENTFS_MODEL_SEEDS", "1,2,3").split(",") if s.strip()]
N_OPS = int(os.environ.get("AGENTFS_MODEL_OPS", "300"))


# ------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_random_ops(ws: Path, seed: int, request: pytest.FixtureRequest) -> None:
    rng = random.Random(seed)
    node = request.node.nodeid
    runner = Runner(ws, label=f"seed={seed} ({node})")
    gen = Gen(rng, runner.model)
    for i in range(N_OPS):
        runner.replay = f"replay: AGENTFS_MODEL_SEEDS={seed} AGENTFS_MODEL_OPS={i + 1} pytest '{node}'"
        runner.step(gen.next())
    runner.compare_tree()

    if LOCALDIR:
        return  # persistence needs a real mount
    mount = request.getfixturevalue("mount")
    mount.unmount()
    again = request.getfixturevalue("mounter")(mount.store_url)
    runner.compare_tree(again.path / ws.name, "tree after unmount and remount")


PATHS = st.sampled_from(["a", "b", "d", "d/a", "d/c"])  # "d" starts as a directory
DATA = st.binary(max_size=300)
OFFSETS = st.one_of(st.integers(0, 400), st.integers(0, 70_000))


def test_state_machine(ws: Path) -> None:
    examples = itertools.count()

    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            root = ws / f"ex{next(examples)}"
            root.mkdir()
            self.run = Runner(root, label=f"hypothesis example {root.name}",
                              replay="(hypothesis prints the failing steps below)")
            self.run.step(Op("mkdir", ("d",)))

        @rule(p=PATHS, data=DATA)
        def create(self, p: str, data: bytes) -> None:
            self.run.step(Op("create", (p, data)))

        @rule(p=PATHS, off=OFFSETS, data=DATA.filter(bool))
        def write(self, p: str, off: int, data: bytes) -> None:
            self.run.step(Op("write", (p, off, data)))

        @rule(p=PATHS, size=OFFSETS)
        def truncate(self, p: str, size: int) -> None:
            self.run.step(Op("truncate", (p, size)))

        @rule(src=PATHS, dst=PATHS)
        def rename(self, src: str, dst: str) -> None:
            self.run.step(Op("rename", (src, dst)))

        @rule(p=PATHS)
        def unlink(self, p: str) -> None:
            self.run.step(Op("unlink", (p,)))

        @rule(p=PATHS)
        def read(self, p: str) -> None:
            self.run.step(Op("read", (p,)))

        def teardown(self) -> None:
            self.run.compare_tree()

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=15, stateful_step_count=30, deadline=None, database=None))
