#!/usr/bin/env bash
# Install everything agentfs needs to build, run and test, idempotently.
#
#   bash scripts/setup.sh        (from any directory)
#
# - Debian packages (FUSE 3, headers, tools): apt-get runs only when one is missing.
# - .venv in the repo root with `pip install -e '.[test]'`, redone only when
#   pyproject.toml (or the interpreter, or the repo location) changed.
# - pyfuse3 rebuilt from its sdist with third_party/pyfuse3/lock-ops.patch (the
#   binding's lock operations), redone only when the patch (or the venv) changed.
# - /etc/fuse.conf gets `user_allow_other`; /dev/fuse is checked.
#
# Environment: AGENTFS_PYTHON=/path/to/python3.11+ picks the interpreter for a new venv.
# A re-run with nothing to do touches no network and takes well under a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.agentfs-setup-stamp"
PYFUSE3_VERSION=3.5.0
PYFUSE3_SDIST_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
PYFUSE3_PATCH="$ROOT/third_party/pyfuse3/lock-ops.patch"
# chromium + chromium-driver: the web page's real-browser test (tests/api/test_web_browser.py)
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc git sqlite3 rsync attr patch
              chromium chromium-driver)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

can_root() { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for '$*' and sudo is not installed"
    fi
}

# Serialize concurrent runs (two shells running the tests at once) on this checkout.
LOCK="${TMPDIR:-/tmp}/agentfs-setup.$(printf '%s' "$ROOT" | sha256sum | cut -c1-16).lock"
exec 9>>"$LOCK"
flock 9

# --- 1. Debian packages ---------------------------------------------------------
missing_packages() {
    # Prints the packages of "$@" that are not fully installed (one dpkg-query call).
    local installed
    installed="$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "$@" 2>/dev/null \
        | awk '$2 == "ii" { sub(/:.*/, "", $1); print $1 }' || true)"
    local p
    for p in "$@"; do
        grep -qxF -- "$p" <<<"$installed" || printf '%s\n' "$p"
    done
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand: $*"
    say "apt: installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -qq install --no-install-recommends \
        -o Dpkg::Use-Pty=0 "$@" >/dev/null
}

if command -v dpkg-query >/dev/null 2>&1; then
    mapfile -t MISSING < <(missing_packages "${APT_PACKAGES[@]}")
    if [ "${#MISSING[@]}" -gt 0 ]; then
        apt_install "${MISSING[@]}"
    fi
else
    say "not a Debian system: make sure these (or equivalents) are installed: ${APT_PACKAGES[*]}"
fi

# --- 2. FUSE: user_allow_other, /dev/fuse -----------------------------------------
FUSE_CONF=/etc/fuse.conf
if ! grep -qx '[[:space:]]*user_allow_other[[:space:]]*' "$FUSE_CONF" 2>/dev/null; then
    say "fuse: enabling user_allow_other in $FUSE_CONF"
    if ! can_root; then
        say "WARNING: cannot edit $FUSE_CONF without root or sudo; mounts with allow_other will fail"
    elif grep -qx '[[:space:]]*#[[:space:]]*user_allow_other[[:space:]]*' "$FUSE_CONF" 2>/dev/null; then
        as_root sed -i 's/^[[:space:]]*#[[:space:]]*user_allow_other[[:space:]]*$/user_allow_other/' "$FUSE_CONF"
    else
        printf 'user_allow_other\n' | as_root tee -a "$FUSE_CONF" >/dev/null
    fi
fi

if [ ! -c /dev/fuse ] && can_root; then
    as_root modprobe fuse >/dev/null 2>&1 || true
fi
if [ ! -c /dev/fuse ]; then
    say "WARNING: /dev/fuse is missing: FUSE mounts and the mount tests will fail (load the fuse module, or give the container --device /dev/fuse --cap-add SYS_ADMIN)"
fi

# --- 3. Python virtualenv -------------------------------------------------------
python_ok() {
    # A usable interpreter: Python >= 3.11 with venv and ensurepip (Debian splits those out).
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    local c
    for c in ${AGENTFS_PYTHON:+"$AGENTFS_PYTHON"} python3 python3.11 python3.12 python3.13 /usr/bin/python3; do
        if command -v "$c" >/dev/null 2>&1 && python_ok "$c"; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    return 1
}

venv_python_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' >/dev/null 2>&1
}

# What the installed venv must match: the dependency spec, the interpreter, the location
# (console scripts in .venv/bin carry absolute paths, so a moved checkout needs a new venv).
want_stamp() {
    local pyver
    pyver="$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    printf 'pyproject=%s\npython=%s\nroot=%s\n' \
        "$(sha256sum pyproject.toml | cut -d' ' -f1)" "$pyver" "$ROOT"
}

# The stamp's last line: the pyfuse3 patch that the venv's pyfuse3 was built with.
want_patch_stamp() {
    printf 'pyfuse3_lock_ops_patch=%s\n' "$(sha256sum "$PYFUSE3_PATCH" | cut -d' ' -f1)"
}

