"""Shared test fixtures.

Fixtures live in small plugin modules so that each has one owner:

- ``tests/fixtures_s3.py``: the moto S3 server (session), buckets, store URLs;
- ``tests/fixtures_mount.py``: real FUSE mounts of ``agentfs mount --foreground``.
"""

pytest_plugins = ["tests.fixtures_s3", "tests.fixtures_mount"]
