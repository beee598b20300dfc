#!/usr/bin/env bash
# Scale-out benchmark (issue 14): what forwarding a data connection to the replica that
# owns its port costs. Everything runs in one network namespace (its own loopback and
# nftables, nothing touches the host's): a real vsftpd, three ftpgate replicas
# (127.0.9.1-3, cluster mode, 3 slots) and an nftables "balancer" on the address
# 127.0.9.10 that DNATs the control port and the data range in the output hook, as
# kube-proxy's nftables mode does in prerouting.
#
# Rows (interleaved, ROUNDS each; medians with min–max):
#   download/upload via "ftpgate":   control and data to replica 0 (nothing forwarded)
#   download/upload via "forwarded": control to replica 0, data to replica 1, which
#                                    forwards it to replica 0 (splice on both hops)
#   sessions via "1-replica":        control and data to replica 0
#   sessions via "3-replicas":       control and data each to `numgen random mod 3`
#                                    (2 of 3 data connections forwarded)
# CPU: utime+stime of every replica during the row, per GiB moved (transfers) or per
# 1000 sessions. All on one machine: the rows show the cost of forwarding, not scaling.
#
#   bash bench/cluster.sh                 # 2 GiB transfers, 2000 sessions, 5 rounds
#   bash bench/cluster.sh --quick         # 256 MiB, 300 sessions, 3 rounds
#   options: --rounds N  --no-build  --size SIZE
#
# Not part of the test suite. Needs root, vsftpd and nft (scripts/install-test-deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

QUICK=0 ROUNDS= BUILD=1 SIZE=
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --rounds) ROUNDS=$2; shift ;;
        --no-build) BUILD=0 ;;
        --size) SIZE=$2; shift ;;
        *) echo "usage: $0 [--quick] [--rounds N] [--no-build] [--size SIZE]" >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then
    : "${ROUNDS:=3}"; BIG=256M SESSIONS=300
else
    : "${ROUNDS:=5}"; BIG=2G SESSIONS=2000
fi
[[ -n $SIZE ]] && BIG=$SIZE
CONCURRENCY=32
VIP=127.0.9.10
FTP_PORT=2121 PEER_PORT=2122 VS_PORT=2120
DATA_LO=40000 DATA_HI=40299 PASV_LO=31000 PASV_HI=31999

[[ $(id -u) -eq 0 ]] || { echo "bench/cluster.sh: run as root" >&2; exit 1; }
for c in /usr/sbin/vsftpd nft; do
    command -v "$c" >/dev/null || { echo "$c missing: sudo bash scripts/install-test-deps.sh" >&2; exit 1; }
done
log() { printf '[cluster-bench %(%T)T] %s\n' -1 "$*" >&2; }

