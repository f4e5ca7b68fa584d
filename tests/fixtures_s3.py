"""A real S3 API for tests: moto's server on 127.0.0.1, one per session.

Fixtures:

- ``moto_endpoint`` (session): starts ``moto.server.ThreadedMotoServer`` on a
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


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server running in this process for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    log.info("moto S3 server at %s", endpoint)
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
        server.stop()


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