pyfuse3_patched() {
    # Also catches a pyfuse3 that a later `pip install` put back unpatched. (The stub file
    # comes from the same wheel as the extension, and reading it costs no interpreter start.)
    grep -qs '^class FileLock' "$VENV"/lib/python3*/site-packages/pyfuse3/__init__.pyi
}

build_pyfuse3() {
    # pyfuse3 from its sdist + the lock-ops patch, built with Cython from PyPI (pip's build
    # isolation) and installed over the PyPI pyfuse3 of the same version.
    local work log sdist src
    work="$(mktemp -d)"
    log="$VENV/pyfuse3-build.log"
    sdist="$work/pyfuse3-$PYFUSE3_VERSION.tar.gz"
    src="$work/pyfuse3-$PYFUSE3_VERSION"
    say "pyfuse3: building $PYFUSE3_VERSION with $(basename "$PYFUSE3_PATCH") (about two minutes)"
    # --no-binary pyfuse3 (not :all:): the sdist itself, while its build requirements come as
    # wheels; with :all: pip compiles Cython from source just to read pyfuse3's metadata.
    if ! "$VENV/bin/python" -m pip download -q --no-deps --no-binary pyfuse3 -d "$work" \
            "pyfuse3==$PYFUSE3_VERSION" >"$log" 2>&1; then
        rm -rf "$work"
        die "pyfuse3: download of the sdist failed (log: $log)"
    fi
    if ! printf '%s  %s\n' "$PYFUSE3_SDIST_SHA256" "$sdist" | sha256sum -c --status; then
        rm -rf "$work"
        die "pyfuse3: the downloaded sdist does not have the expected sha256"
    fi
    tar -xzf "$sdist" -C "$work"
    if ! patch -d "$src" -p1 --forward --batch --quiet <"$PYFUSE3_PATCH" >>"$log" 2>&1; then
        rm -rf "$work"
        die "pyfuse3: $PYFUSE3_PATCH does not apply to pyfuse3 $PYFUSE3_VERSION (log: $log)"
    fi
    # The sdist ships C generated from the unpatched .pyx: make Cython regenerate it.
    rm -f "$src/src/pyfuse3/__init__.c"
    if ! "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$src" >>"$log" 2>&1; then
        rm -rf "$work"
        die "pyfuse3: build failed (log: $log)"
    fi
    rm -rf "$work"
    "$VENV/bin/python" -c 'import pyfuse3; pyfuse3.FileLock' >/dev/null 2>&1 \
        || die "pyfuse3: the installed pyfuse3 has no lock operations (log: $log)"
}

if [ -d "$VENV" ]; then
    if ! venv_python_ok; then
        say "venv: .venv is broken (its interpreter does not run); recreating"
        rm -rf "$VENV"
    elif [ -f "$STAMP" ] && ! grep -qxF "root=$ROOT" "$STAMP"; then
        say "venv: .venv was made for another checkout location; recreating"
        rm -rf "$VENV"
    fi
fi

if [ ! -d "$VENV" ]; then
    if ! PY="$(find_python)"; then
        # e.g. Debian's python3 without python3-venv: install it and use the system python.
        apt_install python3-venv python3-dev
        PY="$(find_python)" || die "no Python >= 3.11 with venv/ensurepip found (set AGENTFS_PYTHON)"
    fi
    say "venv: creating .venv with $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    if ! "$PY" -m venv "$VENV" >/dev/null; then
        rm -rf "$VENV"
        die "'$PY -m venv .venv' failed"
    fi
fi

WANT="$(want_stamp)"
WANT_PATCH="$(want_patch_stamp)"
if [ ! -f "$STAMP" ] || [ "$(head -n 3 "$STAMP")" != "$WANT" ]; then
    say "pip: installing -e '.[test]' (pyproject.toml changed or first run)"
    # Kept: the patched pyfuse3 survives a pip run that leaves pyfuse3 alone (step 4 checks).
    OLD_PATCH_LINE="$(sed -n 4p "$STAMP" 2>/dev/null || true)"
    rm -f "$STAMP"
    LOG="$VENV/pip-install.log"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    # A current pip first: the pip that venv bundles (23.x) backtracks through every
    # s3fs/aiobotocore release on the moto+boto3 vs aiobotocore botocore pins and gives up
    # (ResolutionImpossible); pip >= 24 resolves it directly.
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip \
            && "$VENV/bin/python" -m pip install -q -e '.[test]'; } >"$LOG" 2>&1; then
        # Drop the noise of index locations that this machine's pip.conf names but lacks.
        grep -v "^WARNING: Location '.*' is ignored" "$LOG" >&2 || true
        die "pip install failed (full log: $LOG)"
    fi
    printf '%s\n' "$WANT" ${OLD_PATCH_LINE:+"$OLD_PATCH_LINE"} >"$STAMP"
fi

# --- 4. pyfuse3 with lock operations ------------------------------------------------
if [ "$(sed -n 4p "$STAMP")" != "$WANT_PATCH" ] || ! pyfuse3_patched; then
    printf '%s\n' "$WANT" >"$STAMP"  # no patch line until the build succeeded
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    build_pyfuse3
    printf '%s\n%s\n' "$WANT" "$WANT_PATCH" >"$STAMP"
fi

say "ok (.venv up to date)"
