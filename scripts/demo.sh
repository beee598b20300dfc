#!/usr/bin/env bash
# ftpgate demo (the README's first command), as root on Debian 12:
#
#   bash scripts/demo.sh   (as root)
#
# Builds ftpgate, then builds three network namespaces:
#
#   client 203.0.113.2 ──── 203.0.113.1 proxy 10.0.0.1 ──── 10.0.0.2 backend
#                            (ftpgate, no IP forwarding)       (vsftpd)
#
# vsftpd advertises its private address 10.0.0.2 in 227 replies, which the
# client cannot reach. ftpgate rewrites the passive replies to its public
# address and relays the data. The demo downloads and uploads a file with
# curl (EPSV and PASV), checks SHA-256, and prints the backend's original and
# ftpgate's rewritten 227/229 lines plus the client's view. Everything is
# torn down on exit. All traffic stays inside the namespaces.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: needs root (network namespaces); run it as root" >&2
    exit 1
fi

if [[ -t 1 ]]; then
    say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
    say() { printf '\n==> %s\n' "$*"; }
fi

# --- dependencies -----------------------------------------------------------
need=()
command -v vsftpd >/dev/null 2>&1 || [[ -x /usr/sbin/vsftpd ]] || need+=(vsftpd)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v sha256sum >/dev/null 2>&1 || need+=(coreutils)
command -v timeout >/dev/null 2>&1 || need+=(coreutils)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${need[@]}"
fi
# shellcheck source=scripts/ensure-rust.sh
source scripts/ensure-rust.sh
ensure_rust

say "building ftpgate (cargo build --release)"
cargo build --release
FTPGATE=$PWD/target/release/ftpgate

# --- teardown, registered before anything is created ------------------------
TAG="ftpgate-demo-$$"
NS_CLIENT="$TAG-client"
NS_PROXY="$TAG-proxy"
NS_BACKEND="$TAG-backend"
WORK=$(mktemp -d /tmp/ftpgate-demo.XXXXXX)
PIDS=()

