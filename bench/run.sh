#!/usr/bin/env bash
# ftpgate benchmark (issue 7): a real vsftpd on loopback, reached directly, through
# ftpgate (release build) and, when installed, through haproxy in TCP mode and ProFTPD
# mod_proxy as an FTP reverse proxy (bench/proftpd-modproxy.conf.in; unpacked by
# scripts/install-test-deps.sh); every
# measure runs the paths interleaved (direct, ftpgate, haproxy, modproxy, ...) and the
# table shows medians with min–max and the ratio to direct, plus ftpgate's CPU time
# (/proc/<pid>/stat utime+stime; for mod_proxy the master's own plus its reaped
# per-session processes) and memory per idle session (smaps_rollup).
#
#   bash bench/run.sh               # full: 2 GiB transfers, 2000 sessions, 9000 idle, 5 rounds
#   bash bench/run.sh --quick       # 256 MiB, 300 sessions, 1000 idle, 3 rounds
#   options: --rounds N  --no-build  --compare-copy (adds ftpgate with --relay copy)
#            --baseline BIN (adds "ftpgate-base": another ftpgate binary, e.g. one built
#            from an earlier commit, measured interleaved with this one)
#            --size SIZE (transfer size for download/upload, e.g. 1G; head -c syntax)
#   FTPGATE_ARGS="--worker-threads 1" in the environment adds flags to ftpgate's command line.
#            --only "download upload sessions noop idle ftps"
#   ftps: FTPS rows with curl as the client (direct vsftpd with TLS, ftpgate with TLS on
#   both sides, ftpgate offloading TLS to a clear vsftpd, ProFTPD mod_proxy with TLS on
#   both sides): a big download, and short sessions (login, PROT P, EPSV, RETR 1 MiB, QUIT).
#
# Not part of the test suite. Needs root (tmpfs for uploads, vsftpd), vsftpd
# (scripts/install-test-deps.sh installs it) and python3; haproxy is optional.
# The 2 GiB file is made once from /dev/urandom and cached in /var/tmp/ftpgate-bench.
# Ports (override via environment): VS_PORT, FG_PORT, ...; see below.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

QUICK=0 ROUNDS= BUILD=1 COPY=0 BASE_BIN= ONLY="download upload sessions noop idle ftps" SIZE=
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --rounds) ROUNDS=$2; shift ;;
        --no-build) BUILD=0 ;;
        --compare-copy) COPY=1 ;;
        --baseline) BASE_BIN=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --size) SIZE=$2; shift ;;
        *) echo "usage: $0 [--quick] [--rounds N] [--no-build] [--compare-copy] [--baseline BIN] [--only MEASURES] [--size SIZE]" >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then
    : "${ROUNDS:=3}" ; BIG=256M SESSIONS=300 IDLE=1000 NOOPS=2000 FTPS_SESSIONS=100
else
    : "${ROUNDS:=5}" ; BIG=2G SESSIONS=2000 IDLE=9000 NOOPS=20000 FTPS_SESSIONS=500
fi
FTPS_SESSIONS=${FTPS_SESSIONS_OVERRIDE:-$FTPS_SESSIONS}
[[ -n $SIZE ]] && BIG=$SIZE
CONCURRENCY=32

VS_PORT=${VS_PORT:-22121}         # vsftpd control (127.0.0.1); haproxy on 127.0.0.2, same port
FG_PORT=${FG_PORT:-22122}         # ftpgate (--relay auto: splice)
FG_COPY_PORT=${FG_COPY_PORT:-22123}
FG_BASE_PORT=${FG_BASE_PORT:-22125}
FG_IDLE_PORT=${FG_IDLE_PORT:-22124}
STUB_PORT=${STUB_PORT:-22125}     # control-only stub backend for the idle measure
VS_TLS_PORT=${VS_TLS_PORT:-22126} # vsftpd with TLS (FTPS rows)
FG_TLS_PORT=${FG_TLS_PORT:-22127} # ftpgate, TLS both sides
FG_OFF_PORT=${FG_OFF_PORT:-22128} # ftpgate, TLS offload (clear backend)
TLS_PASV_LO=${TLS_PASV_LO:-32000} TLS_PASV_HI=${TLS_PASV_HI:-32999}
PASV_LO=${PASV_LO:-31000} PASV_HI=${PASV_HI:-31999}
MP_PORT=${MP_PORT:-22129}         # ProFTPD mod_proxy in front of vsftpd
MP_TLS_PORT=${MP_TLS_PORT:-22130} # ProFTPD mod_proxy, TLS both sides (vsftpd with TLS behind)
MP_PASV=${MP_PASV:-46000-46999} MP_TLS_PASV=${MP_TLS_PASV:-47000-47999}
# mod_proxy's own vsftpd (same root, anonymous login with USER + PASS: see below) and
# its passive ranges.
MP_VS_PORT=${MP_VS_PORT:-22131} MP_VS_TLS_PORT=${MP_VS_TLS_PORT:-22132}
MP_VS_PASV=${MP_VS_PASV:-33000-33999} MP_VS_TLS_PASV=${MP_VS_TLS_PASV:-34000-34999}
# Where scripts/install-test-deps.sh unpacks proftpd-core, -mod-crypto and -mod-proxy.
PROFTPD_TREE=${PROFTPD_TREE:-/opt/ftpgate-test}

