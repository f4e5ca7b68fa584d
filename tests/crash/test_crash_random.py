"""SIGKILL of the mount daemon at random moments of a busy workload, then a remount.

The tree is exactly the state before or after the operation in flight, and
``agentfs check`` finds the store consistent.  Runs over a local directory store
and over moto S3; each round prints its seed, ``CRASH_SEED=<seed>`` reruns one,
``CRASH_ROUNDS`` sets the number of rounds.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import pytest

from tests.helpers.crash import (
    DEAD_MOUNT,
    Workload,
    assert_check_clean,
    crash,
    verify_round,
)
from tests.helpers.mount import Mount

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "10"))


def test_sigkill_at_random_moments(mounter: Callable[..., Mount], store_url: str) -> None:
    seeds = [int(os.environ["CRASH_SEED"])] if "CRASH_SEED" in os.environ else \
        [20240 + r for r in range(ROUNDS)]
    m = mounter(store_url)
    started = time.monotonic()
    failures: list[str] = []
    for r, seed in enumerate(seeds):
        print(f"round {r}: seed {seed}")
        rng = random.Random(seed)
        name = f"w{r}"
        root = m.path / name
        root.mkdir()
        w = Workload(root, rng)
        for _ in range(rng.randrange(3, 12)):  # a starting tree, completed before the kill
            w.step()
        delay = rng.uniform(0.05, 1.5)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        time.sleep(delay)
        killed_at = time.monotonic()
        crash(m)
        t.join(60)
        assert not t.is_alive(), f"seed {seed}: the workload is still blocked on the dead mount"
        m.kill()
        assert w.error is not None, f"seed {seed}: the workload ended without an error"
        assert w.error_at >= killed_at, (
            f"seed {seed}: operation failed before the kill: {w.inflight and w.inflight[0]}: {w.error!r}")
        assert w.error.errno in DEAD_MOUNT, f"seed {seed}: unexpected error after the kill: {w.error!r}"
        print(f"  killed after {delay:.2f}s, {len(w.done)} ops done, in flight: "
              f"{w.inflight[0] if w.inflight else None}")
        m = mounter(store_url)
        try:  # run every round, then report every failing seed
            verify_round(seed, w, m.path / name)
            assert_check_clean(store_url, f"seed {seed}: ")
        except (AssertionError, pytest.fail.Exception) as e:
            failures.append(str(e))
            print(f"  FAILED: {str(e).splitlines()[0]}")
    print(f"{len(seeds)} rounds in {time.monotonic() - started:.1f}s, {len(failures)} failed")
    if failures:
        pytest.fail(f"{len(failures)} of {len(seeds)} rounds failed "
                    f"(rerun one with CRASH_SEED=<seed>):\n" + "\n".join(failures))
