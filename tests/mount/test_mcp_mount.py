"""An MCP session and a real FUSE mount of one store share files and locks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import agentfs
from tests.helpers.mcp import err, inproc, ok, run
from tests.helpers.mounts import agentfs_cli, wait_for


def test_mount_and_mcp_share_files_and_locks(mounter: Callable[..., Any], tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    url = f"file://{store}"
    m = mounter(url, "--lease-ttl", "2")
    (m.path / "ws").mkdir()
    task = m.path / "ws" / "task.md"

    async def main() -> None:
        async with inproc(url) as (c, _):
            await ok(c, "write_file", path="task.md", content="from mcp\n")
            wait_for(lambda: task.exists() and task.read_bytes() == b"from mcp\n", timeout=10)
            await ok(c, "lock_acquire", path="task.md")
            r = agentfs_cli("lock", "-n", str(task), "--", "true")
            assert r.returncode == 1 and b"bot" in r.stderr, r.stderr
            await ok(c, "lock_release", path="task.md")
            # the other way round: a lock through the mount (agentfs.lock: kernel flock plus the
            # mount's lease, as `agentfs lock` takes it) refuses the MCP session
            with agentfs.lock(task, wait=0):
                e = await err(c, "lock_acquire", path="task.md")
                assert "EAGAIN" in e and "pid" in e, e
            # released on the mount (by the kernel's asynchronous release of the closed
            # descriptor), the lease stays cached there; the session rings the mount's
            # doorbell and gets it
            lk = await ok(c, "lock_acquire", path="task.md", wait_s=3)
            assert lk["token"] > 0
            await ok(c, "lock_release", path="task.md")
            task.write_bytes(b"from the mount\n")
            got = await ok(c, "read_text_file", path="task.md")
            assert got["content"] == "from the mount\n"

    run(main)