[[ $(id -u) -eq 0 ]] || { echo "bench/run.sh: run as root" >&2; exit 1; }
command -v /usr/sbin/vsftpd >/dev/null || { echo "vsftpd missing: sudo bash scripts/install-test-deps.sh" >&2; exit 1; }
# Two descriptors per proxied session: 9000 idle sessions need the hard limit.
ulimit -n "$(ulimit -Hn)"

log() { printf '[bench %(%T)T] %s\n' -1 "$*" >&2; }

# ---- files --------------------------------------------------------------------------
CACHE=/var/tmp/ftpgate-bench
ROOT=$CACHE/root
mkdir -p "$ROOT"
chmod 755 "$CACHE" "$ROOT"
BIGFILE=data-$BIG.bin
if [[ ! -s $ROOT/$BIGFILE ]]; then
    log "making $ROOT/$BIGFILE from /dev/urandom (once)"
    head -c "$BIG" /dev/urandom >"$ROOT/$BIGFILE.tmp" && mv "$ROOT/$BIGFILE.tmp" "$ROOT/$BIGFILE"
fi
[[ -s $ROOT/1m.bin ]] || head -c 1M /dev/urandom >"$ROOT/1m.bin"
chmod 644 "$ROOT"/*.bin
BIG_BYTES=$(stat -c %s "$ROOT/$BIGFILE")

RUN=$(mktemp -d /tmp/ftpgate-bench.XXXXXX)
RES=$RUN/results
mkdir -p "$RES" "$RUN/empty"
chmod 555 "$RUN/empty"
chmod 755 "$RUN"
PIDS=()
UP=$ROOT/up
mkdir -p "$UP"
UP_MOUNTED=0
MP_TABLES=
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n $MP_TABLES ]] && rm -rf "$MP_TABLES"
    ((UP_MOUNTED)) && umount "$UP" 2>/dev/null || true
    log "logs and raw results kept in $RUN"
}
trap cleanup EXIT
# Uploads land in tmpfs so the disk does not set the pace.
if mount -t tmpfs -o "size=$((BIG_BYTES / 1048576 + 512))m,mode=1777" ftpgate-bench-up "$UP"; then
    UP_MOUNTED=1
else
    log "cannot mount tmpfs on $UP; uploads go to disk"
fi
chmod 1777 "$UP"

# ---- binaries -----------------------------------------------------------------------
if ((BUILD)); then
    log "building ftpgate and ftpload (release)"
    cargo build --release --quiet --bin ftpgate --example ftpload
fi
TARGET=${CARGO_TARGET_DIR:-target}
FTPGATE=${FTPGATE_BIN:-$TARGET/release/ftpgate}
LOAD=${FTPLOAD_BIN:-$TARGET/release/examples/ftpload}

wait_port() { # host port [soft: return 1 instead of exiting]
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1:$2; see $RUN/*.log" >&2
    [[ -n ${3:-} ]] && return 1
    exit 1
}
fill() { # template → stdout
    sed -e "s|@PORT@|$2|g; s|@VS_PORT@|$VS_PORT|g; s|@ROOT@|$ROOT|g; s|@EMPTY@|$RUN/empty|g" \
        -e "s|@PASV_LO@|$PASV_LO|g; s|@PASV_HI@|$PASV_HI|g" "$1"
}

# ---- servers ------------------------------------------------------------------------
fill bench/vsftpd.conf.in "$VS_PORT" >"$RUN/vsftpd.conf"
/usr/sbin/vsftpd "$RUN/vsftpd.conf" >"$RUN/vsftpd.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 "$VS_PORT"

declare -A ADDR PID
PATHS=(direct)
ADDR[direct]=127.0.0.1:$VS_PORT

start_ftpgate() { # name port data-ports backend relay-mode (auto|copy|"": default) [binary]
    local bin=${6:-$FTPGATE} relay=()
    [[ -n $5 ]] && relay=(--relay "$5")
    "$bin" run "${relay[@]}" --listen "127.0.0.1:$2" --backend "$4" \
        --public-address 127.0.0.1 --data-ports "$3" --log-level warn ${FTPGATE_ARGS:-} \
        >"$RUN/$1.log" 2>&1 &
    PIDS+=($!)
    PID[$1]=$!
    ADDR[$1]=127.0.0.1:$2
    wait_port 127.0.0.1 "$2"
}
start_ftpgate ftpgate "$FG_PORT" 40000-40999 "127.0.0.1:$VS_PORT" auto
PATHS+=(ftpgate)
if ((COPY)); then
    start_ftpgate ftpgate-copy "$FG_COPY_PORT" 42000-42999 "127.0.0.1:$VS_PORT" copy
    PATHS+=(ftpgate-copy)
fi
if [[ -n $BASE_BIN ]]; then
    # No --relay: a baseline may predate the flag (its default relay is splice too).
    start_ftpgate ftpgate-base "$FG_BASE_PORT" 44000-44999 "127.0.0.1:$VS_PORT" "" "$BASE_BIN"
    PATHS+=(ftpgate-base)
fi
if command -v haproxy >/dev/null; then
    fill bench/haproxy.cfg.in "$VS_PORT" >"$RUN/haproxy.cfg"
    haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 &
    PIDS+=($!)
    PID[haproxy]=$!
    ADDR[haproxy]=127.0.0.2:$VS_PORT
    wait_port 127.0.0.2 "$VS_PORT"
    PATHS+=(haproxy)
else
    log "haproxy not installed (apt-get install haproxy): its column is N/A"
fi
# ProFTPD mod_proxy: proftpd (one process per session, forked by the master) as an FTP
# reverse proxy in front of the same vsftpd. N/A, with the reason in the table, when the
# unpacked trees are missing or a probe session through it fails.
PROFTPD=$PROFTPD_TREE/proftpd/usr/sbin/proftpd
MP_PROXY_MODULES=$PROFTPD_TREE/proftpd-proxy/usr/lib/proftpd
MP_TLS_MODULES=$PROFTPD_TREE/proftpd-crypto/usr/lib/proftpd
declare -A NA # path → why it is N/A
modproxy_missing() { # → prints what is missing, if anything
    if [[ ! -x $PROFTPD ]]; then
        echo "proftpd not unpacked in $PROFTPD_TREE/proftpd (sudo bash scripts/install-test-deps.sh)"
    elif [[ ! -f $MP_PROXY_MODULES/mod_proxy.so ]]; then
        echo "proftpd-mod-proxy not unpacked in $PROFTPD_TREE/proftpd-proxy (sudo bash scripts/install-test-deps.sh)"
    elif [[ ! -f $MP_TLS_MODULES/mod_tls.so ]]; then
        echo "mod_tls (proftpd-mod-crypto) not unpacked in $PROFTPD_TREE/proftpd-crypto (sudo bash scripts/install-test-deps.sh)"
    fi
}
# start_modproxy name port passive-range backend-url [tls]: writes $RUN/name.conf from
# bench/proftpd-modproxy.conf.in, starts proftpd -n on it; returns 1 if it does not listen.
start_modproxy() {
    local name=$1 port=$2 tls=${5:-} proxy_tls=off ca
    ca=$PROFTPD_TREE/proftpd-proxy/etc/proftpd/cacerts.pem
    if [[ -z $MP_TABLES ]]; then
        MP_TABLES=$(mktemp -d /dev/shm/ftpgate-bench-modproxy.XXXXXX)
        chmod 755 "$MP_TABLES"
    fi
    mkdir -p "$MP_TABLES/$name"
    [[ -n $tls ]] && proxy_tls=on ca=$RUN/cert.pem
    { sed -e "s|@PORT@|$port|g; s|@NAME@|$name|g; s|@DIR@|$RUN|g; s|@TABLES@|$MP_TABLES/$name|g" \
          -e "s|@MP_PASV_LO@|${3%-*}|g; s|@MP_PASV_HI@|${3#*-}|g; s|@BACKEND@|$4|g" \
          -e "s|@PROXY_MODULES@|$MP_PROXY_MODULES|g; s|@TLS_MODULES@|$MP_TLS_MODULES|g" \
          -e "s|@PROXY_TLS@|$proxy_tls|g; s|@CA@|$ca|g" bench/proftpd-modproxy.conf.in
      if [[ -n $tls ]]; then
          # Client side: mod_tls, explicit FTPS (AUTH TLS) required, TLS 1.2/1.3 like
          # ftpgate; mod_tls's default requires TLS session reuse on data connections.
          printf '<IfModule mod_tls.c>\n  TLSEngine on\n  TLSRequired on\n  TLSProtocol TLSv1.2 TLSv1.3\n'
          printf '  TLSRSACertificateFile %s\n  TLSRSACertificateKeyFile %s\n  TLSLog %s\n</IfModule>\n' \
              "$RUN/cert.pem" "$RUN/key.pem" "$RUN/$name-tls.log"
      fi
    } >"$RUN/$name.conf"
    "$PROFTPD" -n -c "$RUN/$name.conf" >"$RUN/$name.log" 2>&1 &
    PIDS+=($!)
    PID[$name]=$!
    ADDR[$name]=127.0.0.1:$port
    TREE[$name]=1
    wait_port 127.0.0.1 "$port" soft
}
# why_failed name: the last error mod_proxy or proftpd logged, for the N/A reason.
why_failed() {
    cat "$RUN/$1-proxy.log" "$RUN/$1-tls.log" "$RUN/$1-system.log" "$RUN/$1.log" 2>/dev/null |
        grep -iE 'error|fail|fatal|unable|refus|denied' | tail -1 | cut -c1-200 || true
}
declare -A TREE # paths whose proxy forks a process per session (CPU includes reaped children)
# One short session (RETR 1 MiB) and a few NOOPs through mod_proxy, before measuring.
modproxy_probe() {
    "$LOAD" --addr "127.0.0.1:$MP_PORT" --timeout 20s sessions 1 1 --file 1m.bin 2>"$RUN/probe.log" |
        grep -q 'failures=0' &&
        "$LOAD" --addr "127.0.0.1:$MP_PORT" --timeout 20s noop-latency 5 >/dev/null 2>"$RUN/probe.log"
}
# mod_proxy 0.9.2 (reverse, without UseReverseProxyAuth) counts the backend login as done
# only on a 2xx reply to PASS (or 232 to USER). The bench vsftpd logs anonymous in with
# 230 straight after USER (no_anon_password=YES): mod_proxy relays that 230 but then
# answers NOOP, SIZE, PWD, SYST, MDTM, ... itself with "530 Please login with USER and
# PASS" (TYPE, EPSV, RETR, STOR still pass). So mod_proxy gets its own vsftpd on the
# same root that asks for a password (331, then any password: 230): one more round trip
# per login than the other paths.
mp_vsftpd() { # name port passive-range base-config
    sed -e "s|^no_anon_password=.*|no_anon_password=NO|; s|^listen_port=.*|listen_port=$2|" \
        -e "s|^pasv_min_port=.*|pasv_min_port=${3%-*}|; s|^pasv_max_port=.*|pasv_max_port=${3#*-}|" \
        "$4" >"$RUN/$1.conf"
    /usr/sbin/vsftpd "$RUN/$1.conf" >"$RUN/$1.log" 2>&1 &
    PIDS+=($!)
    wait_port 127.0.0.1 "$2" soft
}
if why=$(modproxy_missing) && [[ -n $why ]]; then
    NA[modproxy]=$why
elif ! mp_vsftpd vsftpd-modproxy "$MP_VS_PORT" "$MP_VS_PASV" "$RUN/vsftpd.conf" ||
        ! start_modproxy modproxy "$MP_PORT" "$MP_PASV" "ftp://127.0.0.1:$MP_VS_PORT"; then
    NA[modproxy]="vsftpd or proftpd did not listen: $(why_failed modproxy)"
elif ! modproxy_probe; then
    NA[modproxy]="probe failed: $(sed -n 's/^Error: //p' "$RUN/probe.log" | head -1): $(sed -n '/^Caused by:/{n;p;q}' "$RUN/probe.log" | sed 's/^ *//') $(why_failed modproxy)"
