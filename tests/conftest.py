"""Shared test fixtures.

Fixtures live in small plugin modules so that each has one owner:

- ``tests/fixtures_s3.py``: the moto S3 server (session), buckets, store URLs;
- ``tests/fixtures_mount.py``: real FUSE mounts of ``agentfs mount --foreground``;
- ``tests/fixtures_api.py``: store URLs of every kind and Python API clients;
- ``tests/fixtures_locks.py``: lock-holding child processes.
"""

pytest_plugins = ["tests.fixtures_s3", "tests.fixtures_mount", "tests.fixtures_api", "tests.fixtures_locks"]
