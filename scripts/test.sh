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

exec .venv/bin/python -m pytest "$@"