else
    PATHS+=(modproxy)
fi
[[ -n ${NA[modproxy]:-} ]] && log "ProFTPD mod_proxy: N/A (${NA[modproxy]})"
log "paths: ${PATHS[*]}; rounds: $ROUNDS; big file: $BIG"

HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# proxy_ticks path: CPU ticks of the path's proxy. A forking proxy (proftpd) runs each
# session in a child: wait until the master has reaped them all (their time then shows
# in its cutime+cstime), up to 10 s, and count those too.
proxy_ticks() {
    local pid=${PID[$1]}
    if [[ -n ${TREE[$1]:-} ]]; then
        for _ in $(seq 200); do
            pgrep -P "$pid" >/dev/null || break
            sleep 0.05
        done
        awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat"
    else
        cpu_ticks "$pid"
    fi
}
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }

# run_load path measure args... : runs ftpload, records the RESULT line and CPU ticks
# of the path's proxy process (if any) during the run.
run_load() {
    local path=$1 measure=$2
    shift 2
    local pid=${PID[$path]:-} before=0 out
    [[ -n $pid ]] && before=$(proxy_ticks "$path")
    if ! out=$("$LOAD" --addr "${ADDR[$path]}" --timeout 120s "$@" 2>>"$RUN/ftpload.log" | grep '^RESULT'); then
        log "$measure via $path FAILED (see $RUN/ftpload.log)"
        echo "FAILED" >>"$RES/$measure.$path.fail"
        return 0
    fi
    echo "$out" >>"$RES/$measure.$path"
    [[ -n $pid ]] && echo "$(($(proxy_ticks "$path") - before))" >>"$RES/$measure.$path.ticks"
    log "$measure via $path: ${out#RESULT }"
}

