#!/usr/bin/env bash
# ftpgate soak (issue 13): one hour of mixed load through ftpgate against a real
# vsftpd on loopback — short sessions, long downloads and uploads, idle sessions,
# aborted transfers, clients vanishing with RST, the backend restarted twice — while
# ftpgate's open fds, RSS, threads and session gauges are sampled every 10 s and every
# completed transfer's SHA-256 is checked (bench/soak.py does the load).
#
#   bash bench/soak.sh                 # 3600 s
#   bash bench/soak.sh 600             # a shorter run
#   FTPGATE_BIN=target/debug/ftpgate bash bench/soak.sh 300
#   PACE=0 bash bench/soak.sh          # no pause between iterations (default 0.5 s)
#
# Pass: no hash mismatch, no error outside the restarts' grace windows, fds and RSS
# flat after warm-up (slopes per hour in the SOAK line; samples in $RUN/samples.jsonl).
# Needs root (vsftpd) and python3. Not part of the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_TOTAL=${1:-3600}
VS_PORT=${VS_PORT:-23121} FG_PORT=${FG_PORT:-23122} ADMIN_PORT=${ADMIN_PORT:-23123}
PASV_LO=${PASV_LO:-33000} PASV_HI=${PASV_HI:-33499}
FG_LO=${FG_LO:-33500} FG_HI=${FG_HI:-33999}
BIN=${FTPGATE_BIN:-target/release/ftpgate}

[[ $(id -u) -eq 0 ]] || { echo "bench/soak.sh: run as root" >&2; exit 1; }
command -v /usr/sbin/vsftpd >/dev/null || { echo "vsftpd missing: sudo bash scripts/install-test-deps.sh" >&2; exit 1; }
if [[ -z ${FTPGATE_BIN:-} ]]; then
    cargo build --release --bin ftpgate >&2
fi
ulimit -n "$(ulimit -Hn)"

RUN=$(mktemp -d /tmp/ftpgate-soak.XXXXXX)
ROOT=$RUN/root
mkdir -p "$ROOT/up" "$RUN/empty"
chmod 555 "$RUN/empty"
chmod 755 "$RUN" "$ROOT"
chmod 777 "$ROOT/up"
head -c 1M /dev/urandom >"$ROOT/1m.bin"
head -c 64M /dev/urandom >"$ROOT/big.bin"
chmod 644 "$ROOT"/*.bin
# vsftpd refuses a writable anonymous root; uploads go to up/.
chmod 555 "$ROOT"

sed -e "s|@PORT@|$VS_PORT|; s|@ROOT@|$ROOT|; s|@EMPTY@|$RUN/empty|; s|@PASV_LO@|$PASV_LO|; s|@PASV_HI@|$PASV_HI|" \
    bench/vsftpd.conf.in >"$RUN/vsftpd.conf"
cat >"$RUN/start-vsftpd.sh" <<EOS
#!/usr/bin/env bash
setsid /usr/sbin/vsftpd "$RUN/vsftpd.conf" >>"$RUN/vsftpd.log" 2>&1 </dev/null &
echo \$! >"$RUN/vsftpd.pid"
for _ in \$(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$VS_PORT) 2>/dev/null && exit 0; sleep 0.1; done
echo "vsftpd did not start" >&2; exit 1
EOS
cat >"$RUN/restart-vsftpd.sh" <<EOS
#!/usr/bin/env bash
# setsid made vsftpd a process-group leader: the group is it and its session children.
pid=\$(cat "$RUN/vsftpd.pid"); kill -- "-\$pid" 2>/dev/null || kill "\$pid"
for _ in \$(seq 100); do kill -0 "\$pid" 2>/dev/null || break; sleep 0.1; done
exec bash "$RUN/start-vsftpd.sh"
EOS
bash "$RUN/start-vsftpd.sh"

cleanup() {
    [[ -n ${FG_PID:-} ]] && kill "$FG_PID" 2>/dev/null || true
    [[ -s $RUN/vsftpd.pid ]] && kill -- "-$(cat "$RUN/vsftpd.pid")" 2>/dev/null || true
}
trap cleanup EXIT

"$BIN" run --listen "127.0.0.1:$FG_PORT" --backend "127.0.0.1:$VS_PORT" \
    --public-address 127.0.0.1 --data-ports "$FG_LO-$FG_HI" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --log-level warn 2>"$RUN/ftpgate.log" &
FG_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$FG_PORT) 2>/dev/null && break; sleep 0.1; done

echo "soak: ${SECONDS_TOTAL}s, ftpgate pid $FG_PID, files in $RUN" >&2
set +e
python3 bench/soak.py --port "$FG_PORT" --admin "127.0.0.1:$ADMIN_PORT" --pid "$FG_PID" \
    --root "$ROOT" --seconds "$SECONDS_TOTAL" --pace "${PACE:-0.5}" --warmup "$((SECONDS_TOTAL / 10))" \
    --restart-cmd "bash $RUN/restart-vsftpd.sh" --samples "$RUN/samples.jsonl" | tee "$RUN/summary.txt"
rc=${PIPESTATUS[0]}
kill -0 "$FG_PID" 2>/dev/null || { echo "soak: ftpgate died" >&2; rc=1; }
exit "$rc"
