#!/usr/bin/env bash
# agentfs beside its peers, through the peer harness agentbench ($AGENTBENCH_DIR: its checkout).
#
#   sudo bash benchmarks/peers.sh [REPS] [extra agentbench args...]
#
# Two runs on the same machine, one after the other, each with its own fair peers:
#   1. durable (default mount):  local, passthrough, agentfs, juicefs (durable close), rclone-writes
#   2. --writeback mount:        local, passthrough, agentfs --writeback, rclone-writes
# Before them, benchmarks/floor.py measures the request floor (N sequential 4 KiB PUTs) on
# the same kind of server.  Each run writes its table to benchmarks/results/peers-DATE-{durable,writeback}.md (and the
# raw .json); the harness prints the tables too.  Needs the harness set up once
# (`sudo "$AGENTBENCH_DIR/setup.sh"`) and this repo's .venv (scripts/setup.sh).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
BENCH=${AGENTBENCH_DIR:-"$(cd "$(dirname "$0")/../.." && pwd)/shared/bench"}
REPS=${1:-3}
shift || true
OUT="$HERE/results"
STAMP=$(date -u +%Y%m%d-%H%M%S)
# A scratch directory of our own: two harness runs sharing _local/scratch unmount and
# delete each other's files.
SCRATCH=$(mktemp -d /tmp/agentfs-peers-XXXXXX)
mkdir -p "$OUT"
[ -x "$BENCH/_local/venv/bin/python" ] || { echo "peers.sh: run $BENCH/setup.sh first" >&2; exit 2; }

run() {  # run LABEL TARGETS [mount args for agentfs...]
    local label=$1 targets=$2
    shift 2
    echo "== $label: $targets (agentfs mount args: ${*:-none})"
    (cd "$BENCH" && AGENTFS_CMD="$HERE/agentfs-foreground" AGENTFS_MOUNT_ARGS="$*" \
        _local/venv/bin/python -m agentbench run --targets "$targets" --reps "$REPS" \
        --out "$OUT/peers-$STAMP-$label" --scratch "$SCRATCH/$label" $EXTRA)
}

EXTRA="$*"
"$HERE/../.venv/bin/python" "$HERE/floor.py" | tee "$OUT/peers-$STAMP-floor.txt"
run durable local,passthrough,agentfs,juicefs,rclone-writes
if "$HERE/../.venv/bin/agentfs" mount --help 2>/dev/null | grep -q -- --writeback; then
    run writeback local,passthrough,agentfs,rclone-writes --writeback
fi
rm -rf "$SCRATCH"
ls -1 "$OUT"/peers-"$STAMP"-* 2>/dev/null || true