for measure in $ONLY; do
    [[ $measure == idle || $measure == ftps ]] && continue
    for r in $(seq "$ROUNDS"); do
        for path in "${PATHS[@]}"; do
            case $measure in
                download) run_load "$path" download download "$BIG_BYTES" --file "$BIGFILE" ;;
                upload)
                    run_load "$path" upload upload "$BIG_BYTES" --file "up/u-$path-$r.bin"
                    rm -f "$UP/u-$path-$r.bin"
                    ;;
                sessions) run_load "$path" sessions sessions "$SESSIONS" "$CONCURRENCY" --file 1m.bin ;;
                noop) run_load "$path" noop noop-latency "$NOOPS" ;;
                *) echo "unknown measure $measure" >&2; exit 2 ;;
            esac
        done
    done
done

# ---- idle sessions: memory per logged-in session, sessions held -------------------
if [[ " $ONLY " == *" idle "* ]]; then
    "$LOAD" serve "127.0.0.1:$STUB_PORT" >"$RUN/stub.log" 2>&1 &
    PIDS+=($!)
    wait_port 127.0.0.1 "$STUB_PORT"
    start_ftpgate ftpgate-idle "$FG_IDLE_PORT" 43000-43099 "127.0.0.1:$STUB_PORT" auto
    kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/smaps_rollup"; }
    pid=${PID[ftpgate-idle]}
    # Warm up allocator and runtime with a few sessions first.
    "$LOAD" --addr "127.0.0.1:$FG_IDLE_PORT" idle 50 --hold 0 >/dev/null 2>>"$RUN/ftpload.log"
    sleep 1
    pss0=$(kib "$pid" Pss) rss0=$(kib "$pid" Rss)
    "$LOAD" --addr "127.0.0.1:$FG_IDLE_PORT" idle "$IDLE" --hold 5 >"$RUN/idle.out" 2>>"$RUN/ftpload.log" &
    idle_pid=$!
    for _ in $(seq 1200); do grep -q '^READY' "$RUN/idle.out" && break; sleep 0.1; done
    sleep 2
    pss1=$(kib "$pid" Pss) rss1=$(kib "$pid" Rss)
    fds=$(find "/proc/$pid/fd" -mindepth 1 | wc -l)
    wait "$idle_pid" || true
    log "idle: $(cat "$RUN/idle.out" | tr '\n' ' ')"
    echo "idle=$IDLE pss0=$pss0 pss1=$pss1 rss0=$rss0 rss1=$rss1 fds=$fds $(grep '^RESULT' "$RUN/idle.out" | cut -d' ' -f2-) $(grep '^READY' "$RUN/idle.out" | cut -d' ' -f2-)" >"$RES/idle"
