#!/usr/bin/env bash
# Mount a workspace on the default local store, write a file through FUSE, and show
# where it landed in the store. Leaves the mount up; re-running reuses it.
#
#   bash scripts/demo.sh [MOUNTPOINT]        (default: ~/agentfs-demo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

MNT="$(realpath -m -- "${1:-$HOME/agentfs-demo}")"
AGENTFS="$ROOT/.venv/bin/agentfs"
MOUNT_LOG="${TMPDIR:-/tmp}/agentfs-demo.$(id -u).log"
MOUNT_TIMEOUT=30 # seconds

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }
show() { printf '$'; printf ' %q' "$@"; printf '\n'; }
run() { show "$@"; "$@"; }

bash scripts/setup.sh

# The mount point as /proc/mounts spells it (octal escapes for \ space tab newline).
proc_mounts_name() {
    local s="$1"
    s="${s//\\/\\134}"
    s="${s// /\\040}"
    s="${s//$'\t'/\\011}"
    s="${s//$'\n'/\\012}"
    printf '%s' "$s"
}

# Prints the filesystem type mounted at $MNT (last mount wins), or fails if none.
mounted_type() {
    M="$(proc_mounts_name "$MNT")" awk '$2 == ENVIRON["M"] { t = $3 } END { if (t == "") exit 1; print t }' /proc/mounts
}

lazy_unmount() {
    fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
}

if fstype="$(mounted_type)"; then
    case "$fstype" in
        fuse*) ;;
        *) die "$MNT is already a mount point of type '$fstype', not an agentfs mount" ;;
    esac
    if stat -- "$MNT" >/dev/null 2>&1; then
        say "reusing the mount at $MNT ($fstype)"
    else
        say "the mount at $MNT is stale (its daemon is gone); unmounting it"
        lazy_unmount
    fi
fi

if ! mounted_type >/dev/null; then
    mkdir -p -- "$MNT"
    say "mounting at $MNT (log: $MOUNT_LOG)"
    show "$AGENTFS" mount "$MNT"
    # Started in the background in its own session, so this works whether `agentfs mount`
    # daemonizes (exits 0 once mounted) or stays in the foreground; either way it
    # outlives this script and the terminal.
    setsid "$AGENTFS" mount "$MNT" >"$MOUNT_LOG" 2>&1 </dev/null &
    pid=$!
    running=1
    deadline=$((SECONDS + MOUNT_TIMEOUT))
    until mounted_type >/dev/null; do
        if [ "$running" = 1 ] && ! kill -0 "$pid" 2>/dev/null; then
            running=0
            if wait "$pid"; then rc=0; else rc=$?; fi
            if [ "$rc" != 0 ]; then
                cat -- "$MOUNT_LOG" >&2
                die "agentfs mount exited with status $rc"
            fi
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            cat -- "$MOUNT_LOG" >&2
            if [ "$running" = 1 ]; then kill "$pid" 2>/dev/null || true; fi
            die "$MNT was not mounted after ${MOUNT_TIMEOUT}s"
        fi
        sleep 0.2
    done
    say "mounted"
fi

echo
run mkdir -p "$MNT/demo"
printf "\$ echo 'hello from agentfs' > %q\n" "$MNT/demo/hello.txt"
echo 'hello from agentfs' >"$MNT/demo/hello.txt"
run cat "$MNT/demo/hello.txt"

echo
if ! STORE="$("$AGENTFS" where 2>/dev/null)"; then
    STORE="$("$AGENTFS" store-path)" || die "could not ask agentfs for its default store"
fi
STORE="${STORE%%$'\n'*}"
STORE="${STORE#file://}"
say "the default store is $STORE; the file is stored at its natural key:"
run ls -l "$STORE/demo/hello.txt" || die "not found in the store at $STORE/demo/hello.txt"
run cat "$STORE/demo/hello.txt"

echo
say "still mounted at $MNT; to unmount:"
printf '  %q umount %q\n' "$AGENTFS" "$MNT"
