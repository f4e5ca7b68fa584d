#!/usr/bin/env bash
# The test command (README): install what is missing, lint, then run pytest.
#
#   bash scripts/test.sh [pytest args...]          e.g. -q, -k locks, tests/mount/test_posix.py
#   bash scripts/test.sh TIER [pytest args...]     one tier: core, api, mount or crash
#
# The tiers are the folders of tests/: core (no FUSE, under a minute), api (the
# Python API, CLI, MCP, web and LangGraph without mounts), mount (real FUSE
# mounts) and crash (SIGKILLed mounts); no tier runs them all.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

tier=""
case "${1:-}" in core|api|mount|crash) tier=$1; shift ;; esac

bash scripts/setup.sh

echo "lint: ruff check agentfs tests"
.venv/bin/ruff check agentfs tests

# Two workers by default (most tests wait on mounts and S3, not on the CPU);
# each test file stays on one worker.  AGENTFS_TEST_WORKERS=0 runs in-process.
workers=${AGENTFS_TEST_WORKERS:-2}
case " $* " in *" -n "*|*" -n"[0-9]*) workers=0 ;; esac
if [ "$workers" != 0 ]; then
    set -- -n "$workers" --dist loadfile "$@"
fi
if [ -n "$tier" ]; then
    set -- "tests/$tier" "$@"
fi
exec .venv/bin/python -m pytest "$@"
