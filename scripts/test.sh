#!/usr/bin/env bash
# The test command (README): install what is missing, lint, then run pytest.
#
#   bash scripts/test.sh [pytest args...]     e.g. -q, -k locks, tests/test_journal.py
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

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
exec .venv/bin/python -m pytest "$@"
