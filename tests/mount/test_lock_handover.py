"""Locks hand over data: read-modify-write under a lock from several mounts is exact.

The next holder of a lock sees every write the previous holder made under it
(docs/SEMANTICS.md §6, "Locks hand over data"), whichever way the lock is
taken: ``agentfs lock`` (a kernel flock on mounts with kernel locks), the
lease attribute, ``flock(2)`` (tests/mount/test_kernel_locks_mount.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.mount import REPO, Mount, fuse_available
from tests.helpers.mounts import assert_check_clean, read_or_none, wait_for, write_file

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")

#: n increments of the counter file argv[1] under the lease attribute
LEASE_COUNTER = r'''
import errno, os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    keep = os.open(path, os.O_RDONLY)  # closing the process's last descriptor releases the lease
    while True:
        try:
            os.setxattr(path, "user.agentfs.lock", b"exclusive wait")
            break
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    with open(path, "rb") as f:
        v = int(f.read() or b"0")
    with open(path, "wb") as f:
        f.write(str(v + 1).encode())
    os.removexattr(path, "user.agentfs.lock")
    os.close(keep)
print("done", flush=True)
'''


def counter_mounts(mounter: Callable[..., Mount], url: str, n: int) -> list[Path]:
    ms = [mounter(url, "--lease-ttl", "5") for _ in range(n)]
    (ms[0].path / "ws").mkdir()
    write_file(ms[0].path / "ws" / "n", b"0")
    for m in ms[1:]:
        wait_for(lambda m=m: read_or_none(m.path / "ws" / "n") == b"0", 15.0, "counter on every mount")
    return [m.path / "ws" / "n" for m in ms]


def finish(procs: list[subprocess.Popen], paths: list[Path], total: int, url: str) -> None:
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    for path in paths:
        wait_for(lambda path=path: (read_or_none(path) or b"").strip() == str(total).encode(), 15.0,
                 f"{total} on {path}")
    assert not [x for x in paths[0].parent.iterdir() if ".conflict" in x.name]


def test_counter_under_agentfs_lock_from_two_mounts(mounter: Callable[..., Mount], s3_url: str) -> None:
    paths = counter_mounts(mounter, s3_url, 2)
    n = 8
    script = "for i in $(seq {n}); do {py} -m agentfs lock {f} -c 'n=$(cat {f}); echo $((n+1)) > {f}' || exit 1; done"
    procs = [subprocess.Popen(["sh", "-c", script.format(n=n, py=sys.executable, f=p)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=str(REPO)) for p in paths]
    finish(procs, paths, 2 * n, s3_url)
    assert_check_clean(s3_url)


def test_counter_under_the_lease_attribute_from_four_mounts(mounter: Callable[..., Mount],
                                                            tmp_path: Path) -> None:
    url = (tmp_path / "store").as_uri()
    paths = counter_mounts(mounter, url, 4)
    n = 25
    procs = [subprocess.Popen([sys.executable, "-c", LEASE_COUNTER, str(p), str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=str(REPO)) for p in paths]
    finish(procs, paths, 4 * n, url)
