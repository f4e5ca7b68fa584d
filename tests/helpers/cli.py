"""The ``agentfs`` command run as a subprocess (``python -m agentfs``): one call, several concurrent calls, and checks of their output.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.mount import REPO

__all__ = ["AGENT", "cli", "cli_env", "cli_many", "lines", "ok", "one_line_error", "start_cli"]


AGENT = "tester"


def cli_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The environment of a CLI call: this one's, the test agent's name, ``extra`` on top."""
    env = dict(os.environ)
    env.pop("AGENTFS_LOG", None)
    env["AGENTFS_AGENT"] = AGENT
    env.update(extra or {})
    return env


def start_cli(args: tuple[str, ...], env: dict[str, str] | None, stdin: bool) -> subprocess.Popen:
    """Start ``python -m agentfs ARGS`` with piped output (and stdin when ``stdin``)."""
    return subprocess.Popen([sys.executable, "-m", "agentfs", *args], cwd=REPO, env=cli_env(env),
                            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cli(*args: str, env: dict[str, str] | None = None, input: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    """Run one ``agentfs`` call; kill it and raise TimeoutExpired after ``timeout`` s."""
    p = start_cli(args, env, input is not None)
    try:
        out, err = p.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def cli_many(*calls: tuple, env: dict[str, str] | None = None,
             timeout: float = 60) -> list[subprocess.CompletedProcess]:
    """Run several invocations concurrently; a call is ``(args...)`` or
    ``((args...), stdin_bytes)``."""
    procs = []
    for c in calls:
        args, data = (c[0], c[1]) if c and isinstance(c[0], tuple) else (c, None)
        procs.append((start_cli(args, env, data is not None), data))
    out = []
    for p, data in procs:
        try:
            o, e = p.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            o, e = p.communicate()
        out.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    return out


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Assert that a call exited 0 (the message shows its output); return it."""
    assert r.returncode == 0, f"{r.args[3:]} exited {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    return r


def one_line_error(r: subprocess.CompletedProcess, code: int) -> str:
    """Assert a call failed with ``code`` and one ``agentfs: ...`` line on stderr; return that line."""
    err = r.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    assert r.returncode == code, f"{r.args[3:]}: exit {r.returncode}, expected {code}; stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"{r.args[3:]}: expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("agentfs: "), lines
    return lines[0]


def lines(r: subprocess.CompletedProcess) -> list[str]:
    """A call's stdout as lines."""
    return r.stdout.decode().splitlines()
