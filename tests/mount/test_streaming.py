"""streaming upload of a file written sequentially (agentfs/streaming.py).

Real FUSE mounts on moto S3.  The evidence is at the request level: moto's
list of unfinished multipart uploads shows the stream's parts going up before
close(), and empty again once the upload completed or was aborted.  No timing
assertions: every wait polls a store-side state with a generous limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentfs.check import check_store
from agentfs.store import open_store
from tests.helpers.mount import Mount

MiB = 1 << 20


def _bucket(s3_url: str) -> str:
    return s3_url[len("s3://"):].split("/")[0]


def _uploads(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    return [u for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"] == key]


def _parts(s3: Any, bucket: str, key: str) -> int:
    ups = _uploads(s3, bucket, key)
    if not ups:
        return 0
    return len(s3.list_parts(Bucket=bucket, Key=key, UploadId=ups[0]["UploadId"]).get("Parts", []))


def _until(what: str, cond: Callable[[], bool], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _write(fd: int, data: bytes, chunk: int = MiB) -> None:
    for off in range(0, len(data), chunk):
        view = memoryview(data)[off:off + chunk]
        while view:
            n = os.write(fd, view)
            view = view[n:]


def _object(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_parts_go_up_while_writing_and_the_file_round_trips(
        mounter: Callable[..., Mount], s3_url: str, s3_client: Any) -> None:
    """A 40 MiB file written in 1 MiB writes: parts are in the store before
    close(); close completes that upload (no upload left) and the object is
    byte-exact, also when read back through a fresh mount."""
    bucket = _bucket(s3_url)
    data = random.Random(1).randbytes(40 * MiB + 12345)
    m = mounter(s3_url)
    (m.path / "ws").mkdir()
    fd = os.open(m.path / "ws" / "big.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write(fd, data)
        _until("two parts uploaded before close", lambda: _parts(s3_client, bucket, "ws/big.bin") >= 2)
        assert not any(o["Key"] == "ws/big.bin"
                       for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])), \
            "the object is visible before close"
    finally:
        os.close(fd)
    assert _uploads(s3_client, bucket, "ws/big.bin") == [], "the streamed upload was not completed"
    assert _object(s3_client, bucket, "ws/big.bin") == data
    head = s3_client.head_object(Bucket=bucket, Key="ws/big.bin")
    assert head["ETag"].strip('"').endswith("-6"), head["ETag"]  # 5 streamed parts + the tail
    m.unmount()
    m2 = mounter(s3_url)
    assert (m2.path / "ws" / "big.bin").read_bytes() == data


def test_fsync_then_more_appends(mounter: Callable[..., Mount], s3_url: str, s3_client: Any) -> None:
    """fsync completes the stream; appends after it are uploaded at close
    (whole file): the final object has every byte."""
    bucket = _bucket(s3_url)
    rng = random.Random(2)
    a, b = rng.randbytes(20 * MiB), rng.randbytes(3 * MiB)
    m = mounter(s3_url)
    (m.path / "ws").mkdir()
    fd = os.open(m.path / "ws" / "f.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        _write(fd, a)
        os.fsync(fd)
        assert _object(s3_client, bucket, "ws/f.bin") == a
        _write(fd, b)
    finally:
        os.close(fd)
    assert _object(s3_client, bucket, "ws/f.bin") == a + b
    assert _uploads(s3_client, bucket, "ws/f.bin") == []


def test_write_going_backwards_aborts_and_falls_back(
        mounter: Callable[..., Mount], s3_url: str, s3_client: Any) -> None:
    """A write below the uploaded prefix stops the stream: its multipart upload
    is aborted at once, and close uploads the whole file, patch included."""
    bucket = _bucket(s3_url)
    data = bytearray(random.Random(3).randbytes(30 * MiB))
    m = mounter(s3_url)
    (m.path / "ws").mkdir()
    fd = os.open(m.path / "ws" / "h.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _write(fd, bytes(data))
        _until("a part uploaded", lambda: _parts(s3_client, bucket, "ws/h.bin") >= 1)
        os.pwrite(fd, b"HEADER", 100)  # e.g. a size field patched at the end
        data[100:106] = b"HEADER"
        _until("the multipart upload aborted", lambda: _uploads(s3_client, bucket, "ws/h.bin") == [])
    finally:
        os.close(fd)
    assert _object(s3_client, bucket, "ws/h.bin") == bytes(data)
    assert _uploads(s3_client, bucket, "ws/h.bin") == []


def test_truncate_below_the_prefix_aborts(mounter: Callable[..., Mount], s3_url: str,
                                          s3_client: Any) -> None:
    bucket = _bucket(s3_url)
    data = random.Random(4).randbytes(30 * MiB)
    m = mounter(s3_url)
    (m.path / "ws").mkdir()
    fd = os.open(m.path / "ws" / "t.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _write(fd, data)
        _until("a part uploaded", lambda: _parts(s3_client, bucket, "ws/t.bin") >= 1)
        os.ftruncate(fd, 5 * MiB)
        _until("the multipart upload aborted", lambda: _uploads(s3_client, bucket, "ws/t.bin") == [])
    finally:
        os.close(fd)
    assert _object(s3_client, bucket, "ws/t.bin") == data[:5 * MiB]


def test_rename_while_streaming_uploads_under_the_new_name(
        mounter: Callable[..., Mount], s3_url: str, s3_client: Any) -> None:
    """The stream targets the old key: after a rename the flush aborts it and
    uploads the whole file to the new key; nothing is left at the old one."""
    bucket = _bucket(s3_url)
    data = random.Random(5).randbytes(30 * MiB)
    m = mounter(s3_url)
    ws = m.path / "ws"
    ws.mkdir()
    fd = os.open(ws / "a.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        _write(fd, data)
        _until("a part uploaded", lambda: _parts(s3_client, bucket, "ws/a.bin") >= 1)
        os.rename(ws / "a.bin", ws / "b.bin")
    finally:
        os.close(fd)
    assert (ws / "b.bin").read_bytes() == data
    assert not (ws / "a.bin").exists()
    _until("the multipart upload aborted", lambda: _uploads(s3_client, bucket, "ws/a.bin") == [])
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert "ws/a.bin" not in keys


def test_lost_race_keeps_a_conflict_copy_and_aborts(
        mounter: Callable[..., Mount], s3_url: str, s3_client: Any) -> None:
    """Two mounts create the same new file; B commits first.  A's streamed
    upload fails its If-None-Match on completion: it is aborted, B's version
    stays, and A's bytes are kept as a conflict copy."""
    bucket = _bucket(s3_url)
    mine = random.Random(6).randbytes(30 * MiB)
    a = mounter(s3_url)
    (a.path / "ws").mkdir()
    b = mounter(s3_url)
    fd = os.open(a.path / "ws" / "c.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write(fd, mine)
        _until("a part uploaded", lambda: _parts(s3_client, bucket, "ws/c.bin") >= 1)
        _until("mount B sees the workspace", lambda: (b.path / "ws").is_dir(), 30)
        (b.path / "ws" / "c.bin").write_bytes(b"theirs\n")
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    with pytest.raises(OSError) as told:
        os.close(fd)
    assert told.value.errno == errno.ESTALE, "the losing writer was not told at close"
    assert _uploads(s3_client, bucket, "ws/c.bin") == [], "the losing upload was not aborted"
    assert _object(s3_client, bucket, "ws/c.bin") == b"theirs\n"
    conflicts = [p for p in (a.path / "ws").iterdir() if ".conflict-" in p.name]
    assert len(conflicts) == 1, sorted(p.name for p in (a.path / "ws").iterdir())
    assert conflicts[0].read_bytes() == mine


def test_sigkill_mid_stream_keeps_the_old_version(
        mounter: Callable[..., Mount], s3_url: str, s3_client: Any) -> None:
    """A committed version is rewritten (O_TRUNC) sequentially; the daemon is
    SIGKILLed while parts are up but before close: the old version is intact,
    and the unfinished upload is only a temporary object that repair removes."""
    bucket = _bucket(s3_url)
    rng = random.Random(7)
    old, new = rng.randbytes(20 * MiB), rng.randbytes(40 * MiB)
    m = mounter(s3_url)
    (m.path / "ws").mkdir()
    (m.path / "ws" / "k.bin").write_bytes(old)
    fd = os.open(m.path / "ws" / "k.bin", os.O_WRONLY | os.O_TRUNC)
    try:
        _write(fd, new[:30 * MiB])
        _until("parts uploaded", lambda: _parts(s3_client, bucket, "ws/k.bin") >= 2)
        m.expect_errors = True
        os.kill(m.pid, 9)
        m.proc.wait(timeout=30)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    m.kill()
    assert _object(s3_client, bucket, "ws/k.bin") == old
    assert len(_uploads(s3_client, bucket, "ws/k.bin")) == 1
    m2 = mounter(s3_url)
    assert (m2.path / "ws" / "k.bin").read_bytes() == old
    m2.unmount()
    rep = check_store(open_store(s3_url))
    assert any("temporary" in n for n in rep.notices), rep.notices
    check_store(open_store(s3_url), repair=True)
    assert _uploads(s3_client, bucket, "ws/k.bin") == []


def test_small_and_local_files_do_not_stream(mounter: Callable[..., Mount], s3_url: str,
                                             s3_client: Any, tmp_path: Path) -> None:
    """Below the multipart threshold no multipart upload is ever started."""
    bucket = _bucket(s3_url)
    m = mounter(s3_url)
    (m.path / "ws").mkdir()
    data = random.Random(8).randbytes(12 * MiB)
    with open(m.path / "ws" / "s.bin", "wb", buffering=0) as f:
        _write(f.fileno(), data)
        assert _uploads(s3_client, bucket, "ws/s.bin") == []
    assert _object(s3_client, bucket, "ws/s.bin") == data
    assert "-" not in s3_client.head_object(Bucket=bucket, Key="ws/s.bin")["ETag"]


def _values(obj: Any, name: str) -> list[Any]:
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == name] + [x for v in obj.values() for x in _values(v, name)]
    if isinstance(obj, list):
        return [x for v in obj for x in _values(v, name)]
    return []