fi

# ---- FTPS rows (curl as the client) -----------------------------------------------
if [[ " $ONLY " == *" ftps "* ]]; then
    command -v openssl >/dev/null || { echo "openssl missing: sudo bash scripts/install-test-deps.sh" >&2; exit 1; }
    # A throw-away certificate for 127.0.0.1 serves vsftpd and ftpgate alike (CA:FALSE:
    # webpki refuses a CA certificate as a server certificate).
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
        -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
    chmod 644 "$RUN/key.pem"
    { fill bench/vsftpd.conf.in "$VS_TLS_PORT" | sed -e "s|pasv_min_port=.*|pasv_min_port=$TLS_PASV_LO|; s|pasv_max_port=.*|pasv_max_port=$TLS_PASV_HI|"
      printf 'ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\nforce_anon_data_ssl=YES\n'
      printf 'require_ssl_reuse=YES\nssl_ciphers=HIGH\nrsa_cert_file=%s\nrsa_private_key_file=%s\n' "$RUN/cert.pem" "$RUN/key.pem"
    } >"$RUN/vsftpd-tls.conf"
    /usr/sbin/vsftpd "$RUN/vsftpd-tls.conf" >"$RUN/vsftpd-tls.log" 2>&1 &
    PIDS+=($!)
    wait_port 127.0.0.1 "$VS_TLS_PORT"
    start_ftpgate_tls() { # name port data-ports backend backend-tls
        "$FTPGATE" run --listen "127.0.0.1:$2" --backend "$4" --public-address 127.0.0.1 \
            --data-ports "$3" --log-level warn --tls-cert "$RUN/cert.pem" --tls-key "$RUN/key.pem" \
            --backend-tls "$5" --backend-ca "$RUN/cert.pem" ${FTPGATE_ARGS:-} >"$RUN/$1.log" 2>&1 &
        PIDS+=($!)
        PID[$1]=$!
        ADDR[$1]=127.0.0.1:$2
        wait_port 127.0.0.1 "$2"
    }
    ADDR[ftps-direct]=127.0.0.1:$VS_TLS_PORT
    start_ftpgate_tls ftps-ftpgate "$FG_TLS_PORT" 44000-44999 "127.0.0.1:$VS_TLS_PORT" mirror
    start_ftpgate_tls ftps-offload "$FG_OFF_PORT" 45000-45999 "127.0.0.1:$VS_PORT" off
    FTPS_PATHS=(ftps-direct ftps-ftpgate ftps-offload)
    # ProFTPD mod_proxy, TLS both sides: mod_tls towards the client, mod_proxy's own
    # OpenSSL client towards vsftpd with TLS (ProxyTLSEngine on; PROT P on the backend
    # data connections, ProxyTLSTransferProtectionPolicy required by default).
    if why=$(modproxy_missing) && [[ -n $why ]]; then
        NA[ftps-modproxy]=$why
    elif ! mp_vsftpd vsftpd-tls-modproxy "$MP_VS_TLS_PORT" "$MP_VS_TLS_PASV" "$RUN/vsftpd-tls.conf" ||
            ! start_modproxy ftps-modproxy "$MP_TLS_PORT" "$MP_TLS_PASV" "ftp://127.0.0.1:$MP_VS_TLS_PORT" tls; then
        NA[ftps-modproxy]="vsftpd or proftpd did not listen: $(why_failed ftps-modproxy)"
    elif ! curl -s --ssl-reqd --cacert "$RUN/cert.pem" --user anonymous: --ftp-pasv -o "$RUN/probe.bin" \
            "ftp://${ADDR[ftps-modproxy]}/1m.bin" 2>>"$RUN/curl.log" || ! cmp -s "$RUN/probe.bin" "$ROOT/1m.bin"; then
        NA[ftps-modproxy]="probe session failed: $(why_failed ftps-modproxy)"
    else
        FTPS_PATHS+=(ftps-modproxy)
    fi
    [[ -n ${NA[ftps-modproxy]:-} ]] && log "ProFTPD mod_proxy with TLS: N/A (${NA[ftps-modproxy]})"
    ftps_curl() { # path remote → curl's speed_download (bytes/s)
        curl -s --ssl-reqd --cacert "$RUN/cert.pem" --user anonymous: --ftp-pasv \
            -o /dev/null -w '%{speed_download}\n' "ftp://${ADDR[$1]}/$2"
    }
    for r in $(seq "$ROUNDS"); do
        for path in "${FTPS_PATHS[@]}"; do
            pid=${PID[$path]:-} before=0
            [[ -n $pid ]] && before=$(proxy_ticks "$path")
            if speed=$(ftps_curl "$path" "$BIGFILE"); then
                echo "RESULT bytes_per_sec=$speed" >>"$RES/ftps-download.$path"
                [[ -n $pid ]] && echo "$(($(proxy_ticks "$path") - before))" >>"$RES/ftps-download.$path.ticks"
                log "ftps download via $path: $speed B/s"
            else
                echo FAILED >>"$RES/ftps-download.$path.fail"
            fi
            # Short sessions: login, PBSZ/PROT P, EPSV, RETR 1 MiB, QUIT; 8 at a time.
            [[ -n $pid ]] && before=$(proxy_ticks "$path")
            start=$(date +%s.%N)
            failed=$(seq "$FTPS_SESSIONS" | xargs -P 8 -I{} sh -c \
                "curl -s --ssl-reqd --cacert '$RUN/cert.pem' --user anonymous: --ftp-pasv -o /dev/null 'ftp://${ADDR[$path]}/1m.bin' || echo F" | grep -c F || true)
            end=$(date +%s.%N)
            echo "RESULT sessions_per_sec=$(awk -v n="$FTPS_SESSIONS" -v a="$start" -v b="$end" 'BEGIN {print n / (b - a)}') failures=$failed" >>"$RES/ftps-sessions.$path"
            [[ -n $pid ]] && echo "$(($(proxy_ticks "$path") - before))" >>"$RES/ftps-sessions.$path.ticks"
            log "ftps sessions via $path: $(tail -1 "$RES/ftps-sessions.$path")"
        done
    done
