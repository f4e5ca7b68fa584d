"""The CLI after a mount's close, and a mount after a CLI call, on one machine.

A mount's close returns before its journal record is committed (group
commit; ``--writeback``: before the upload).  A CLI command started after the
close must act on a state that includes it, and when the command returns the
mount must show its result (agentfs/localmounts.py: the barrier control
attribute).  The mounts here run with a 3 s group-commit delay, so a missing
barrier shows as a wrong answer, not as a lucky race.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from tests.helpers.checkpoints import cli, ok
from tests.helpers.mount import Mount

SLOW_COMMIT = {"AGENTFS_GROUP_COMMIT_DELAY": "3", "AGENTFS_GROUP_COMMIT_MAX_AGE": "6"}


def test_restore_right_after_closes_is_what_the_mount_shows(mounter: Callable[..., Mount],
                                                            store_url: str) -> None:
    m = mounter(store_url, env=SLOW_COMMIT)
    ws = m.path / "ws"
    ws.mkdir()
    f = ws / "f.txt"
    f.write_bytes(b"one\n")
    ok("checkpoint", "create", f"{store_url}/ws", "s1")
    f.write_bytes(b"two\n")
    ok("checkpoint", "create", f"{store_url}/ws", "s2")
    f.write_bytes(b"three\n")
    ok("checkpoint", "restore", f"{store_url}/ws", "s1")
    assert f.read_bytes() == b"one\n", "right after the restore returned"
    time.sleep(4)  # past the group-commit delay: no queued record undoes the restore
    assert f.read_bytes() == b"one\n"
    r = ok("cat", f"{store_url}/ws/f.txt")
    assert r == "one\n"
    # the undo checkpoint holds the last close before the restore
    cps = json.loads(ok("checkpoint", "list", f"{store_url}/ws", "--json"))
    undo = cps[-1]["name"]
    assert (ws / ".snapshots" / undo / "f.txt").read_bytes() == b"three\n"


def test_cli_reads_and_checkpoints_include_a_close_made_just_before(mounter: Callable[..., Mount],
                                                                    store_url: str) -> None:
    m = mounter(store_url, env=SLOW_COMMIT)
    ws = m.path / "ws"
    ws.mkdir()
    (ws / "report.md").write_bytes(b"# draft\n")
    assert ok("cat", f"{store_url}/ws/report.md") == "# draft\n"
    ok("state", "set", f"{store_url}/ws/report.md", "status=review")
    (ws / "data.csv").write_bytes(b"a,b\n1,2\n")
    ok("checkpoint", "create", f"{store_url}/ws", "c1")
    assert (ws / ".snapshots" / "c1" / "data.csv").read_bytes() == b"a,b\n1,2\n"
    r = cli("state", "get", f"{store_url}/ws/report.md", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "review", r.stderr


def test_cli_put_is_seen_by_the_mount_when_it_returns(mounter: Callable[..., Mount], store_url: str,
                                                      tmp_path) -> None:
    m = mounter(store_url, env=SLOW_COMMIT)
    ws = m.path / "ws"
    ws.mkdir()
    (ws / "x.txt").write_bytes(b"old\n")
    src = tmp_path / "new.txt"
    src.write_bytes(b"new\n")
    ok("put", str(src), f"{store_url}/ws/x.txt")
    assert (ws / "x.txt").read_bytes() == b"new\n", "right after agentfs put returned"


def test_writeback_close_is_in_the_store_for_the_cli(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, "--writeback", env={"AGENTFS_WRITEBACK_DELAY": "5", "AGENTFS_WRITEBACK_MAX_AGE": "10"})
    ws = m.path / "ws"
    ws.mkdir()
    (ws / "q.txt").write_bytes(b"queued\n")
    assert ok("cat", f"{store_url}/ws/q.txt") == "queued\n"
