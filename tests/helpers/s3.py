"""A real S3 API for tests: moto's server on 127.0.0.1, one per session.

Fixtures:

- ``moto_endpoint`` (session): starts ``python -m moto.server`` on a
  free port and points the process environment at it (``AWS_ENDPOINT_URL``,
  fake credentials, region), so stores opened in this process *and* mount
  daemons started as subprocesses (which inherit ``os.environ``) use it.
  The environment is restored at the end of the session.
- ``s3_client`` (session): a boto3 S3 client on the moto server.
- ``s3_url`` (function): ``s3://BUCKET`` of a fresh, uniquely named bucket.
  Isolation comes from a new bucket per test, which is much cheaper than
  resetting moto.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["MOTO_ENV"]

log = logging.getLogger(__name__)

#: Environment every S3 test (and every mount subprocess) sees.
MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: Variables that would redirect or override the test setup if inherited.
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_SECURITY_TOKEN")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto S3 server (a subprocess, stopped by its PID) for the session.

    Not a thread of the test process: a test that mmaps a file on the mount
    takes page faults whose FUSE reads need the S3 server, and a server thread
    inside the faulting process can deadlock on that process's memory lock.
    """
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    logf = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(logf, "wb") as out:  # the child keeps its own copy
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start: {logf.read_text()[-2000:]}") from None
            time.sleep(0.1)
    log.info("moto S3 server at %s (pid %d)", endpoint, proc.pid)
    env = {**MOTO_ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in (*env, *_CLEARED)}
    os.environ.update(env)
    for k in _CLEARED:
        os.environ.pop(k, None)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_client(moto_endpoint: str) -> Any:
    """A boto3 S3 client talking to the moto server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=MOTO_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """Name of a fresh, empty bucket on the moto server."""
    name = f"agentfs-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_url(s3_bucket: str) -> str:
    """``s3://BUCKET`` of a fresh, empty bucket on the moto server."""
    return f"s3://{s3_bucket}"
