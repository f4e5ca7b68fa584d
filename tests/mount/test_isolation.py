"""Isolation and secrets.

- a mount of one workspace (``--workspace``) cannot reach another workspace's
  files nor agentfs's own records (``.agentfs/``), by path, symlink or rename;
- permission bits are enforced by the kernel (``default_permissions``) for
  other users; a test runs commands as ``nobody`` (``setpriv``) on a mount a
  root daemon serves (``allow_other``);
- S3 credentials come from the environment or a credentials file, never from
  the command line, and never appear in the mount's log, error messages, the
  journal, the cache or ``ps`` output, even after failing requests.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import agentfs
from agentfs.store import open_store
from tests.helpers.mount import REPO, Mount

NOBODY = 65534


@pytest.fixture
def local(tmp_path: Path) -> str:
    d = tmp_path / "store"
    d.mkdir()
    return f"file://{d}"


def test_single_workspace_mount_cannot_reach_others(mounter: Callable[..., Mount], local: str) -> None:
    a = agentfs.open_workspace(local, "alpha")
    a.write_bytes("secret.txt", b"alpha only")
    a.close()
    b = agentfs.open_workspace(local, "beta")
    b.write_bytes("mine.txt", b"beta")
    b.close()
    m = mounter(local, "--workspace", "beta")
    assert os.listdir(m.path) == ["mine.txt"]
    for p in (".agentfs", "alpha", ".agentfs/alpha/log", "../alpha/secret.txt", ".agentfs-tmp"):
        assert not os.path.exists(m.path / p), p
    # a symlink is resolved by the kernel against the host tree, never the store
    os.symlink("../alpha/secret.txt", m.path / "link")
    with pytest.raises(OSError) as ei:
        (m.path / "link").read_bytes()
    assert ei.value.errno == errno.ENOENT
    os.symlink("/../../.agentfs/alpha/log", m.path / "abs")
    assert not os.path.exists(m.path / "abs")
    # the API and the CLI refuse paths leaving the workspace
    c = agentfs.open_workspace(local, "beta")
    try:
        for bad in ("../alpha/secret.txt", "../.agentfs/alpha", "/../alpha/secret.txt"):
            with pytest.raises(OSError) as ei:
                c.read_bytes(bad)
            assert ei.value.errno in (errno.EINVAL, errno.ENOENT), bad
    finally:
        c.close()


def test_whole_store_mount_hides_records_and_refuses_cross_workspace_rename(
        mounter: Callable[..., Mount], local: str) -> None:
    m = mounter(local)
    (m.path / "a").mkdir()
    (m.path / "b").mkdir()
    (m.path / "a" / "f").write_bytes(b"1")
    assert sorted(os.listdir(m.path)) == ["a", "b"]
    with pytest.raises(OSError) as ei:
        os.rename(m.path / "a" / "f", m.path / "b" / "f")
    assert ei.value.errno == errno.EXDEV
    with pytest.raises(OSError):
        os.stat(m.path / ".agentfs")


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd],
                          capture_output=True, timeout=60)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="agentfs-iso-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as another user")
def test_permission_bits_enforced_for_another_user(mounter: Callable[..., Mount], local: str,
                                                   open_dir: Path) -> None:
    m = mounter(local, mountpoint=open_dir / "mnt")
    ws = m.path / "ws"
    ws.mkdir(mode=0o755)
    os.chmod(ws, 0o755)
    private = ws / "private"
    private.write_bytes(b"root only")
    os.chmod(private, 0o600)
    public = ws / "public"
    public.write_bytes(b"everyone may read")
    os.chmod(public, 0o644)
    shared = ws / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)

    r = _as_nobody("cat", str(private))
    assert r.returncode != 0 and b"Permission denied" in r.stderr, r
    r = _as_nobody("cat", str(public))
    assert r.returncode == 0 and r.stdout == b"everyone may read", r
    r = _as_nobody("sh", "-c", f"echo x >> {public}")
    assert r.returncode != 0 and b"Permission denied" in r.stderr, r
    r = _as_nobody("touch", str(ws / "new"))
    assert r.returncode != 0 and b"Permission denied" in r.stderr, r
    r = _as_nobody("rm", "-f", str(private))
    assert r.returncode != 0, r
    r = _as_nobody("sh", "-c", f"echo hello > {shared}/by-nobody && cat {shared}/by-nobody")
    assert r.returncode == 0 and r.stdout == b"hello\n", r
    st = os.stat(shared / "by-nobody")
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    r = _as_nobody("chmod", "777", str(private))
    assert r.returncode != 0 and b"Operation not permitted" in r.stderr, r
    assert private.read_bytes() == b"root only" and oct(private.stat().st_mode & 0o777) == "0o600"


SECRET = "agentfsTESTsecret/x9Qv+ZZq0123456789abcdefABCDEF"


def _secret_free(*texts: bytes | str) -> None:
    for t in texts:
        b = t.encode() if isinstance(t, str) else t
        assert SECRET.encode() not in b, "the secret leaked"


def test_credentials_never_leak(mounter: Callable[..., Mount], s3_url: str, tmp_path: Path,
                                request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """An S3 session with failing requests, the secret from the environment:
    it is in no log line, error, journal record, cache file or command line."""
    s3 = request.getfixturevalue("s3_client")
    bucket = s3_url[len("s3://"):]
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": "AKIAAGENTFSTEST"}
    m = mounter(s3_url, "--log-level", "debug", env=env)
    ws = m.path / "ws"
    ws.mkdir()
    (ws / "f").write_bytes(b"data")
    (ws / "g").write_bytes(b"more")
    os.setxattr(ws / "f", "user.k", b"v")
    # failing requests: an object deleted behind agentfs's back (404 on read);
    # read on a second mount, as the writer's mount serves g from its cache
    m2 = mounter(s3_url, "--log-level", "debug", env=env)
    assert (m2.path / "ws" / "f").read_bytes() == b"data"
    s3.delete_object(Bucket=bucket, Key="ws/g")
    with pytest.raises(OSError):
        (m2.path / "ws" / "g").read_bytes()
    cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout
    m.expect_errors = m2.expect_errors = True  # the vanished object is logged
    m.unmount()
    m2.unmount()
    logs = [m.log_text(), m.log.with_suffix(".err").read_bytes(),
            m2.log_text(), m2.log.with_suffix(".err").read_bytes()]
    # the CLI with failing requests (a missing bucket, a missing file)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    cli_env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFS_LOG="debug")
    outs = []
    for args in (["ls", "s3://no-such-bucket-agentfs/ws"], ["cat", f"{s3_url}/ws/missing"],
                 ["check", s3_url]):
        r = subprocess.run([sys.executable, "-m", "agentfs", *args], capture_output=True, env=cli_env,
                           cwd=str(REPO), timeout=120)
        outs += [r.stdout, r.stderr]
    # the journal and every other object in the bucket
    objects = [s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
               for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    cache = [p.read_bytes() for p in m.cache_dir.rglob("*") if p.is_file()]
    assert any(b"journal" in x or b"records" in x for x in objects)
    _secret_free(cmdline, ps, *logs, *outs, *objects, *cache)
    assert b"debug" in cmdline or b"--log-level" in cmdline  # we did look at the real command line


def test_credentials_from_a_file(mounter: Callable[..., Mount], s3_url: str, tmp_path: Path) -> None:
    """No credentials in the environment: the standard credentials file works."""
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = AKIAFILE\naws_secret_access_key = {SECRET}\n")
    creds.chmod(0o600)
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    m = mounter(s3_url, env=env)
    (m.path / "ws").mkdir()
    (m.path / "ws" / "f").write_bytes(b"via file")
    assert (m.path / "ws" / "f").read_bytes() == b"via file"
    m.unmount()
    _secret_free(m.log_text(), Path(f"{m.log.with_suffix('.err')}").read_bytes())


def test_credentials_refused_on_the_command_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for url in (f"s3://AKIA:{SECRET}@bucket/ws", f"s3://user:{SECRET}@bucket"):
        r = subprocess.run([sys.executable, "-m", "agentfs", "ls", f"{url}"], capture_output=True,
                           env=env, cwd=str(REPO), timeout=60)
        assert r.returncode == 64, r
        _secret_free(r.stdout, r.stderr)
        with pytest.raises(OSError) as ei:
            open_store(url)
        _secret_free(str(ei.value))
    r = subprocess.run([sys.executable, "-m", "agentfs", "mount", "--help"], capture_output=True, env=env,
                       cwd=str(REPO), timeout=60)
    assert b"secret" not in r.stdout.lower() and b"access-key" not in r.stdout.lower()
