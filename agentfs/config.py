"""Settings: where the store is, where the cache is, who the agent is.

The embedded default store is a local directory under the user's data dir,
so ``agentfs mount MOUNTPOINT`` works with no S3 at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MountConfig", "default_cache_dir", "default_store_path", "default_store_url"]


def default_store_path() -> Path:
    """``$AGENTFS_HOME/store`` or ``<user data dir>/agentfs/store``."""
    home = os.environ.get("AGENTFS_HOME")
    base = Path(home) if home else Path(platformdirs.user_data_dir("agentfs"))
    return base / "store"


def default_store_url() -> str:
    return f"file://{default_store_path()}"


def default_cache_dir() -> Path:
    home = os.environ.get("AGENTFS_HOME")
    return Path(home) / "cache" if home else Path(platformdirs.user_cache_dir("agentfs"))


class MountConfig(BaseModel):
    """Everything ``agentfs mount`` needs."""

    model_config = ConfigDict(extra="forbid")

    store_url: str = Field(default_factory=default_store_url)
    mountpoint: str
    workspace: str | None = None
    foreground: bool = False
    agent: str = ""
    cache_dir: str = Field(default_factory=lambda: str(default_cache_dir()))
    read_only: bool = False
    endpoint_url: str | None = None
    allow_other: bool = False
    scan_interval: float = 60.0
    lease_ttl: float = Field(default=30.0, gt=0)  # locks: seconds a lease lives unrenewed
    log_file: str | None = None
    log_level: str = "info"
    writeback: bool = False  # close returns once queued on local disk (agentfs/writeback.py)
    kernel_locks: bool = True  # flock/fcntl across mounts (agentfs/locks/kernel.py)