fi

# ---- table ---------------------------------------------------------------------------
for p in "${!NA[@]}"; do echo "${NA[$p]}" >"$RES/na.$p"; done
# A mod_proxy that is N/A still gets its column (cells N/A, the reason under the table).
[[ -n ${NA[modproxy]:-} ]] && PATHS+=(modproxy)
python3 - "$RES" "$HZ" "$BIG_BYTES" "$SESSIONS" "$ROUNDS" "${FTPS_SESSIONS}" "${PATHS[@]}" <<'PY'
import os, statistics, sys
res, hz, big, sessions, rounds, ftps_sessions, paths = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), sys.argv[7:]

def na(path):
    p = os.path.join(res, f"na.{path}")
    return open(p).read().strip() if os.path.exists(p) else None

def na_notes(ps):
    for p in ps:
        if na(p):
            print(f"\n{p}: N/A — {na(p)}")

# Proxies whose CPU time is reported: ftpgate (one process) and ProFTPD mod_proxy (the
# master plus its reaped per-session processes).
def cpu_reported(p):
    return p.startswith("ftpgate") or p.startswith("modproxy")

def rows(measure, path):
    p = os.path.join(res, f"{measure}.{path}")
    if not os.path.exists(p):
        return []
    return [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in open(p)]

def ticks(measure, path):
    p = os.path.join(res, f"{measure}.{path}.ticks")
    return [int(x) / hz for x in open(p)] if os.path.exists(p) else []