CACHE=/var/tmp/ftpgate-bench ROOT=/var/tmp/ftpgate-bench/root
mkdir -p "$ROOT"
chmod 755 "$CACHE" "$ROOT"
BIGFILE=data-$BIG.bin
[[ -s $ROOT/$BIGFILE ]] || { log "making $ROOT/$BIGFILE (once)"; head -c "$BIG" /dev/urandom >"$ROOT/$BIGFILE"; }
[[ -s $ROOT/1m.bin ]] || head -c 1M /dev/urandom >"$ROOT/1m.bin"
chmod 644 "$ROOT"/*.bin
BIG_BYTES=$(stat -c %s "$ROOT/$BIGFILE")

if ((BUILD)); then
    log "building ftpgate and ftpload (release)"
    cargo build --release --quiet --bin ftpgate --example ftpload
fi
TARGET=${CARGO_TARGET_DIR:-target}
FTPGATE=$(realpath "${FTPGATE_BIN:-$TARGET/release/ftpgate}")
LOAD=$(realpath "${FTPLOAD_BIN:-$TARGET/release/examples/ftpload}")

NS=ftpgate-bcl-$$
RUN=$(mktemp -d /tmp/ftpgate-cluster-bench.XXXXXX)
RES=$RUN/results
mkdir -p "$RES" "$RUN/empty" "$ROOT/up"
chmod 555 "$RUN/empty"
chmod 1777 "$ROOT/up"
cleanup() {
    ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
    sleep 0.2
    ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -f "$ROOT"/up/c-*.bin
    log "logs and raw results kept in $RUN"
}
trap cleanup EXIT
ip netns add "$NS"
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up

wait_port() { # host port
    for _ in $(seq 200); do
        in_ns bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1:$2; see $RUN/*.log" >&2
    exit 1
}

# ---- vsftpd ------------------------------------------------------------------------
sed -e "s|@PORT@|$VS_PORT|g; s|@ROOT@|$ROOT|g; s|@EMPTY@|$RUN/empty|g" \
    -e "s|@PASV_LO@|$PASV_LO|g; s|@PASV_HI@|$PASV_HI|g" bench/vsftpd.conf.in >"$RUN/vsftpd.conf"
in_ns /usr/sbin/vsftpd "$RUN/vsftpd.conf" >"$RUN/vsftpd.log" 2>&1 &
wait_port 127.0.0.1 "$VS_PORT"

# ---- three replicas ----------------------------------------------------------------
declare -A PID
for k in 0 1 2; do
    ip=127.0.9.$((k + 1))
    cat >"$RUN/replica-$k.yaml" <<EOF
listen: ["$ip:$FTP_PORT"]
backends: ["127.0.0.1:$VS_PORT"]
public_address: ["$VIP"]
data_ports: "$DATA_LO-$DATA_HI"
log: {level: warn}
admin: {listen: "$ip:9464"}
limits: {max_sessions_per_ip: 0, data_ports_per_session: 4}
cluster:
  slots: 3
  ordinal: $k
  peers: ["127.0.9.1:$PEER_PORT", "127.0.9.2:$PEER_PORT", "127.0.9.3:$PEER_PORT"]
  listen: "$ip:$PEER_PORT"
  data_listen: $ip
  peer_cidrs: ["127.0.9.0/24"]
EOF
    # Not through in_ns (a function runs in a subshell): `ip netns exec` execs ftpgate
    # in place, so $! is ftpgate itself and its CPU time can be read.
    ip netns exec "$NS" "$FTPGATE" run --config "$RUN/replica-$k.yaml" >"$RUN/replica-$k.log" 2>&1 &
    PID[$k]=$!
    wait_port "$ip" "$FTP_PORT"
done

# ---- the balancer ------------------------------------------------------------------
lb() { # control-target data-target (an address, or "random")
    local ctl=$1 data=$2 random="numgen random mod 3 map { 0 : 127.0.9.1, 1 : 127.0.9.2, 2 : 127.0.9.3 }"
    [[ $ctl == random ]] && ctl=$random
    [[ $data == random ]] && data=$random
    in_ns nft -f - <<EOF
table ip lb
delete table ip lb
table ip lb {
    chain out {
        type nat hook output priority -100; policy accept;
        ip daddr $VIP tcp dport $FTP_PORT dnat to $ctl
        ip daddr $VIP tcp dport $DATA_LO-$DATA_HI dnat to $data
    }
}
EOF
}
declare -A LB_CTL LB_DATA
LB_CTL[ftpgate]=127.0.9.1 LB_DATA[ftpgate]=127.0.9.1
LB_CTL[forwarded]=127.0.9.1 LB_DATA[forwarded]=127.0.9.2
LB_CTL[1-replica]=127.0.9.1 LB_DATA[1-replica]=127.0.9.1
LB_CTL[3-replicas]=random LB_DATA[3-replicas]=random

cpu_all() { local s=0; for k in 0 1 2; do s=$((s + $(awk '{print $14 + $15}' "/proc/${PID[$k]}/stat"))); done; echo "$s"; }
run_load() { # path measure args...
    local path=$1 measure=$2 before out
    shift 2
    lb "${LB_CTL[$path]}" "${LB_DATA[$path]}"
    before=$(cpu_all)
    if ! out=$(in_ns "$LOAD" --addr "$VIP:$FTP_PORT" --timeout 120s "$@" 2>>"$RUN/ftpload.log" | grep '^RESULT'); then
        log "$measure via $path FAILED (see $RUN/ftpload.log)"
        echo FAILED >>"$RES/$measure.$path.fail"
        return 0
    fi
    echo "$out" >>"$RES/$measure.$path"
    echo "$(($(cpu_all) - before))" >>"$RES/$measure.$path.ticks"
    log "$measure via $path: ${out#RESULT }"
}

log "rounds: $ROUNDS; file: $BIG; sessions: $SESSIONS x $CONCURRENCY"
for r in $(seq "$ROUNDS"); do
    for path in ftpgate forwarded; do
        run_load "$path" download download "$BIG_BYTES" --file "$BIGFILE"
        run_load "$path" upload upload "$BIG_BYTES" --file "up/c-$path-$r.bin"
        rm -f "$ROOT/up/c-$path-$r.bin"
    done
    for path in 1-replica 3-replicas; do
        run_load "$path" sessions sessions "$SESSIONS" "$CONCURRENCY" --file 1m.bin
    done
done

# ---- report ------------------------------------------------------------------------
for k in 0 1 2; do
    m=$(in_ns curl -s "http://127.0.9.$((k + 1)):9464/metrics" | grep -E '^ftpgate_cluster_(forwarded_total|forward_failures_total)' | awk '$2 > 0' | tr '\n' ' ')
    log "replica $k: ${m:-no forwards}"
    log "replica $k: $(grep -E '^(VmRSS|VmHWM)' "/proc/${PID[$k]}/status" | tr -s ' \n' ' ')fds $(find "/proc/${PID[$k]}/fd" -mindepth 1 | wc -l)"
done
HZ=$(getconf CLK_TCK)
python3 - "$RES" "$HZ" "$BIG_BYTES" "$SESSIONS" <<'EOF'
import os, statistics, sys
res, hz, big, sessions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rows(measure, path, key):
    try:
        lines = open(os.path.join(res, f"{measure}.{path}")).read().split("\n")
    except FileNotFoundError:
        return []
    out = []
    for l in lines:
        f = dict(kv.split("=", 1) for kv in l.split()[1:] if "=" in kv)
        if key in f:
            out.append(float(f[key]))
    return out
def ticks(measure, path):
    try:
        return [int(x) for x in open(os.path.join(res, f"{measure}.{path}.ticks")).read().split()]
    except FileNotFoundError:
        return []
def fails(measure, path):
    p = os.path.join(res, f"{measure}.{path}.fail")
    return len(open(p).read().split()) if os.path.exists(p) else 0
def med(v):
    return statistics.median(v) if v else float("nan")
print(f"| measure | path | median | min–max | ratio | CPU (all replicas) | failed runs |")
print("|---|---|---|---|---|---|---|")
for measure, base, other, key, unit, scale in [
    ("download", "ftpgate", "forwarded", "bytes_per_sec", "MiB/s", 1 / 1048576),
    ("upload", "ftpgate", "forwarded", "bytes_per_sec", "MiB/s", 1 / 1048576),
    ("sessions", "1-replica", "3-replicas", "sessions_per_sec", "sessions/s", 1),
]:
    b = med(rows(measure, base, key))
    for path in (base, other):
        v = rows(measure, path, key)
        t = ticks(measure, path)
        if measure == "sessions":
            cpu = f"{med(t) / hz / sessions * 1000 * 1000:.1f} ms per 1000 sessions" if t else "n/a"
        else:
            cpu = f"{med(t) / hz / (big / 2**30):.2f} s per GiB" if t else "n/a"
        rng = f"{min(v) * scale:.0f}–{max(v) * scale:.0f}" if v else "n/a"
        print(f"| {measure} | {path} | {med(v) * scale:.0f} {unit} | {rng} | {med(v) / b:.2f} | {cpu} | {fails(measure, path)} |")
EOF
