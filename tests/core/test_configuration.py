"""docs/CONFIGURATION.md against the code, and the settings' parsing and errors.

Every ``AGENTFS_*`` setting has one row (type, default and meaning from the
model), every ``agentfs mount`` option has one row (field, default, environment
variable from the command), and an invalid value is one line naming the
variable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from agentfs import config, errors
from agentfs.cli import app
from agentfs.config import ConfigError, MountConfig, Settings, env_name, reload_settings, settings

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "CONFIGURATION.md"


def _rows(header: str) -> list[list[str]]:
    """The rows of the table whose header line starts with ``header``."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _unquote(cell: str) -> str:
    text = cell.strip("`")
    return "" if text == '""' else text


@pytest.fixture(autouse=True)
def _fresh_settings():
    reload_settings()
    yield
    reload_settings()


def test_every_setting_has_one_row_matching_the_model() -> None:
    rows = _rows("| variable |")
    names = [r[0].strip("`") for r in rows]
    assert len(names) == len(set(names)), "a setting is listed twice"
    assert set(names) == {env_name(f) for f in Settings.model_fields}
    by_name = {r[0].strip("`"): r for r in rows}
    for field, info in Settings.model_fields.items():
        _, type_cell, default_cell, meaning = by_name[env_name(field)]
        assert info.annotation is not None
        assert type_cell == info.annotation.__name__, field
        assert meaning == info.description, field
        # the documented default, read as the environment would give it, is the default
        parsed = Settings(**{field: _unquote(default_cell)})
        assert getattr(parsed, field) == info.default, field


def test_every_variable_the_package_reads_is_documented() -> None:
    documented = {r[0].strip("`") for r in _rows("| variable |")}
    documented |= {r[3].strip("`") for r in _rows("| option |") if r[3]}
    used: set[str] = set()
    for path in (REPO / "agentfs").rglob("*.py"):
        used |= set(re.findall(r"AGENTFS_[A-Z][A-Z_]*[A-Z]", path.read_text()))
    assert used <= documented, sorted(used - documented)


def _cli_default(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "*(none)*"
    return '`""`' if value == "" else f"`{value}`"


def test_every_mount_option_has_one_row_matching_the_command() -> None:
    rows = _rows("| option |")
    cmd = typer.main.get_command(app).commands["mount"]  # type: ignore[attr-defined]
    options = {p.name: p for p in cmd.params if p.param_type_name == "option"}
    documented = {r[1]: r for r in rows if r[0].startswith("`--")}
    assert len(documented) == len([r for r in rows if r[0].startswith("`--")])
    assert set(documented) == set(options)
    for name, p in options.items():
        flags, _, default, env, _ = documented[name]
        assert flags == ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts]), name
        assert default == _cli_default(p.default), name
        assert env.strip("`") == (p.envvar or ""), name
    # positional arguments and options together are exactly MountConfig's fields
    assert {r[1] for r in rows} == set(MountConfig.model_fields)


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("AGENTFS_"):
            monkeypatch.delenv(name)
    s = reload_settings()
    assert s.group_commit is True and s.group_commit_delay == 0.05 and s.compact_every == 500
    assert s.writeback_fsync is False and s.writeback_parallel == 16 and s.log == "WARNING"


def test_values_parse_as_they_always_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFS_GROUP_COMMIT", "False")  # only the four words turn it off
    monkeypatch.setenv("AGENTFS_WRITEBACK_FSYNC", "")
    monkeypatch.setenv("AGENTFS_COMPACT_EVERY", "")
    monkeypatch.setenv("AGENTFS_GARBAGE_DELAY", " 1_000 ")
    monkeypatch.setenv("AGENTFS_WRITEBACK_PARALLEL", "0.5")
    monkeypatch.setenv("AGENTFS_WRITEBACK_DELAY", "-1")
    monkeypatch.setenv("AGENTFS_LOG", "debug")
    s = settings()
    assert s.group_commit is True and s.writeback_fsync is False and s.compact_every == 500
    assert s.garbage_delay == 1000.0 and s.writeback_parallel == 1 and s.writeback_delay == 0.2
    assert s.log == "DEBUG"
    monkeypatch.setenv("AGENTFS_GROUP_COMMIT", "off")
    monkeypatch.setenv("AGENTFS_WRITEBACK_FSYNC", "1")
    monkeypatch.setenv("AGENTFS_COMPACT_EVERY", "0")
    s = settings()  # the environment changed: read again without being asked
    assert s.group_commit is False and s.writeback_fsync is True and s.compact_every == 1


def test_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTFS_AGENT", "first")
    assert settings().agent == "first"
    assert settings() is settings()  # cached while nothing changes
    monkeypatch.setenv("AGENTFS_AGENT", "second")
    assert settings().agent == "second"
    monkeypatch.setenv("AGENTFS_HOME", str(tmp_path))
    assert config.default_store_path() == tmp_path / "store"
    assert config.default_cache_dir() == tmp_path / "cache"


@pytest.mark.parametrize(("name", "value"), [
    ("AGENTFS_GROUP_COMMIT_DELAY", "soon"),
    ("AGENTFS_GROUP_COMMIT_MAX", "1.5"),
    ("AGENTFS_COMPACT_EVERY", "many"),
    ("AGENTFS_ADOPT_GRACE", ""),
    ("AGENTFS_LOG", "loud"),
])
def test_an_invalid_value_is_one_line_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        settings()
    e = caught.value
    assert isinstance(e, errors.InvalidArgument) and e.exit_code == 64
    assert "\n" not in str(e) and f"{name}={value!r}" in str(e)


def test_a_command_stops_at_start_naming_the_variable(tmp_path: Path) -> None:
    """Most settings are read while agentfs is imported: the command does nothing."""
    env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFS_GROUP_COMMIT_DELAY="soon",
               AGENTFS_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "agentfs", "where"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and not r.stdout
    assert r.stderr.strip().splitlines()[-1].endswith(
        "invalid setting AGENTFS_GROUP_COMMIT_DELAY='soon': could not convert string to float: 'soon'")