def fails(measure, path):
    p = os.path.join(res, f"{measure}.{path}.fail")
    return sum(1 for _ in open(p)) if os.path.exists(p) else 0

def cell(vals, fmt, base=None):
    if not vals:
        return "N/A", None
    m = statistics.median(vals)
    s = f"{fmt(m)} ({fmt(min(vals))}–{fmt(max(vals))})"
    if base:
        s += f" ×{m / base:.3f}"
    return s, m

specs = [
    ("download", "bytes_per_sec", "download MB/s", lambda v: f"{v / 1e6:.0f}", big),
    ("upload", "bytes_per_sec", "upload MB/s", lambda v: f"{v / 1e6:.0f}", big),
    ("sessions", "sessions_per_sec", "short sessions/s", lambda v: f"{v:.0f}", sessions),
    ("noop", "p50_us", "NOOP p50 µs", lambda v: f"{v:.1f}", None),
    ("noop", "p99_us", "NOOP p99 µs", lambda v: f"{v:.1f}", None),
]
print(f"\n## ftpgate benchmark — medians (min–max) over {rounds} interleaved rounds; ×ratio to direct\n")
print("| measure | " + " | ".join(paths) + " |")
print("|---|" + "---|" * len(paths))
cpu_lines = []
for measure, key, label, fmt, per in specs:
    if not any(rows(measure, p) for p in paths):
        continue
    base = None
    cells = []
    for p in paths:
        vals = [float(r[key]) for r in rows(measure, p)]
        s, m = cell(vals, fmt, base if p != "direct" else None)
        if p == "direct":
            base = m
        if measure in ("noop",) and p != "direct" and m is not None and base is not None:
            s = f"{fmt(m)} ({fmt(min(vals))}–{fmt(max(vals))}) +{m - base:.1f}"
        if measure == "sessions":
            f = sum(int(r["failures"]) for r in rows(measure, p))
            s += f", {f} failed"
        if fails(measure, p):
            s += f", {fails(measure, p)} runs FAILED"
        if na(p) and not vals:
            s = "N/A"
        cells.append(s)
    print(f"| {label} | " + " | ".join(cells) + " |")
    if key != "p99_us":
        for p in paths:
            t = ticks(measure, p)
            if t and cpu_reported(p):
                unit = "s per transfer" if measure in ("download", "upload") else ("ms per session" if measure == "sessions" else "s per run")
                scale = 1000 / per if measure == "sessions" else 1
                med = statistics.median(t) * scale
                cpu_lines.append(f"| {p} CPU, {measure} | {med:.3f} {unit} ({min(t) * scale:.3f}–{max(t) * scale:.3f}) |")
