#!/usr/bin/env bash
# Build the istio-init image with podman.
#
#   bash images/build.sh                      # offline path: local Debian base made with mmdebstrap
#   BASE=python:3.11-slim-bookworm bash images/build.sh   # registry path: official slim Python base
#
# Offline path (default): two bookworm root filesystems are made with mmdebstrap and
# imported into podman (a runtime base with python3 + iptables, and a builder base that
# adds gcc, Python headers and venv), unless they already exist with the same recipe.
# Python dependencies are fetched on the host from PyPI (`pip download`) into the build
# context, so `podman build` itself needs no network at all.
#
# Environment:
#   IMAGE          tag to build            (default localhost/istio-iptables:dev)
#   BASE           final-stage base image  (default: the local mmdebstrap base)
#   BUILDER_BASE   builder-stage base      (default: local builder base, or $BASE when BASE is given)
#   MIRROR         Debian mirror for mmdebstrap (default: the host's apt source for bookworm,
#                  from /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources})
#   REBUILD_BASE=1 remake the local bases even if they exist
#   PIP_PYTHON     a Python with pip, for `pip download` (default python3; make passes .venv's,
#                  since Debian's python3 has no pip without python3-pip)
#   MAX_IMAGE_MB   fail if the final image is larger (default 120)
set -euo pipefail
# shellcheck source=images/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUITE=bookworm

# The first enabled `deb` source of the host that serves $1 (a suite such as bookworm):
# the mirror this machine already uses (and may be the only one it can reach).
host_debian_mirror() {
    local suite="$1" f
    local files=()
    [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] && files+=("$f")
    done
    for f in "${files[@]}"; do
        case "$f" in
        *.sources)  # deb822: paragraphs of Types/URIs/Suites/Enabled fields
            awk -v suite="$suite" '
                function flush() {
                    if (!done && (" " types " ") ~ / deb / && enabled != "no" && (" " suites " ") ~ (" " suite " ")) {
                        split(uris, u, " "); print u[1]; done = 1
                    }
                    types = uris = suites = enabled = ""
                }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                { key = tolower($1); sub(/^[^:]*:[ \t]*/, "") }
                key == "types:" { types = $0 } key == "uris:" { uris = $0 }
                key == "suites:" { suites = $0 } key == "enabled:" { enabled = tolower($0) }
                END { flush() }' "$f" ;;
        *)  # one-line format: deb [options] URI suite components...
            awk -v suite="$suite" '$1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f" ;;
        esac
    done | grep -E '^(https?|file)://' | head -n1
}
MIRROR="${MIRROR:-$(host_debian_mirror "$SUITE")}"
[[ -n "$MIRROR" ]] || die "no apt source for Debian $SUITE on this host; set MIRROR (e.g. MIRROR=http://ftp.XX.debian.org/debian)"
MAX_IMAGE_MB="${MAX_IMAGE_MB:-120}"
START=$SECONDS

WORK="$(mktemp -d /tmp/istio-iptables-build.XXXXXX)"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
setup_podman_conf "$WORK"

ensure_tools podman:podman "$OCI_RUNTIME:$OCI_RUNTIME"

# --- local bases --------------------------------------------------------------------