def test_the_entry_sha256_comes_from_the_streamed_parts(mounter: Callable[..., Mount], s3_url: str,
                                                        s3_client: Any) -> None:
    """The sha256 recorded in the journal (fed from the part buffers, in order,
    while parts were uploaded in parallel) is the file's."""
    import hashlib
    import json

    bucket = _bucket(s3_url)
    data = random.Random(9).randbytes(33 * MiB + 7)
    m = mounter(s3_url)
    (m.path / "ws").mkdir()
    with open(m.path / "ws" / "h.bin", "wb", buffering=0) as f:
        _write(f.fileno(), data, chunk=128 * 1024)
        os.fsync(f.fileno())
    assert s3_client.head_object(Bucket=bucket, Key="ws/h.bin")["ETag"].strip('"').endswith("-5")
    shas: list[Any] = []
    for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=".agentfs/ws/log/").get("Contents", []):
        shas += _values(json.loads(_object(s3_client, bucket, o["Key"])), "sha256")
    assert hashlib.sha256(data).hexdigest() in shas


def test_stream_under_transient_faults(mounter: Callable[..., Mount], s3_url: str,
                                       s3_client: Any) -> None:
    """Injected 500s, throttling, resets and timeouts (half of them after the
    request was carried out) on the part uploads and the completion: the retry
    layer repeats them, and every file is byte-exact with no upload left over."""
    bucket = _bucket(s3_url)
    env = {"AGENTFS_FAULTS": "seed=11,rate=0.2,after=0.5",
           "AGENTFS_RETRY": "deadline=30,base=0.005,cap=0.1"}
    m = mounter(s3_url, "--log-level", "debug", env=env)
    (m.path / "ws").mkdir()
    files = {f"f{i}.bin": random.Random(20 + i).randbytes(26 * MiB + i) for i in range(3)}
    for name, data in files.items():
        with open(m.path / "ws" / name, "wb", buffering=0) as f:
            _write(f.fileno(), data)
    for name, data in files.items():
        assert _object(s3_client, bucket, f"ws/{name}") == data, name
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