def med(measure, path, key):
    vals = [float(r[key]) for r in rows(measure, path)]
    return statistics.median(vals) if vals else None
if "modproxy" in paths and "ftpgate" in paths:
    ratios = []
    for measure, key, label in [("download", "bytes_per_sec", "download"), ("upload", "bytes_per_sec", "upload"), ("sessions", "sessions_per_sec", "short sessions")]:
        fg, mp = med(measure, "ftpgate", key), med(measure, "modproxy", key)
        if fg and mp:
            ratios.append(f"{label} ×{fg / mp:.2f}")
    fg, mp, d = med("noop", "ftpgate", "p50_us"), med("noop", "modproxy", "p50_us"), med("noop", "direct", "p50_us")
    if fg and mp and d:
        ratios.append(f"NOOP p50 added {fg - d:.1f} µs vs {mp - d:.1f} µs")
    if ratios:
        print("\nftpgate vs ProFTPD mod_proxy: " + ", ".join(ratios))
na_notes(paths)
if cpu_lines:
    print("\n| proxy CPU (utime+stime, 1/%d s ticks; modproxy: master + reaped session processes) | median (min–max) |\n|---|---|" % hz)
    print("\n".join(cpu_lines))
ftps_paths = ["ftps-direct", "ftps-ftpgate", "ftps-offload", "ftps-modproxy"]
if any(rows("ftps-download", p) for p in ftps_paths):
    print(f"\n## FTPS (curl client, vsftpd require_ssl_reuse=YES) — medians (min–max); ×ratio to direct FTPS\n")
    print("| measure | direct FTPS | ftpgate TLS both sides | ftpgate TLS offload | ProFTPD mod_proxy TLS both sides |\n|---|---|---|---|---|")
    for measure, key, label, fmt in [
        ("ftps-download", "bytes_per_sec", "FTPS download MB/s", lambda v: f"{v / 1e6:.0f}"),
        ("ftps-sessions", "sessions_per_sec", f"short FTPS sessions/s ({ftps_sessions} per round)", lambda v: f"{v:.1f}"),
    ]:
        base, cells = None, []
        for p in ftps_paths:
            vals = [float(r[key]) for r in rows(measure, p)]
            s, m = cell(vals, fmt, base if p != "ftps-direct" else None)
            if p == "ftps-direct":
                base = m
            if measure == "ftps-sessions":
                s += f", {sum(int(r['failures']) for r in rows(measure, p))} failed"
            if fails(measure, p):
                s += f", {fails(measure, p)} runs FAILED"
            if na(p) and not vals:
                s = "N/A"
            cells.append(s)
        print(f"| {label} | " + " | ".join(cells) + " |")
    if rows("ftps-download", "ftps-modproxy") and rows("ftps-download", "ftps-ftpgate"):
        for measure, key, label in [("ftps-download", "bytes_per_sec", "download"), ("ftps-sessions", "sessions_per_sec", "short sessions")]:
            fg = statistics.median(float(r[key]) for r in rows(measure, "ftps-ftpgate"))
            mp = statistics.median(float(r[key]) for r in rows(measure, "ftps-modproxy"))
            if mp:
                print(f"\nftpgate TLS both sides / mod_proxy TLS both sides, {label}: ×{fg / mp:.2f}", end="")
        print()
    na_notes(["ftps-modproxy"])
    print("\n| proxy CPU, FTPS | median |\n|---|---|")
    for p in ftps_paths[1:]:
        t = ticks("ftps-download", p)
        if t:
            print(f"| {p}: per GiB downloaded | {statistics.median(t) / (big / 2**30):.3f} s |")
        t = ticks("ftps-sessions", p)
        if t:
            print(f"| {p}: per short session | {statistics.median(t) * 1000 / ftps_sessions:.2f} ms |")
idle = os.path.join(res, "idle")
if os.path.exists(idle):
    d = dict(kv.split("=", 1) for kv in open(idle).read().split())
    n = int(d["idle"])
    print(f"\n| idle sessions through ftpgate | value |\n|---|---|")
    print(f"| sessions opened / alive after hold / failures | {d.get('sessions', '?')} / {d.get('alive', '?')} / {d.get('failures', '?')} |")
    print(f"| PSS growth per session | {(int(d['pss1']) - int(d['pss0'])) / n:.2f} KiB ({d['pss0']} → {d['pss1']} KiB) |")
    print(f"| RSS growth per session | {(int(d['rss1']) - int(d['rss0'])) / n:.2f} KiB |")
    print(f"| open descriptors while held | {d['fds']} |")
PY
