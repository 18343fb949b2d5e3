#!/usr/bin/env bash
# Set up what a make target needs, and nothing that is already there.
#
#   scripts/bootstrap.sh [--image] [--venv-only | --no-venv]
#
# 1. Host packages (Debian/Ubuntu names), checked by what they provide:
#      iptables nftables iproute2 kmod      the tool's own needs (demo, netns tests);
#                                          not checked with --venv-only (lint, unit tests)
#      python3-venv gcc libc6-dev          only when the venv must be (re)built:
#                                          python-iptables ships as a C source package
#      podman runc mmdebstrap              with --image (make image / e2e, RUN_E2E=1),
#      containernetworking-plugins         and the bridge plugin for the CNI e2e test
#    Missing ones are installed with apt-get as root; without root, one line says what
#    is missing and how to install it, and the script exits 1.
# 2. .venv with the package installed editable, with its test and lint extras: made
#    when missing, reinstalled when pyproject.toml, the Python or the checkout's path
#    changed (a stamp in .venv records them).  --no-venv skips this (make PYTHON=...).
#
# Idempotent and quiet when there is nothing to do, so every make target can call it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=0
VENV=1
RUNTIME=1
for arg in "$@"; do
    case "$arg" in
    --image) IMAGE=1 ;;
    --no-venv) VENV=0 ;;
    --venv-only) RUNTIME=0 ;;
    *) echo "usage: scripts/bootstrap.sh [--image] [--venv-only | --no-venv]" >&2; exit 2 ;;
    esac
done

VENV_DIR=.venv
STAMP="$VENV_DIR/.bootstrap-stamp"
EXTRAS="test,lint"
PYTHON3="${BOOTSTRAP_PYTHON:-python3}"
# Tools in sbin are not on a normal user's PATH; look there too.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { echo "bootstrap: $*" >&2; }

# What the venv should be made from; a change means reinstall.
venv_stamp() {
    {
        sha256sum pyproject.toml
        "$VENV_DIR/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || echo "no python"
        pwd
        echo "$EXTRAS"
    } | sha256sum | cut -d' ' -f1
}

venv_current() {
    [[ -x "$VENV_DIR/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$(venv_stamp)" ]]
}

# have CMD: an executable CMD on PATH (bash's `command -v` also names non-executable files).
have() {
    local path
    path="$(command -v "$1")" && [[ -x "$path" ]]
}

missing=()
# need PACKAGE CHECK...: PACKAGE counts as missing unless the CHECK command succeeds.
need() {
    local package="$1"
    shift
    "$@" >/dev/null 2>&1 && return 0
    [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
}

need python3 have "$PYTHON3"
if ((RUNTIME)); then
    need iptables have iptables-legacy-restore
    need iptables have iptables-nft-restore
    need nftables have nft
    need iproute2 have ip
    need kmod have modprobe
fi
if ((IMAGE)); then
    need podman have podman
    need runc have runc
    need mmdebstrap have mmdebstrap
    # The CNI end-to-end test chains our plugin after the bridge plugin: podman may
    # bring only netavark on a fresh Debian.
    need containernetworking-plugins test -x /usr/lib/cni/bridge
fi
if ((VENV)) && ! venv_current; then
    need python3-venv "$PYTHON3" -c 'import ensurepip, venv'
    need gcc have gcc
    need libc6-dev test -e /usr/include/stdio.h
fi

if ((${#missing[@]})); then
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        how="as root: apt-get install -y ${missing[*]}"
        command -v apt-get >/dev/null 2>&1 || how="install them with the system's package manager"
        say "missing host packages: ${missing[*]} ($how)"
        exit 1
    fi
    say "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

((VENV)) || exit 0
venv_current && exit 0

if ! "$PYTHON3" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "$("$PYTHON3" -V 2>&1) is too old: istio-iptables needs Python >= 3.11"
    exit 1
fi
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    say "creating $VENV_DIR"
    "$PYTHON3" -m venv "$VENV_DIR"
fi
say "installing the package (editable, extras $EXTRAS) into $VENV_DIR"
"$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
venv_stamp >"$STAMP"