# dpkg drops documentation, manuals, translations; copyright files stay.
MMDEBSTRAP_COMMON=(
    --variant=essential
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/bash-completion/*'
)
RUNTIME_PACKAGES="python3,iptables,nftables"
BUILDER_PACKAGES="python3,python3-venv,python3-dev,gcc,libc6-dev"
# Removed after install: apt state (no apt in an essential rootfs anyway), dpkg and
# debconf backups, logs, and glibc's iconv modules (Python has its own codecs).
# shellcheck disable=SC2016  # "$1" is the rootfs, expanded by mmdebstrap's hook shell
STRIP_HOOK='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old \
    "$1"/var/lib/dpkg/*-old "$1"/var/log/* "$1"/usr/lib/x86_64-linux-gnu/gconv \
    "$1"/root/.bash_history "$1"/tmp/* 2>/dev/null || true'

recipe_hash() {  # what a base is made from; a change remakes it
    printf '%s\n' "$SUITE" "$MIRROR" "$1" "${MMDEBSTRAP_COMMON[@]}" "$STRIP_HOOK" | sha256sum | cut -c1-16
}

make_base() {  # make_base IMAGE PACKAGES LOGFILE
    local image="$1" packages="$2" logfile="$3" hash tarball old_id
    hash="$(recipe_hash "$packages")"
    if [[ "${REBUILD_BASE:-0}" != 1 ]] && image_exists "$image" &&
        [[ "$(podman image inspect --format '{{index .Labels "io.istio-iptables.base-recipe"}}' "$image")" == "$hash" ]]; then
        log "base $image is up to date (recipe $hash)"
        return 0
    fi
    ensure_tools mmdebstrap:mmdebstrap
    tarball="$WORK/$(basename "${image%%:*}").tar"
    log "mmdebstrap $SUITE [$packages] -> $image"
    mmdebstrap "${MMDEBSTRAP_COMMON[@]}" --include="$packages" \
        --customize-hook="$STRIP_HOOK" \
        "$SUITE" "$tarball" "$MIRROR" >"$logfile" 2>&1 ||
        { tail -n 30 "$logfile" >&2; die "mmdebstrap failed for $image"; }
    old_id="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
    podman import \
        --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV=LANG=C.UTF-8' \
        --change "LABEL=io.istio-iptables.base-recipe=$hash" \
        "$tarball" "$image" >/dev/null
    rm -f "$tarball"
    [[ -z "$old_id" ]] || podman rmi "$old_id" >/dev/null 2>&1 || true
    log "imported $image ($(human_mb "$(image_size_bytes "$image")"))"
}

if [[ -z "${BASE:-}" ]]; then
    BASE="$LOCAL_BASE"
    BUILDER_BASE="${BUILDER_BASE:-$LOCAL_BUILDER_BASE}"
    t0=$SECONDS
    # The two rootfs builds are independent: run them side by side.
    make_base "$LOCAL_BASE" "$RUNTIME_PACKAGES" "$WORK/mmdebstrap-runtime.log" &
    pid_runtime=$!
    make_base "$LOCAL_BUILDER_BASE" "$RUNTIME_PACKAGES,$BUILDER_PACKAGES" "$WORK/mmdebstrap-builder.log" &
    pid_builder=$!
    wait "$pid_runtime" || die "making $LOCAL_BASE failed"
    wait "$pid_builder" || die "making $LOCAL_BUILDER_BASE failed"
    log "bases ready in $((SECONDS - t0))s"
else
    BUILDER_BASE="${BUILDER_BASE:-$BASE}"
fi

# --- build context: the project's sources and a wheelhouse ---------------------------

CTX="$WORK/context"
mkdir -p "$CTX/src" "$CTX/wheelhouse"
cp "$REPO_ROOT/pyproject.toml" "$CTX/src/"
for f in README.md LICENSE LICENSE.txt NOTICE; do
    [[ -f "$REPO_ROOT/$f" ]] && cp "$REPO_ROOT/$f" "$CTX/src/"
done
tar -C "$REPO_ROOT" --exclude='__pycache__' --exclude='*.pyc' -cf - istio_iptables | tar -C "$CTX/src" -xf -
mkdir -p "$CTX/src/images" && cp "$REPO_ROOT/images/launchers.py" "$CTX/src/images/"

if [[ "${NO_WHEELHOUSE:-0}" != 1 ]]; then
    # Dependencies as published on PyPI (python-iptables is an sdist: it is compiled in
    # the builder stage), plus the build backend for the project and that sdist.
    log "pip download: dependencies into the build context"
    "${PIP_PYTHON:-python3}" -m pip download --quiet --disable-pip-version-check --no-cache-dir \
        --dest "$CTX/wheelhouse" "$CTX/src" 'setuptools>=64' wheel >"$WORK/pip-download.log" 2>&1 ||
        { cat "$WORK/pip-download.log" >&2
          die "pip download failed (PyPI unreachable?); NO_WHEELHOUSE=1 lets the build fetch from PyPI itself"; }
    rm -f "$CTX/wheelhouse"/istio_iptables-* "$CTX/wheelhouse"/istio-iptables-*
    find "$CTX/wheelhouse" -type f -printf '    %f\n' | sort >&2
fi
cp "$IMAGES_DIR/Dockerfile" "$CTX/Dockerfile"

# --- build ----------------------------------------------------------------------------

VERSION="$(project_version)"
REVISION="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
SOURCE_URL="${SOURCE_URL:-$(git -C "$REPO_ROOT" remote get-url origin 2>/dev/null || echo unknown)}"
OLD_ID="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
log "podman build $IMAGE (base $BASE, builder $BUILDER_BASE, version $VERSION)"
t0=$SECONDS
network=()
[[ "${NO_WHEELHOUSE:-0}" == 1 ]] || network=(--network none)  # everything is in the context
pm build --runtime "$OCI_RUNTIME" "${network[@]}" \
    --build-arg "BASE=$BASE" \
    --build-arg "BUILDER_BASE=$BUILDER_BASE" \
    --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$REVISION" \
    --build-arg "SOURCE_URL=$SOURCE_URL" \
    --layers=false \
    -t "$IMAGE" -f "$CTX/Dockerfile" "$CTX"
log "podman build took $((SECONDS - t0))s"
# The previous build of this tag is now untagged: remove it unless something uses it.
if [[ -n "$OLD_ID" && "$OLD_ID" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    podman rmi "$OLD_ID" >/dev/null 2>&1 || true
fi

SIZE="$(image_size_bytes "$IMAGE")"
log "image $IMAGE: size $SIZE bytes ($(human_mb "$SIZE")); total build time $((SECONDS - START))s"
if ((SIZE > MAX_IMAGE_MB * 1000000)); then
    # The budget is met with the local base; python:3.11-slim alone is close to it.
    if [[ "$BASE" == "$LOCAL_BASE" ]]; then die "image is larger than ${MAX_IMAGE_MB} MB"; fi
    log "warning: image is larger than ${MAX_IMAGE_MB} MB (base $BASE)"
fi
