"""Settings: every ``AGENTFS_*`` environment variable, and the mount options.

:class:`Settings` is the one model of the tuning variables (each field is the
variable without its ``AGENTFS_`` prefix; docs/CONFIGURATION.md lists them);
:func:`settings` is the one way to read them.  :class:`MountConfig` is the
model of what ``agentfs mount`` is given on its command line.

The embedded default store is a local directory under the user's data dir
(or ``$AGENTFS_HOME``), so ``agentfs mount MOUNTPOINT`` works with no S3 at all.

Parsing is the one the variables always had: numbers as Python's ``float`` /
``int`` read them, the two switches by their own word lists, and the
write-back knobs leniently (a bad value is logged and the default used).
Any other invalid value raises :class:`ConfigError`, one line naming the
variable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentfs.errors import InvalidArgument

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "MountConfig",
    "Settings",
    "default_cache_dir",
    "default_store_path",
    "default_store_url",
    "env_name",
    "reload_settings",
    "settings",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "AGENTFS_"

# The lenient write-back knobs and their defaults: a bad or negative value is
# logged and replaced by the default instead of failing the mount, as always.
_LENIENT: dict[str, float] = {
    "writeback_delay": 0.2,
    "writeback_max_age": 5.0,
    "writeback_quiet": 0.05,
    "writeback_parallel": 16,
    "writeback_busy_parallel": 2,
    "writeback_max_queued": 4096,
}
_FLOATS = ("group_commit_delay", "group_commit_max_age", "garbage_delay", "adopt_grace",
           "intent_grace", "open_mark_live", "barrier_timeout", "prune_interval", "state_md_interval")


class ConfigError(InvalidArgument):
    """An ``AGENTFS_*`` variable has an invalid value (exit code 64, EINVAL)."""


def env_name(field: str) -> str:
    """The environment variable of :class:`Settings` field ``field``."""
    return ENV_PREFIX + field.upper()


class Settings(BaseSettings):
    """Every ``AGENTFS_*`` tuning variable, typed, with its default.

    Read it with :func:`settings`, not by constructing it: modules that read
    a value at import keep it for the life of the process, as they always did.
    Constructing raises ``pydantic.ValidationError``; :func:`settings` turns
    that into :class:`ConfigError`.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    home: str = Field(default="", description=(
        "Base directory of the embedded default store (`$AGENTFS_HOME/store`) and of the cache "
        "(`$AGENTFS_HOME/cache`); empty: the user's data and cache directories"))
    agent: str = Field(default="", description=(
        "Agent name recorded for this process's changes (a mount reads it from each calling "
        "process); empty: the mount's `--agent`, then `uid:<uid>`"))
    log: str = Field(default="WARNING", description=(
        "Log level of the `agentfs` command (a `logging` level name, any case)"))
    faults: str = Field(default="", description=(
        "Fault injection (tests and soak runs only), e.g. `seed=1,rate=0.05,spike=0.01,latency=0.2,"
        "after=0.5,outage_file=/tmp/x`; parsed when a store is opened (agentfs/store/faults.py)"))
    retry: str = Field(default="", description=(
        "Store retry policy (tests and soak runs only), e.g. `deadline=5,base=0.05,cap=1`; parsed "
        "when a store is opened (agentfs/store/retry.py)"))
    group_commit: bool = Field(default=True, description=(
        "Deferred journal commits; `0`, `off`, `no` or `false` makes each close wait for its record"))
    group_commit_delay: float = Field(default=0.05, description=(
        "The flusher writes the queue once no new deferred record came for this long (s)"))
    group_commit_max_age: float = Field(default=0.25, description=(
        "...or once the oldest queued record waited this long (s), during a stream of closes"))
    group_commit_max: int = Field(default=64, description=(
        "The flusher writes at once when this many records are waiting"))
    writeback_delay: float = Field(default=0.2, description=(
        "Write-back: a queued file is uploaded once no close of it came for this long (s)"))
    writeback_max_age: float = Field(default=5.0, description=(
        "Write-back: a queued file is uploaded at the latest after this long (s), even while busy"))
    writeback_quiet: float = Field(default=0.05, description=(
        "Write-back: the mount counts as busy until it served no request for this long (s)"))
    writeback_parallel: int = Field(default=16, description=(
        "Write-back: concurrent uploads (at least 1)"))
    writeback_busy_parallel: int = Field(default=2, description=(
        "Write-back: concurrent background uploads while the mount is busy (at least 1)"))
    writeback_max_queued: int = Field(default=4096, description=(
        "Write-back: beyond this many queued files a close uploads synchronously"))
    writeback_fsync: bool = Field(default=False, description=(
        "Write-back: fsync data, record and directory before a close returns; "
        "anything but `0`, `off`, `no`, `false` or empty turns it on"))
    writeback_pause_file: str = Field(default="", description=(
        "Tests only: while this file exists the background uploader does not upload"))
    compact_every: int = Field(default=500, description=(
        "A state snapshot is written after every this many commits (at least 1; empty: the default)"))
    garbage_delay: float = Field(default=0.0, description=(
        "Seconds the garbage collector waits before draining pending deletes (0: at once)"))
    adopt_grace: float = Field(default=30.0, description=(
        "Seconds an object must exist unknown to the journal before a scan adopts it"))
    intent_grace: float = Field(default=600.0, description=(
        "Seconds after which another mount's unfinished rename intent is taken as interrupted"))
    open_mark_live: float = Field(default=60.0, description=(
        "Seconds after which an open-file mark not refreshed belongs to a mount that is gone"))
    barrier_timeout: float = Field(default=10.0, description=(
        "Seconds a local mount may take to answer a barrier before the client goes on without it"))
    prune_interval: float = Field(default=10.0, description=(
        "Seconds between a mount's prune passes of expired agent state"))
    state_md_interval: float = Field(default=3.0, description=(
        "Seconds between a mount's rewrites of STATE.md (at most this often)"))

    @field_validator(*_FLOATS, mode="before")
    @classmethod
    def _python_float(cls, v: Any) -> Any:
        # Python's float() (as the variables were always read): "1_000", " 2 ", "inf".
        return float(v) if isinstance(v, str) else v

    @field_validator("group_commit_max", mode="before")
    @classmethod
    def _python_int(cls, v: Any) -> Any:
        return int(v) if isinstance(v, str) else v

    @field_validator("compact_every", mode="before")
    @classmethod
    def _compact_every(cls, v: Any) -> Any:
        return max(1, int(v or 500)) if isinstance(v, str) else v

    @field_validator("group_commit", mode="before")
    @classmethod
    def _on_unless_off(cls, v: Any) -> Any:
        return v not in ("0", "off", "no", "false") if isinstance(v, str) else v

    @field_validator("writeback_fsync", mode="before")
    @classmethod
    def _off_unless_on(cls, v: Any) -> Any:
        return v not in ("0", "off", "no", "false", "") if isinstance(v, str) else v

    @field_validator(*_LENIENT, mode="before")
    @classmethod
    def _lenient(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, str):
            return v
        name = info.field_name or ""
        default = _LENIENT[name]
        try:
            f = float(v)
        except ValueError:
            f = -1.0
        if not f >= 0:
            log.warning("%s=%r is not a non-negative number; using %s", env_name(name), v, default)
            f = default
        if isinstance(default, int):
            n = int(f)
            return max(1, n) if name.endswith("parallel") else n
        return f

    @field_validator("log", mode="after")
    @classmethod
    def _level_name(cls, v: str) -> str:
        if v.upper() not in logging.getLevelNamesMapping():
            raise ValueError("not a log level (debug, info, warning, error, critical)")
        return v.upper()