cleanup() {
    local rc=$?
    set +e
    # Processes first (ours, then anything left inside the namespaces, e.g.
    # vsftpd's per-session children), then the namespaces and their veths.
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for ns in "$NS_CLIENT" "$NS_PROXY" "$NS_BACKEND"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for ns in "$NS_CLIENT" "$NS_PROXY" "$NS_BACKEND"; do
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
    if ((rc != 0)); then
        echo "demo.sh: FAILED (exit $rc)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- topology -----------------------------------------------------------------
say "creating namespaces $NS_CLIENT, $NS_PROXY, $NS_BACKEND"
for ns in "$NS_CLIENT" "$NS_PROXY" "$NS_BACKEND"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
# Interfaces are created directly inside the namespaces: no name clashes
# with the host.
ip link add name eth0 netns "$NS_CLIENT" type veth peer name eth0 netns "$NS_PROXY"
ip link add name eth1 netns "$NS_PROXY" type veth peer name eth0 netns "$NS_BACKEND"
ip -n "$NS_CLIENT" addr add 203.0.113.2/24 dev eth0
ip -n "$NS_PROXY" addr add 203.0.113.1/24 dev eth0
ip -n "$NS_PROXY" addr add 10.0.0.1/24 dev eth1
ip -n "$NS_BACKEND" addr add 10.0.0.2/24 dev eth0
ip -n "$NS_CLIENT" link set eth0 up
ip -n "$NS_PROXY" link set eth0 up
ip -n "$NS_PROXY" link set eth1 up
ip -n "$NS_BACKEND" link set eth0 up
# The proxy host is not a router; the client has no route to 10.0.0.0/8.
ip netns exec "$NS_PROXY" sysctl -q -w net.ipv4.ip_forward=0

# Polls `cmd...` every 0.1 s until it succeeds or `secs` pass.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "demo.sh: timed out after ${secs}s waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# --- backend: vsftpd on 10.0.0.2 ------------------------------------------------
say "starting vsftpd on 10.0.0.2:21 (backend namespace)"
ROOT=$WORK/root
mkdir -p "$ROOT/pub" "$ROOT/upload" "$WORK/empty" "$WORK/client"
chmod 0755 "$WORK" "$ROOT" "$ROOT/pub"
chmod 0555 "$WORK/empty"
# Anonymous uploads go here; vsftpd's anonymous user is unprivileged.
chmod 0777 "$ROOT/upload"
head -c $((8 * 1024 * 1024)) /dev/urandom >"$ROOT/pub/demo.bin"
chmod 0644 "$ROOT/pub/demo.bin"
head -c $((8 * 1024 * 1024)) /dev/urandom >"$WORK/client/upload.bin"
# vsftpd's anonymous login maps to a system user; Debian's package creates
# `ftp`, fall back to `nobody` if it is missing.
ANON_USER=ftp
id -u ftp >/dev/null 2>&1 || ANON_USER=nobody
cat >"$WORK/vsftpd.conf" <<CONF
listen=YES
listen_ipv6=NO
listen_address=10.0.0.2
listen_port=21
background=NO
anonymous_enable=YES
ftp_username=$ANON_USER
no_anon_password=YES
anon_root=$ROOT
write_enable=YES
anon_upload_enable=YES
anon_umask=022
local_enable=NO
secure_chroot_dir=$WORK/empty
seccomp_sandbox=NO
pasv_enable=YES
connect_from_port_20=NO
xferlog_enable=YES
vsftpd_log_file=$WORK/vsftpd.log
CONF
ip netns exec "$NS_BACKEND" /usr/sbin/vsftpd "$WORK/vsftpd.conf" >"$WORK/vsftpd.out" 2>&1 &
PIDS+=($!)
banner() {
    # Reads the 220 banner from inside the proxy namespace.
    ip netns exec "$NS_PROXY" timeout 2 bash -c \
        'exec 3<>/dev/tcp/10.0.0.2/21 && head -c 4 <&3 | grep -q "^220"'
}
wait_for 10 "vsftpd's 220 banner" banner

# --- ftpgate on 203.0.113.1 -------------------------------------------------------
say "starting ftpgate on 203.0.113.1:21 (proxy namespace) -> 10.0.0.2:21"
FTPGATE_ARGS=(run --listen 203.0.113.1:21 --backend 10.0.0.2:21
    --public-address 203.0.113.1 --data-ports 50000-50099 --log-level debug)
echo "+ $FTPGATE ${FTPGATE_ARGS[*]}"
NO_COLOR=1 ip netns exec "$NS_PROXY" "$FTPGATE" "${FTPGATE_ARGS[@]}" 2>"$WORK/ftpgate.log" &
PIDS+=($!)
ready() {
    grep -q 'ftpgate ready' "$WORK/ftpgate.log" && return 0
    # Stop waiting at once if ftpgate died.
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$WORK/ftpgate.log" >&2; exit 1; }
    return 1
}
wait_for 10 "ftpgate's ready line" ready

# --- the client can't reach the backend, but can reach ftpgate -------------------
say "client -> 10.0.0.2 directly (must fail: private address unreachable)"
if ip netns exec "$NS_CLIENT" curl -sS --connect-timeout 3 --max-time 5 \
    ftp://10.0.0.2/pub/ -o /dev/null 2>"$WORK/direct.log"; then
    echo "demo.sh: the client reached the backend directly; topology is wrong" >&2
    exit 1
fi
echo "failed as intended: $(cat "$WORK/direct.log")"

want=$(sha256sum <"$ROOT/pub/demo.bin" | cut -d' ' -f1)
up_want=$(sha256sum <"$WORK/client/upload.bin" | cut -d' ' -f1)
ok=1
curl_ftp() {
    # -v prints the FTP dialogue; --no-ftp-skip-pasv-ip makes curl use the
    # address in the 227 (by default it silently substitutes the control
    # address, which would hide a missing rewrite).
    ip netns exec "$NS_CLIENT" timeout 60 curl -v -sS --max-time 50 --ftp-pasv \
        --no-ftp-skip-pasv-ip "$@"
}
for mode in EPSV PASV; do
    flag=()
    [[ $mode == PASV ]] && flag=(--disable-epsv)
    say "curl $mode download through ftpgate"
    curl_ftp "${flag[@]}" -o "$WORK/client/down-$mode.bin" \
        ftp://203.0.113.1/pub/demo.bin 2>"$WORK/curl-down-$mode.log" ||
        { cat "$WORK/curl-down-$mode.log"; ok=0; }
    got=$(sha256sum <"$WORK/client/down-$mode.bin" 2>/dev/null | cut -d' ' -f1 || true)
    echo "backend sha256: $want"
    echo "client  sha256: $got"
    [[ $got == "$want" ]] || { echo "MISMATCH"; ok=0; }

    say "curl $mode upload through ftpgate"
    curl_ftp "${flag[@]}" -T "$WORK/client/upload.bin" \
        "ftp://203.0.113.1/upload/up-$mode.bin" 2>"$WORK/curl-up-$mode.log" ||
        { cat "$WORK/curl-up-$mode.log"; ok=0; }
    got=$(sha256sum <"$ROOT/upload/up-$mode.bin" 2>/dev/null | cut -d' ' -f1 || true)
    echo "client  sha256: $up_want"
    echo "backend sha256: $got"
    [[ $got == "$up_want" ]] || { echo "MISMATCH"; ok=0; }
done

say "passive replies: backend's original -> ftpgate's rewrite (ftpgate debug log)"
# Fields may be quoted (original="227 ...") or bare (original=227 ...
# rewritten=227 ...); accept both.
grep 'passive reply rewritten' "$WORK/ftpgate.log" |
    sed -E 's/.* original="?(.*[^"])"? rewritten="?([^"]*)"?$/  backend: \1\n  ftpgate: \2/' ||
    { echo "(no 'passive reply rewritten' lines in ftpgate's log)"; ok=0; }

say "client's view (curl -v)"
for f in "$WORK"/curl-*.log; do
    printf '%s: ' "$(basename "$f" .log)"
    grep -E '^< 22[79]' "$f" || echo "(none)"
done

if ((ok)); then
    say "demo OK: files moved through ftpgate with matching SHA-256"
else
    say "demo FAILED; ftpgate log follows"
    cat "$WORK/ftpgate.log"
    exit 1
fi
