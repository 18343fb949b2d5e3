# Shared helpers for images/build.sh and images/e2e.sh (sourced, not run).
# shellcheck shell=bash

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$IMAGES_DIR/.." && pwd)"

IMAGE="${IMAGE:-localhost/istio-iptables:dev}"
LOCAL_BASE="${LOCAL_BASE:-localhost/istio-iptables-base:bookworm}"
LOCAL_BUILDER_BASE="${LOCAL_BUILDER_BASE:-localhost/istio-iptables-builder-base:bookworm}"
# runc, not crun: crun refuses this host's hybrid cgroup v1 layout.
OCI_RUNTIME="${OCI_RUNTIME:-runc}"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# podman reads CONTAINERS_CONF; the host's default ulimits cannot be applied under
# runc here, so point podman at a private config that clears them.  The file lives
# in a temp dir that the caller removes (see setup_podman_conf's output).
setup_podman_conf() {
    local dir="$1"
    if [[ -z "${CONTAINERS_CONF:-}" ]]; then
        printf '[containers]\ndefault_ulimits = []\n' >"$dir/containers.conf"
        export CONTAINERS_CONF="$dir/containers.conf"
    fi
}

# podman with the runtime this host needs; every podman call goes through here.
pm() { podman --runtime "$OCI_RUNTIME" "$@"; }

image_exists() { podman image exists "$1"; }

image_size_bytes() { podman image inspect --format '{{.Size}}' "$1"; }

human_mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }

project_version() {  # the one version string: istio_iptables.__version__
    sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$REPO_ROOT/istio_iptables/__init__.py" | head -n1
}

# Install the host tools a script needs (Debian package names), when missing.
# ensure_tools CMD:PACKAGE ...
ensure_tools() {
    local spec cmd pkg missing=()
    for spec in "$@"; do
        cmd="${spec%%:*}" pkg="${spec#*:}"
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing host packages: ${missing[*]} (install them, as root)"
    fi
    log "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}
