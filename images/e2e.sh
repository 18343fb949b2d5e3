#!/usr/bin/env bash
# End-to-end test of the image: run examples/pod.yaml with `podman kube play` and prove
# with real connections where traffic lands.  Root only (podman, network namespaces).
#
#   bash images/e2e.sh          # builds the image first if it is missing
#
# Network layout (nothing leaves this machine; every address below lives only in the
# pod's namespace or in a peer namespace this script creates and deletes):
#
#   pod netns (podman, --network none)          peer netns "$PEER_NS" (ours)
#     lo   127.0.0.1                              lo   192.0.2.55 (TEST-NET-1): "upstream" :80
#     eth0 198.18.0.2/30  <---- veth ---->        veth 198.18.0.1/30: inbound client
#     default via 198.18.0.1
#
# Environment: IMAGE (default localhost/istio-iptables:dev), KEEP=1 leaves everything
# in place for inspection, E2E_STRICT=1 makes the known gaps (marked XFAIL) failures.
set -euo pipefail
# shellcheck source=images/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START=$SECONDS
[[ $EUID -eq 0 ]] || die "run as root (podman pods and network namespaces)"

TAG="e2e$$"
POD="istio-iptables-$TAG"
PEER_NS="istio-iptables-$TAG-peer"
VETH_HOST="iie2e$$"
POD_IP=198.18.0.2
PEER_IP=198.18.0.1
UPSTREAM_IP=192.0.2.55
# shellcheck disable=SC2054  # the comma list is one argument
ISTIO_ARGS=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020)

WORK="$(mktemp -d /tmp/istio-iptables-e2e.XXXXXX)"
PAUSE_EXISTED=""
PEER_PIDS=()
EXTRA_CTRS=()

