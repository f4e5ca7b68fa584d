"""Two mounts of one store (two daemon processes), the CLI and the library.

Every test runs over a local directory store and over moto S3.  A change made
through one mount (or by the CLI, the Python API, or another tool writing the
store directly) must show on the other mount:

- within 2 s for changes that go through the journal (the other mount tails
  it), with close-to-open consistency: a reader that opens the file again
  after the writer closed it sees the new bytes, never stale page-cache data;
- after a scan for objects written into the store by other tools.

Concurrent writers of one file race optimistically: exactly one version ends
at the path, the other is kept byte-exact as a ``.conflict-`` copy with the
``user.agentfs.conflict`` xattr, and the losing mount logs a WARNING.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mount import Mount
from tests.helpers.mounts import (
    VISIBLE_WITHIN,
    Pair,
    agentfs_cli,
    assert_check_clean,
    read_or_none,
    wait_for,
    write_all,
    write_file,
)

CONFLICT_XATTR = "user.agentfs.conflict"


# ---------------------------------------------------------------- helpers


def desc(data: bytes | None) -> str:
    if data is None:
        return "<missing>"
    return f"<{len(data)} bytes sha {hashlib.sha256(data).hexdigest()[:10]}>"


def report_latency(record_property: Callable[[str, object], None], name: str, seconds: float) -> None:
    record_property(name, f"{seconds:.3f}")
    print(f"{name}: {seconds * 1000:.0f} ms")


@pytest.fixture
def pair(mounter: Callable[..., Mount], store_url: str) -> Pair:
    """Two daemons mounting the same store; workspace ``ws`` created on A, seen on B."""
    a = mounter(store_url)
    b = mounter(store_url)
    (a.path / "ws").mkdir()
    wait_for(lambda: (b.path / "ws").is_dir(), 5.0, "workspace ws on mount B")
    return Pair(a, b, a.path / "ws", b.path / "ws")


# ---------------------------------------------------------------- coherence


def test_create_visible_on_other_mount(pair: Pair, record_property) -> None:
    data = random.Random(1).randbytes(70_000)
    write_file(pair.wa / "new.bin", data)
    t = wait_for(lambda: read_or_none(pair.wb / "new.bin") == data, what="new.bin on B")
    report_latency(record_property, "create_latency_s", t)
    assert t < VISIBLE_WITHIN
    assert (pair.wb / "new.bin").stat().st_size == len(data)
    assert "new.bin" in os.listdir(pair.wb)


def test_overwrite_close_to_open(pair: Pair, record_property) -> None:
    """B reads the file (filling its page cache), A overwrites it: B must see
    the new bytes on its next open, and never anything but old or new."""
    rng = random.Random(2)
    fa, fb = pair.wa / "doc.txt", pair.wb / "doc.txt"
    old = rng.randbytes(50_000)
    write_file(fa, old)
    wait_for(lambda: read_or_none(fb) == old, what="first version on B")
    # Same length first (size cannot reveal the change), then shorter, then longer.
    for i, size in enumerate((50_000, 20_000, 90_000)):
        assert read_or_none(fb) == old  # B's page cache now holds ``old``
        new = rng.randbytes(size)
        write_file(fa, new)
        seen: list[str] = []

        def b_sees_new(new: bytes = new, old: bytes = old, seen: list[str] = seen) -> bool:
            got = read_or_none(fb)
            if got not in (old, new, None):
                seen.append(desc(got))
            return got == new

        t = wait_for(b_sees_new, what=f"overwrite {i} on B")
        assert not seen, f"B read bytes that are neither the old nor the new version: {seen}"
        report_latency(record_property, f"overwrite{i}_latency_s", t)
        assert fb.stat().st_size == size
        old = new


def test_delete_visible_on_other_mount(pair: Pair, record_property) -> None:
    write_file(pair.wa / "gone.txt", b"soon gone\n")
    wait_for(lambda: read_or_none(pair.wb / "gone.txt") == b"soon gone\n", what="gone.txt on B")
    os.unlink(pair.wa / "gone.txt")
    t = wait_for(lambda: not (pair.wb / "gone.txt").exists() and "gone.txt" not in os.listdir(pair.wb),
                 what="deletion on B")
    report_latency(record_property, "delete_latency_s", t)
    with pytest.raises(FileNotFoundError):
        (pair.wb / "gone.txt").read_bytes()


def test_rename_file_and_directory_visible_on_other_mount(pair: Pair, record_property) -> None:
    rng = random.Random(3)
    f = rng.randbytes(10_000)
    write_file(pair.wa / "a.txt", f)
    wait_for(lambda: read_or_none(pair.wb / "a.txt") == f, what="a.txt on B")
    os.rename(pair.wa / "a.txt", pair.wa / "b.txt")
    t = wait_for(lambda: read_or_none(pair.wb / "b.txt") == f and not (pair.wb / "a.txt").exists(),
                 what="file rename on B")
    report_latency(record_property, "rename_file_latency_s", t)

    tree = {"d/x.bin": rng.randbytes(1000), "d/y.bin": rng.randbytes(30_000),
            "d/sub/z.bin": rng.randbytes(5000), "d/sub/deeper/w.bin": b""}
    for rel, data in tree.items():
        (pair.wa / rel).parent.mkdir(parents=True, exist_ok=True)
        write_file(pair.wa / rel, data)
    (pair.wa / "d" / "emptydir").mkdir()
    wait_for(lambda: all(read_or_none(pair.wb / rel) == d for rel, d in tree.items()), what="tree on B")
    os.rename(pair.wa / "d", pair.wa / "e")

    def moved() -> bool:
        return (not (pair.wb / "d").exists()
                and all(read_or_none(pair.wb / ("e" + rel[1:])) == d for rel, d in tree.items())
                and (pair.wb / "e" / "emptydir").is_dir())

    t = wait_for(moved, what="directory rename on B")
    report_latency(record_property, "rename_dir_latency_s", t)
    assert sorted(os.listdir(pair.wb / "e")) == ["emptydir", "sub", "x.bin", "y.bin"]
    assert sorted(os.listdir(pair.wb)) == ["b.txt", "e"]


def test_mkdir_rmdir_visible_on_other_mount(pair: Pair, record_property) -> None:
    (pair.wa / "dd").mkdir()
    (pair.wa / "dd" / "inner").mkdir()
    t = wait_for(lambda: (pair.wb / "dd" / "inner").is_dir(), what="mkdir on B")
    report_latency(record_property, "mkdir_latency_s", t)
    (pair.wa / "dd" / "inner").rmdir()
    (pair.wa / "dd").rmdir()
    t = wait_for(lambda: not (pair.wb / "dd").exists() and "dd" not in os.listdir(pair.wb),
                 what="rmdir on B")
    report_latency(record_property, "rmdir_latency_s", t)


def test_xattr_visible_on_other_mount(pair: Pair, record_property) -> None:
    write_file(pair.wa / "x.txt", b"x")
    (pair.wa / "xd").mkdir()
    wait_for(lambda: (pair.wb / "x.txt").exists() and (pair.wb / "xd").is_dir(), what="x.txt on B")
    for p in ("x.txt", "xd"):
        os.setxattr(pair.wa / p, "user.status", b"running")
    t = wait_for(lambda: all(os.getxattr(pair.wb / p, "user.status") == b"running" for p in ("x.txt", "xd")),
                 what="xattr on B")
    report_latency(record_property, "setxattr_latency_s", t)
    binary = bytes(range(256)) * 4
    os.setxattr(pair.wa / "x.txt", "user.status", binary)
    wait_for(lambda: os.getxattr(pair.wb / "x.txt", "user.status") == binary, what="xattr change on B")
    os.removexattr(pair.wa / "x.txt", "user.status")

    def removed() -> bool:
        try:
            os.getxattr(pair.wb / "x.txt", "user.status")
        except OSError as e:
            return e.errno == errno.ENODATA
        return False

    wait_for(removed, what="removexattr on B")
    assert "user.status" not in os.listxattr(pair.wb / "x.txt")
    assert (pair.wb / "x.txt").read_bytes() == b"x"


def test_new_workspace_visible_on_other_mount(pair: Pair, record_property) -> None:
    (pair.a.path / "second").mkdir()
    t = wait_for(lambda: "second" in os.listdir(pair.b.path) and (pair.b.path / "second").is_dir(),
                 what="workspace 'second' on B")
    report_latency(record_property, "new_workspace_latency_s", t)
    write_file(pair.a.path / "second" / "f.txt", b"in the second workspace\n")
    wait_for(lambda: read_or_none(pair.b.path / "second" / "f.txt") == b"in the second workspace\n",
             what="file in new workspace on B")
    assert sorted(os.listdir(pair.b.path)) == ["second", "ws"]


# ---------------------------------------------------------------- write races


def _race(pa: Path, pb: Path, da: bytes, db: bytes) -> list[Path]:
    """Both mounts open the same name, write, and close at (about) the same
    time; returns the workspaces whose close failed with ESTALE (lost the race)."""
    opened = threading.Barrier(2)
    written = threading.Barrier(2)
    errors: list[str] = []
    stale: list[Path] = []

    def writer(p: Path, data: bytes) -> None:
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                opened.wait(20)
                write_all(fd, data)
                written.wait(20)
            finally:
                try:
                    os.close(fd)
                except OSError as e:
                    if e.errno != errno.ESTALE:
                        raise
                    stale.append(p.parent)
        except BaseException as e:
            errors.append(f"{p}: {e!r}")
            opened.abort()
            written.abort()

    threads = [threading.Thread(target=writer, args=(pa, da)), threading.Thread(target=writer, args=(pb, db))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, f"a racing writer failed: {errors}"
    return stale


def _outcome(ws: Path, name: str) -> tuple[bytes | None, dict[str, bytes | None]]:
    """(bytes at ``name``, {conflict copy name: bytes}) of one race as a mount sees it."""
    stem = name.rpartition(".")[0]
    names = [n for n in os.listdir(ws) if n.startswith(stem + ".")]
    others = sorted(n for n in names if n != name)
    return read_or_none(ws / name), {n: read_or_none(ws / n) for n in others}


def _check_race(pair: Pair, name: str, da: bytes, db: bytes) -> Path:
    stem = name.rpartition(".")[0]

    def settled(ws: Path) -> bool:
        main, copies = _outcome(ws, name)
        return (len(copies) == 1 and ".conflict-" in next(iter(copies))
                and {main, *copies.values()} == {da, db})

    t0 = time.monotonic()
    try:
        wait_for(lambda: settled(pair.wa) and settled(pair.wb), what=f"race outcome of {name}")
    except BaseException:
        detail = []
        for label, ws in (("A", pair.wa), ("B", pair.wb)):
            main, copies = _outcome(ws, name)
            tag = {da: "A's bytes", db: "B's bytes"}
            detail.append(f"mount {label}: {name} = {tag.get(main, desc(main))}; others: "
                          + ", ".join(f"{n} = {tag.get(v, desc(v))}" for n, v in copies.items()))
        pytest.fail(f"race on {name} did not settle to one winner + one conflict copy "
                    f"within {VISIBLE_WITHIN}s:\n" + "\n".join(detail))
    print(f"race {name}: settled on both mounts after {time.monotonic() - t0:.2f}s")
    main, copies = _outcome(pair.wa, name)
    cname = next(iter(copies))
    assert _outcome(pair.wb, name) == (main, copies), "the mounts disagree about the race outcome"
    for ws in (pair.wa, pair.wb):
        note = os.getxattr(ws / cname, CONFLICT_XATTR)
        assert note, f"empty {CONFLICT_XATTR} on {ws / cname}"
        assert CONFLICT_XATTR in os.listxattr(ws / cname)
    loser = pair.b if main == da else pair.a
    winner = pair.a if loser is pair.b else pair.b
    loser_ws = pair.wb if loser is pair.b else pair.wa
    warnings = [ln for ln in loser.log_text().splitlines()
                if " WARNING " in ln and stem in ln and "conflict" in ln]
    assert warnings, (f"the losing mount's log has no WARNING about the conflict on {name}:\n"
                      + loser.log_text()[-3000:])
    assert not [ln for ln in winner.log_text().splitlines()
                if " WARNING " in ln and f"{name} lost a race" in ln], "the winner logged a lost race"
    return loser_ws


@pytest.mark.parametrize("existing", [True, False], ids=["existing-file", "new-file"])
def test_write_race_keeps_both_versions(pair: Pair, store_url: str, existing: bool) -> None:
    rng = random.Random(42 + existing)
    for r in range(5):
        name = f"{'e' if existing else 'n'}{r}.txt"
        if existing:
            base = rng.randbytes(4000)
            write_file(pair.wa / name, base)
            wait_for(lambda name=name, base=base: read_or_none(pair.wb / name) == base,
                     what=f"{name} on B before the race")
        da = b"A" * 7 + rng.randbytes(rng.randrange(1, 60_000))
        db = b"B" * 9 + rng.randbytes(rng.randrange(1, 60_000))
        stale = _race(pair.wa / name, pair.wb / name, da, db)
        loser = _check_race(pair, name, da, db)
        assert stale == [loser], f"only the loser's close fails, with ESTALE: {stale}"
    assert_check_clean(store_url)


# ---------------------------------------------------------------- external writes


def test_external_write_adopted_by_scan(mounter: Callable[..., Mount], store_url: str,
                                        request: pytest.FixtureRequest, tmp_path: Path,
                                        record_property) -> None:
    data = b"id,value\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(5000))
    if store_url.startswith("file://"):
        # Old enough to be adopted under the default grace period (30 s).
        m = mounter(store_url, "--scan-interval", "1")
        (m.path / "ws").mkdir()
        store_dir = Path(store_url[len("file://"):])
        staged = tmp_path / "data.csv"
        staged.write_bytes(data)
        old = time.time() - 60
        os.utime(staged, (old, old))
        (store_dir / "ws" / "ext").mkdir(parents=True, exist_ok=True)
        os.rename(staged, store_dir / "ws" / "ext" / "data.csv")
    else:
        # A fresh S3 object is adopted at once with AGENTFS_ADOPT_GRACE=0.
        m = mounter(store_url, "--scan-interval", "1", env={"AGENTFS_ADOPT_GRACE": "0"})
        (m.path / "ws").mkdir()
        s3 = request.getfixturevalue("s3_client")
        s3.put_object(Bucket=store_url[len("s3://"):].split("/")[0], Key="ws/ext/data.csv", Body=data)
    t = wait_for(lambda: read_or_none(m.path / "ws" / "ext" / "data.csv") == data, 10.0,
                 "external object adopted into the mount")
    report_latency(record_property, "external_adopt_latency_s", t)
    assert (m.path / "ws" / "ext").is_dir()
    assert (m.path / "ws" / "ext" / "data.csv").stat().st_size == len(data)
    assert "external" in m.log_text() or "adopted" in m.log_text()
    assert_check_clean(store_url)


def _external_put(request: pytest.FixtureRequest, store_url: str, key: str, data: bytes,
                  tmp_path: Path) -> None:
    """Write an object into the store the way another tool would (not through agentfs)."""
    if store_url.startswith("file://"):
        staged = tmp_path / f"staged-{time.monotonic_ns()}"
        staged.write_bytes(data)
        dst = Path(store_url[len("file://"):]) / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, dst)
    else:
        s3 = request.getfixturevalue("s3_client")
        s3.put_object(Bucket=store_url[len("s3://"):].split("/")[0], Key=key, Body=data)


def test_prefix_written_by_another_tool_becomes_a_workspace(mounter: Callable[..., Mount], store_url: str,
                                                           request: pytest.FixtureRequest,
                                                           tmp_path: Path) -> None:
    """Objects put under a new top-level prefix (no journal) show as a workspace,
    adopted; listing the mount root never fails because of them (a read-only
    mount leaves them out)."""
    m = mounter(store_url)
    (m.path / "ws").mkdir()
    _external_put(request, store_url, "t/big0", b"from another tool", tmp_path)
    _external_put(request, store_url, "u/deep/x.txt", b"x", tmp_path)
    wait_for(lambda: "t" in os.listdir(m.path), 10.0, "the new prefix listed")
    assert sorted(os.listdir(m.path)) == ["t", "u", "ws"]
    assert (m.path / "t" / "big0").read_bytes() == b"from another tool"
    assert (m.path / "u" / "deep" / "x.txt").read_bytes() == b"x"
    m.unmount()
    _external_put(request, store_url, "v/y", b"y", tmp_path)
    ro = mounter(store_url, "--read-only")
    assert sorted(os.listdir(ro.path)) == ["t", "u", "ws"]


@pytest.mark.parametrize("new_size", [3_000, 30_000], ids=["shorter", "longer"])
def test_external_overwrite_of_tracked_file_never_reads_torn(
        mounter: Callable[..., Mount], store_url: str, request: pytest.FixtureRequest,
        tmp_path: Path, new_size: int) -> None:
    """Another tool replaces a committed file's object (what a crash between a
    mount's data upload and its journal commit also leaves behind).  Before
    the scan adopts it, a mount that reads the file must give the old bytes,
    the new bytes, or ESTALE; never the new bytes cut or padded to the old
    size.  After adoption it must give the new bytes with the new size."""
    rng = random.Random(new_size)
    old, new = rng.randbytes(10_000), rng.randbytes(new_size)
    a = mounter(store_url)
    (a.path / "ws").mkdir()
    write_file(a.path / "ws" / "t.bin", old)
    _external_put(request, store_url, "ws/t.bin", new, tmp_path)
    b = mounter(store_url)  # a fresh mount: nothing cached; default grace, so no adoption yet
    try:
        got = (b.path / "ws" / "t.bin").read_bytes()
    except OSError as e:
        assert e.errno == errno.ESTALE, f"reading a file whose object changed underneath: {e!r}"
    else:
        if got not in (old, new):
            head = (" (the new bytes cut to the committed size)" if new.startswith(got) else
                    " (the new bytes padded to the committed size)" if got.startswith(new) else "")
            pytest.fail(f"a read through the mount gave {desc(got)}{head}: neither the committed "
                        f"{desc(old)} nor the current object {desc(new)}")
    c = mounter(store_url, "--scan-interval", "1", env={"AGENTFS_ADOPT_GRACE": "0"})
    wait_for(lambda: read_or_none(c.path / "ws" / "t.bin") == new, 10.0, "external overwrite adopted")
    assert (c.path / "ws" / "t.bin").stat().st_size == len(new)


# ---------------------------------------------------------------- CLI and library


def test_cli_put_appears_in_mount(mount: Mount, store_url: str, tmp_path: Path, record_property) -> None:
    (mount.path / "ws").mkdir()
    data = random.Random(5).randbytes(123_456)
    local = tmp_path / "upload.bin"
    local.write_bytes(data)
    r = agentfs_cli("put", str(local), f"{store_url}/ws/put.bin")
    assert r.returncode == 0, r.stderr.decode()
    t = wait_for(lambda: read_or_none(mount.path / "ws" / "put.bin") == data, what="put.bin in the mount")
    report_latency(record_property, "cli_put_latency_s", t)
    # And again: an overwrite by the CLI replaces what the mount shows.
    data2 = b"second version\n"
    r = agentfs_cli("put", "-", f"{store_url}/ws/put.bin", input=data2)
    assert r.returncode == 0, r.stderr.decode()
    wait_for(lambda: read_or_none(mount.path / "ws" / "put.bin") == data2, what="CLI overwrite in the mount")


def test_mount_write_readable_with_cli_cat(mount: Mount, store_url: str) -> None:
    (mount.path / "ws").mkdir()
    (mount.path / "ws" / "sub").mkdir()
    data = random.Random(6).randbytes(300_000)
    write_file(mount.path / "ws" / "sub" / "out.bin", data)
    r = agentfs_cli("cat", f"{store_url}/ws/sub/out.bin")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == data, f"agentfs cat gave {desc(r.stdout)}, expected {desc(data)}"
    r = agentfs_cli("ls", f"{store_url}/ws/sub")
    assert r.returncode == 0, r.stderr.decode()
    assert "out.bin" in r.stdout.decode()


def test_library_write_appears_in_mount(mount: Mount, store_url: str, record_property) -> None:
    import agentfs

    (mount.path / "ws").mkdir()
    data = random.Random(7).randbytes(40_000)
    with agentfs.open_workspace(store_url, "ws") as w:
        w.write_bytes("lib.bin", data)
        t = wait_for(lambda: read_or_none(mount.path / "ws" / "lib.bin") == data, what="lib.bin in the mount")
        report_latency(record_property, "library_write_latency_s", t)
        # The other direction: the library sees a write made through the mount.
        write_file(mount.path / "ws" / "from-mount.txt", b"hello library\n")
        # the mount's close group-commits its record right after it returns
        # (deferred group commit); the library sees it with that batch.
        wait_for(lambda: _lib_read_or_none(w, "from-mount.txt") == b"hello library\n",
                 what="from-mount.txt in the library")


def _lib_read_or_none(w: Any, path: str) -> bytes | None:
    try:
        return w.read_bytes(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def test_file_open_on_a_survives_rmdir_of_its_parent_on_b(pair: Pair) -> None:
    """A new file still open on A (not yet committed) whose parent B removes (B saw
    it empty): A's close keeps the bytes as a conflict copy, nothing is dropped,
    and the close fails with ESTALE (the bytes are not at the path)."""
    (pair.wa / "out").mkdir()
    wait_for(lambda: (pair.wb / "out").is_dir(), what="out on B")
    data = os.urandom(5000)
    f = open(pair.wa / "out" / "result.json", "wb")
    f.write(data)
    os.rmdir(pair.wb / "out")  # B sees an empty directory
    time.sleep(1.5)  # A's tail applies B's rmdir while the file is open
    with pytest.raises(OSError) as lost:
        f.close()
    assert lost.value.errno == errno.ESTALE
    found = [p for p in pair.wa.rglob("*") if p.is_file() and p.read_bytes() == data]
    assert found, f"bytes lost; tree on A: {sorted(map(str, pair.wa.rglob('*')))}"
    assert ".conflict-" in found[0].name
    assert os.getxattr(found[0], "user.agentfs.conflict")
