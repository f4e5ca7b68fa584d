#!/usr/bin/env bash
# Soak: many more seeded SIGKILL points and long fault runs than CI.
#
#   bash scripts/soak.sh [--seed N] [--duration SECONDS] [--kills N] [--ops N] [--s3]
#
# Repeats passes until --duration (default 600 s) is used up; pass i uses seed
# N+i, so every pass tries new kill points and new fault sequences.  Each pass:
#   - tests/mount/test_faults.py: the Workspace workload under 5% injected transient
#     faults with --ops operations (default 20000) on a memory and a local store;
#   - tests/crash/test_crash_points.py: --kills random kill points (default 100), plus
#     compaction and directory-rename kill points (and multipart on S3 with --s3),
#     and (tests/crash/test_crash_points_checkpoints.py) --kills/10 kill points each
#     during checkpoint restore and fork;
#   - tests/mount/test_model_ext.py: the model-based random test with seed N+i.
# A failure stops the soak and prints the seed to rerun with.  Logs go to
# $SOAK_LOG_DIR (default /tmp/agentfs-soak-<seed>).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

seed=1
duration=600
kills=100
ops=20000
s3=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seed) seed="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --kills) kills="$2"; shift 2 ;;
        --ops) ops="$2"; shift 2 ;;
        --s3) s3=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "soak.sh: unknown argument $1" >&2; exit 64 ;;
    esac
done

PY="$ROOT/.venv/bin/python"
logdir="${SOAK_LOG_DIR:-/tmp/agentfs-soak-$seed}"
mkdir -p "$logdir"
end=$(( $(date +%s) + duration ))
pass=0
total_kills=0
total_ops=0
echo "soak: seed $seed, duration ${duration}s, $kills kills and $ops fault ops per pass; logs in $logdir"
while (( $(date +%s) < end )); do
    s=$(( seed + pass ))
    echo "pass $pass (seed $s)"
    if ! AGENTFS_TEST_SEED=$s AGENTFS_FAULT_OPS=$ops "$PY" -m pytest -q -s -x \
            tests/mount/test_faults.py -k "workspace_workload_under_faults and not s3" \
            >"$logdir/faults-$s.log" 2>&1; then
        echo "FAILED: fault run, seed $s (AGENTFS_TEST_SEED=$s); see $logdir/faults-$s.log" >&2
        exit 1
    fi
    total_ops=$(( total_ops + 2 * ops ))
    sel="random or compaction or (rename and local) or (checkpoint_restore and local)"
    sel="$sel or (fork_materialisation and local)"
    (( s3 )) && sel="$sel or multipart"
    if ! CRASH_SEED_BASE=$(( s * 100000 )) CRASH_POINTS_ROUNDS=$kills \
            CRASH_RESTORE_ROUNDS=$(( kills / 10 + 1 )) CRASH_FORK_ROUNDS=$(( kills / 10 + 1 )) "$PY" -m pytest -q -s -x \
            tests/crash/test_crash_points.py tests/crash/test_crash_points_checkpoints.py -k "$sel" >"$logdir/crash-$s.log" 2>&1; then
        echo "FAILED: kill points, CRASH_SEED_BASE=$(( s * 100000 )); see $logdir/crash-$s.log" >&2
        exit 1
    fi
    n=$(grep -o '\[crash\] [a-z-]*: [0-9]* of' "$logdir/crash-$s.log" | awk '{s+=$3} END {print s+0}')
    total_kills=$(( total_kills + n ))
    if ! AGENTFS_MODEL_EXT_SEEDS=$s "$PY" -m pytest -q -s -x tests/mount/test_model_ext.py \
            -k "random_ops_ext and local" >"$logdir/model-$s.log" 2>&1; then
        echo "FAILED: model test, AGENTFS_MODEL_EXT_SEEDS=$s; see $logdir/model-$s.log" >&2
        exit 1
    fi
    echo "  ok: $(( 2 * ops )) operations under faults, $n kill points survived, model seed $s"
    pass=$(( pass + 1 ))
done
echo "soak: $pass passes, $total_ops operations under faults, $total_kills kill points survived, 0 failures"