def _read() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{env_name(field)}={err.get('input')!r}: {msg}")
        raise ConfigError("invalid setting " + "; ".join(problems)) from None


def _snapshot() -> tuple[tuple[str, str], ...]:
    # pydantic-settings matches names case-insensitively, so the key does too.
    return tuple((k, v) for k, v in os.environ.items() if k[:len(ENV_PREFIX)].upper() == ENV_PREFIX)


_cached: tuple[tuple[tuple[str, str], ...], Settings] | None = None


def settings() -> Settings:
    """The settings of the current environment.

    Cached, and read again whenever an ``AGENTFS_*`` variable of this process
    changed (a test's ``monkeypatch.setenv``, the MCP command naming its
    agent), so a caller always sees the environment as it is now.  Safe from
    any thread: a race at most reads the environment twice.

    Raises :class:`ConfigError` when a variable has an invalid value.
    """
    global _cached
    key = _snapshot()
    hit = _cached
    if hit is not None and hit[0] == key:
        return hit[1]
    value = _read()
    _cached = (key, value)
    return value


def reload_settings() -> Settings:
    """Read the environment again now (tests); raises :class:`ConfigError`."""
    global _cached
    _cached = None
    return settings()


def default_store_path() -> Path:
    """``$AGENTFS_HOME/store`` or ``<user data dir>/agentfs/store``."""
    home = settings().home
    base = Path(home) if home else Path(platformdirs.user_data_dir("agentfs"))
    return base / "store"


def default_store_url() -> str:
    return f"file://{default_store_path()}"


def default_cache_dir() -> Path:
    home = settings().home
    return Path(home) / "cache" if home else Path(platformdirs.user_cache_dir("agentfs"))


class MountConfig(BaseModel):
    """Everything ``agentfs mount`` needs (its options: docs/CONFIGURATION.md)."""

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