cleanup() {
    local rc=$?
    set +e
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "KEEP=1: leaving pod $POD, netns $PEER_NS and $WORK in place"
        return "$rc"
    fi
    for pid in "${PEER_PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    for c in "${EXTRA_CTRS[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1; done
    if podman pod exists "$POD" 2>/dev/null; then
        podman pod rm -f -t 0 "$POD" >/dev/null 2>&1 || log "warning: could not remove pod $POD"
    fi
    ip link del "$VETH_HOST" >/dev/null 2>&1  # only if it was left in the host namespace
    ip netns del "$PEER_NS" >/dev/null 2>&1
    # podman builds its pause image the first time a pod is made; drop it if we caused that.
    if [[ -z "$PAUSE_EXISTED" ]]; then
        podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/podman-pause:' |
            xargs -r podman rmi >/dev/null 2>&1
    fi
    rm -rf "$WORK"
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
setup_podman_conf "$WORK"
ensure_tools podman:podman "$OCI_RUNTIME:$OCI_RUNTIME" nsenter:util-linux ip:iproute2 \
    iptables-nft-save:iptables iptables-legacy-save:iptables python3:python3
# (no `podman images | grep -q`: under pipefail grep's early exit can fail the pipe)
[[ "$(podman images --format '{{.Repository}}')" == *localhost/podman-pause* ]] && PAUSE_EXISTED=1

# --- results -----------------------------------------------------------------------------
PASSED=0 FAILED=0 XFAILED=0
declare -a FAILURES=()
pass() { PASSED=$((PASSED + 1)); printf '  PASS  %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$1"); printf '  FAIL  %s\n' "$1"; }
xfail() {  # a known gap: reported, fatal only with E2E_STRICT=1
    if [[ "${E2E_STRICT:-0}" == 1 ]]; then fail "$1"; else XFAILED=$((XFAILED + 1)); printf '  XFAIL %s\n' "$1"; fi
}
# shellcheck disable=SC2001
show() { sed 's/^/        | /' <<<"$1"; }
section() { printf '\n== %s\n' "$*"; }

# One TCP client: connect, print the first line the server sends (or the error).
CLIENT='
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.settimeout(3)
        print(s.makefile().readline().strip() or "(no reply)")
except OSError as err:
    print(f"error: {err}")
    sys.exit(1)
'
# expect NAME REGEX CMD...: the command's first line of output must match REGEX.
expect() {
    local name="$1" regex="$2" out
    shift 2
    out="$("$@" 2>&1)" || true
    if grep -Eq -- "$regex" <<<"$out"; then pass "$name"; show "$out"; else fail "$name"; show "$out"; fi
}
in_ctr() { local ctr="$1"; shift; podman exec "$POD-$ctr" python3 -c "$CLIENT" "$@"; }
in_peer() { ip netns exec "$PEER_NS" python3 -c "$CLIENT" "$@"; }

# The pod's ruleset, whichever back end holds it, without counters and timestamps.
ruleset() {
    local pid="$1" out=""
    if [[ -s "/proc/$pid/net/ip_tables_names" ]]; then
        out+="$(nsenter -t "$pid" -n iptables-legacy-save)"$'\n'
    fi
    out+="$(nsenter -t "$pid" -n iptables-nft-save)"
    { grep -v '^#' <<<"$out" || true; } | sed -E 's/\[[0-9]+:[0-9]+\]/[0:0]/'
}

wait_for_log() {  # wait_for_log CONTAINER REGEX SECONDS
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        podman logs "$1" 2>&1 | grep -Eq -- "$2" && return 0
        sleep 0.1
    done
    return 1
}

# --- image -------------------------------------------------------------------------------
section "image $IMAGE"
if ! image_exists "$IMAGE"; then
    log "image $IMAGE is missing: building it"
    bash "$IMAGES_DIR/build.sh"
fi
SIZE="$(image_size_bytes "$IMAGE")"
if ((SIZE <= 120000000)); then pass "image size $SIZE bytes ($(human_mb "$SIZE")) <= 120 MB"; else fail "image size $SIZE bytes > 120 MB"; fi
labels="$(podman image inspect --format '{{json .Labels}}' "$IMAGE")"
absent_labels=""
for l in title description source licenses version; do
    grep -q "\"org.opencontainers.image.$l\"" <<<"$labels" || absent_labels+=" $l"
done
if [[ -z "$absent_labels" ]]; then pass "OCI labels present"; else fail "OCI labels missing:$absent_labels"; fi
entry="$(podman image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$IMAGE")"
if [[ "$entry" == '["istio-iptables"] ["-p","15001","-z","15006","-u","1337","-m","REDIRECT","-i","*","-x","","-b","*","-d","15090,15021,15020"]' ]]; then
    pass "entrypoint and default CMD"; show "$entry"
else
    fail "entrypoint/CMD unexpected"; show "$entry"
fi

# --- check 6: --help -------------------------------------------------------------------
section "--help"
expect "podman run --rm IMAGE --help" '^Usage: istio-iptables' pm run --rm --network none "$IMAGE" --help
expect "dependencies import (python-iptables, pyroute2)" '^ok' \
    pm run --rm --network none --entrypoint /opt/istio-iptables/bin/python3 "$IMAGE" \
    -c 'import iptc, pyroute2, istio_iptables; print("ok", istio_iptables.__version__)'
# shellcheck disable=SC2016  # expanded by the container's shell
expect "both iptables back ends in the image" 'legacy.*nf_tables' \
    pm run --rm --network none --entrypoint sh "$IMAGE" \
    -c 'echo "$(iptables-legacy --version) $(iptables-nft --version)"'

# shellcheck disable=SC2016  # expanded by the container's shell
expect "no compiler, no pip, no caches or shell history in the image" '^clean$' \
    pm run --rm --network none --entrypoint sh "$IMAGE" -c '
        found=""
        for c in gcc cc pip pip3; do command -v "$c" >/dev/null 2>&1 && found="$found $c"; done
        python3 -c "import pip" 2>/dev/null && found="$found python3-pip"
        /opt/istio-iptables/bin/python3 -c "import pip" 2>/dev/null && found="$found venv-pip"
        for d in /root/.cache /root/.bash_history /var/cache/apt/archives/*.deb /var/lib/apt/lists/*_Packages; do
            [ -e "$d" ] && found="$found $d"
        done
        echo "${found:-clean}"'

# --- the pod ------------------------------------------------------------------------------
section "pod $POD: podman kube play --network none"
sed -e "s|^  name: istio-iptables-demo$|  name: $POD|" \
    -e "s|image: localhost/istio-iptables:dev|image: $IMAGE|" \
    "$REPO_ROOT/examples/pod.yaml" >"$WORK/pod.yaml"
# Create the pod without starting it, start only its infra container, and give the
# namespace an eth0 (a veth whose other end is in our peer namespace) before
# istio-init runs, as a CNI plugin would in a cluster.
pm kube play --network none --start=false "$WORK/pod.yaml" >/dev/null
INFRA="$(podman pod inspect "$POD" --format '{{.InfraContainerID}}')"
pm start "$INFRA" >/dev/null
PID="$(podman inspect --format '{{.State.Pid}}' "$INFRA")"
[[ "$PID" -gt 0 ]] || die "infra container has no pid"

ip netns add "$PEER_NS"
ip link add "$VETH_HOST" type veth peer name eth0 netns "/proc/$PID/ns/net"
ip link set "$VETH_HOST" netns "$PEER_NS"
ip -n "$PEER_NS" link set lo up
ip -n "$PEER_NS" addr add "$PEER_IP/30" dev "$VETH_HOST"
ip -n "$PEER_NS" addr add "$UPSTREAM_IP/32" dev lo
ip -n "$PEER_NS" link set "$VETH_HOST" up
nsenter -t "$PID" -n ip addr add "$POD_IP/30" dev eth0
nsenter -t "$PID" -n ip link set eth0 up
nsenter -t "$PID" -n ip route add default via "$PEER_IP"
# The "upstream" server that uncaptured outbound traffic would reach.
ip netns exec "$PEER_NS" python3 -u -c '
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
srv = socket.create_server((sys.argv[1], 80))
while True:
    conn, peer = srv.accept()
    with conn:
        conn.sendall(f"upstream {sys.argv[1]}:80 peer={peer[0]}:{peer[1]}\n".encode())
' "$UPSTREAM_IP" >"$WORK/upstream.log" 2>&1 &
PEER_PIDS+=($!)
show "$(nsenter -t "$PID" -n ip -br addr)"

pm pod start "$POD" >/dev/null
INIT="$POD-istio-init"
if wait_for_log "$POD-istio-proxy" 'listening on' 20 && wait_for_log "$POD-app" 'listening on' 20; then
    pass "pod running: istio-init finished, app and stand-in proxy listening"
else
    fail "pod did not come up"
    podman ps -a --pod --filter "pod=$POD" >&2 || true
fi
init_exit="$(podman inspect --format '{{.State.ExitCode}}' "$INIT")"
init_times="$(podman inspect --format '{{.State.StartedAt}}|{{.State.FinishedAt}}' "$INIT")"
INIT_MS="$(python3 - "$init_times" <<'EOF'
import re, sys
from datetime import datetime
def parse(s):  # "2026-01-01 10:00:00.123456789 +0000 UTC"
    m = re.match(r"(\S+ \d+:\d+:\d+)(?:\.(\d+))? ([+-]\d{4})", s)
    t = datetime.strptime(f"{m[1]} {m[3]}", "%Y-%m-%d %H:%M:%S %z")
    return t.timestamp() + float("0." + (m[2] or "0"))
start, end = sys.argv[1].split("|")
print(round((parse(end) - parse(start)) * 1000))
EOF
)"
if [[ "$init_exit" == 0 ]]; then pass "istio-init exited 0 (ran ${INIT_MS} ms, StartedAt→FinishedAt)"; else fail "istio-init exit code $init_exit"; fi
show "$(podman logs "$INIT" 2>&1 | grep -v '^[-:*#]\|^COMMIT')"
RULES_BEFORE="$(ruleset "$PID")"
if grep -q -- '-A ISTIO_OUTPUT' <<<"$RULES_BEFORE" && grep -q -- '-A ISTIO_INBOUND' <<<"$RULES_BEFORE"; then
    pass "ISTIO_* chains installed in the pod netns ($(grep -c '^-A' <<<"$RULES_BEFORE") rules)"
else
    fail "no ISTIO_* rules in the pod netns"; show "$RULES_BEFORE"
fi

# --- check 1: outbound capture ----------------------------------------------------------------
section "1. app outbound is captured to 15001"
expect "app (uid 1000) -> $UPSTREAM_IP:80 lands on proxy 15001 with original dst $UPSTREAM_IP:80" \
    "^proxy port=15001 orig_dst=$UPSTREAM_IP:80 " in_ctr app "$UPSTREAM_IP" 80
expect "app (uid 1000) -> $PEER_IP:9999 lands on proxy 15001 with original dst $PEER_IP:9999" \
    "^proxy port=15001 orig_dst=$PEER_IP:9999 " in_ctr app "$PEER_IP" 9999
expect "app -> 127.0.0.1:8080 (loopback) is not captured" '^app port=8080' in_ctr app 127.0.0.1 8080

# --- check 2: the proxy's own traffic --------------------------------------------------------
section "2. the proxy's own traffic (uid 1337) is not redirected"
expect "proxy (uid 1337) -> 127.0.0.1:8080 reaches the app directly" '^app port=8080' in_ctr istio-proxy 127.0.0.1 8080
expect "proxy (uid 1337) -> $UPSTREAM_IP:80 leaves the pod and reaches the upstream" \
    "^upstream $UPSTREAM_IP:80 peer=$POD_IP:" in_ctr istio-proxy "$UPSTREAM_IP" 80
expect "proxy (uid 1337) -> pod IP $POD_IP:8080 goes to 15006 (Istio's inbound re-capture over lo)" \
    "^proxy port=15006 orig_dst=$POD_IP:8080 " in_ctr istio-proxy "$POD_IP" 8080

# --- check 3: inbound capture ------------------------------------------------------------------
section "3. inbound from outside the pod (peer netns over the veth)"
expect "peer -> $POD_IP:8080 (app port, -b '*') lands on proxy 15006 with original dst $POD_IP:8080" \
    "^proxy port=15006 orig_dst=$POD_IP:8080 peer=$PEER_IP:" in_peer "$POD_IP" 8080
expect "peer -> $POD_IP:15021 (excluded by -d) reaches 15021 directly" \
    "^proxy port=15021 orig_dst=$POD_IP:15021 peer=$PEER_IP:" in_peer "$POD_IP" 15021

# --- check 4: restart ----------------------------------------------------------------------------
section "4. istio-init runs again in the same pod"
out="$(pm start --attach "$INIT" 2>&1)" && rc=0 || rc=$?
restart_exit="$(podman inspect --format '{{.State.ExitCode}}' "$INIT")"
if [[ $rc == 0 && "$restart_exit" == 0 ]]; then pass "podman start istio-init again: exit 0"; else fail "restart: exit $rc/$restart_exit"; fi
show "$(grep -v '^[-:*#]\|^COMMIT' <<<"$out")"
RULES_AFTER="$(ruleset "$PID")"
if [[ "$RULES_AFTER" == "$RULES_BEFORE" ]]; then pass "ruleset unchanged after the restart"; else
    fail "ruleset changed after the restart"; show "$(diff <(echo "$RULES_BEFORE") <(echo "$RULES_AFTER"))"
fi
out="$(pm run --rm --network "ns:/proc/$PID/ns/net" --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW \
    "$IMAGE" "${ISTIO_ARGS[@]}" 2>&1)" && rc=0 || rc=$?
if [[ $rc == 0 ]]; then pass "podman run --network ns:<pod netns> with the same args: exit 0"; else fail "re-run in the pod netns: exit $rc"; fi
show "$(grep -v '^[-:*#]\|^COMMIT' <<<"$out")"
if [[ "$(ruleset "$PID")" == "$RULES_BEFORE" ]]; then pass "ruleset unchanged after the second re-run"; else
    fail "ruleset changed after the second re-run"; show "$(diff <(echo "$RULES_BEFORE") <(ruleset "$PID"))"
fi
expect "capture still works after the re-runs" "^proxy port=15001 orig_dst=$UPSTREAM_IP:80 " in_ctr app "$UPSTREAM_IP" 80

# --- check 5: capabilities, fresh namespaces ------------------------------------------------
section "5. fresh network namespaces, least privilege"
t0=$(date +%s%N)
out="$(pm run --rm --network none --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW "$IMAGE" 2>&1)" && rc=0 || rc=$?
RUN_MS=$((($(date +%s%N) - t0) / 1000000))
if [[ $rc == 0 ]] && grep -q -- '-A ISTIO_OUTPUT' <<<"$out"; then
    pass "--cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW, default CMD: exit 0 (podman run ${RUN_MS} ms)"
else
    fail "NET_ADMIN+NET_RAW run: exit $rc"; show "$out"
fi
for variant in "--force-iptables-binary legacy" "--backend libiptc"; do
    # shellcheck disable=SC2086  # $variant is two words on purpose
    out="$(pm run --rm --network none --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW "$IMAGE" \
        "${ISTIO_ARGS[@]}" $variant 2>&1)" && rc=0 || rc=$?
    if [[ $rc == 0 ]] && grep -q -- '-A ISTIO_OUTPUT' <<<"$out"; then pass "$variant in a fresh netns: exit 0"; else
        fail "$variant: exit $rc"; show "$out"
    fi
    show "$(grep -E ' INFO IPv4: (using|apply)' <<<"$out")"
done
out="$(pm run --rm --network none --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW "$IMAGE" \
    "${ISTIO_ARGS[@]}" --native-nftables 2>&1)" && rc=0 || rc=$?
if [[ $rc == 0 ]] && grep -q 'table inet istio-proxy-nat' <<<"$out"; then
    pass "--native-nftables in a fresh netns: exit 0, inet istio-proxy-nat written"
else
    fail "--native-nftables: exit $rc"; show "$out"
fi
out="$(pm run --rm --network none --cap-drop ALL --cap-add NET_RAW "$IMAGE" 2>&1)" && rc=0 || rc=$?
if [[ $rc != 0 ]] && grep -q 'NET_ADMIN' <<<"$out"; then
    pass "without NET_ADMIN: exit $rc, and the error names the missing capability"
else
    fail "without NET_ADMIN: exit $rc"
fi
show "$(grep -E 'ERROR|error' <<<"$out" || echo "$out")"
out="$(pm run --rm --network none --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW "$IMAGE" \
    "${ISTIO_ARGS[@]}" --dry-run 2>&1)" && rc=0 || rc=$?
if [[ $rc == 0 ]] && grep -q -- '-A ISTIO_OUTPUT' <<<"$out"; then pass "--dry-run prints the plan"; else fail "--dry-run: exit $rc"; show "$out"; fi

# --- Istio's own injection template ----------------------------------------------------------
section "Istio's injected args (values.global.proxy_init.image pointed at this image)"
# The injector's args start with the pilot-agent subcommand `istio-iptables` and end
# with --log_output_level (and --log_as_json with global.logAsJson).
out="$(pm run --rm --network none --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW "$IMAGE" \
    istio-iptables "${ISTIO_ARGS[@]}" --log_output_level=default:info --log_as_json 2>&1)" && rc=0 || rc=$?
if [[ $rc == 0 ]] && grep -q '"msg": "done in' <<<"$out"; then
    pass "injector-style args (istio-iptables ... --log_output_level=... --log_as_json) accepted, JSON logs"
else
    fail "injector-style args rejected (exit $rc)"
    show "$(grep -i error <<<"$out" || echo "$out")"
fi

# --- cleanup-only -----------------------------------------------------------------------------
section "--cleanup-only in the pod"
out="$(pm run --rm --network "ns:/proc/$PID/ns/net" --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW \
    "$IMAGE" --cleanup-only 2>&1)" && rc=0 || rc=$?
if [[ $rc == 0 ]] && ! grep -q 'ISTIO_' <<<"$(ruleset "$PID")"; then pass "--cleanup-only: exit 0, no ISTIO_* left"; else
    fail "--cleanup-only: exit $rc"; show "$out"; show "$(ruleset "$PID")"
fi
expect "after cleanup the app reaches the upstream directly" "^upstream $UPSTREAM_IP:80 peer=$POD_IP:" \
    in_ctr app "$UPSTREAM_IP" 80

section "stand-in proxy log (each accepted connection and its SO_ORIGINAL_DST)"
show "$(podman logs "$POD-istio-proxy" 2>&1)"

# --- summary -------------------------------------------------------------------------------------
section "summary"
printf 'image %s: %s bytes (%s)\n' "$IMAGE" "$SIZE" "$(human_mb "$SIZE")"
printf 'istio-init run time in the pod: %s ms (StartedAt→FinishedAt); podman run in a fresh netns: %s ms\n' \
    "$INIT_MS" "$RUN_MS"
printf 'e2e wall time: %ss\n' "$((SECONDS - START))"
for f in "${FAILURES[@]}"; do printf 'failed: %s\n' "$f"; done
if ((XFAILED > 0)); then printf '%s known gap(s) reported as XFAIL (E2E_STRICT=1 makes them failures)\n' "$XFAILED"; fi
printf 'e2e: %d passed, %d failed\n' "$PASSED" "$FAILED"
((FAILED == 0))
