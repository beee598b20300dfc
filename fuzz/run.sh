#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each and prints the executions
# per target. Seeds: fuzz/corpus/<target> (read only); new inputs go to a scratch
# directory ($FUZZ_WORK, default a temp dir) so the committed corpus stays small;
# crashes land in fuzz/artifacts/<target> and make this script fail.
#
#   bash fuzz/run.sh 60                   # each target 60 s
#   bash fuzz/run.sh 5 line_framer        # one target
#   FUZZ_JOBS=2 bash fuzz/run.sh 600      # two fuzzer processes per target
#   FUZZ_SANITIZER=none bash fuzz/run.sh 1500   # long runs: no ASan
#
# FUZZ_SANITIZER (default `address`) is passed as `cargo fuzz -s`. The fuzzed code is
# safe Rust: an out-of-bounds access is a bounds-check panic, which libFuzzer reports
# as a crash without ASan, so `none` loses little and runs several times more
# executions per second, which is what long runs are for.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly-only
# flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "fuzz/run.sh: cargo-fuzz missing (cargo install cargo-fuzz)" >&2; exit 1; }
if (($#)); then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
sanitizer=${FUZZ_SANITIZER:-address}
for t in "${targets[@]}"; do cargo fuzz build -O -s "$sanitizer" "$t" >&2; done
work=${FUZZ_WORK:-$(mktemp -d /tmp/ftpgate-fuzz.XXXXXX)}
jobs=${FUZZ_JOBS:-1}
total=0 failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "$work/$t"
    log=$work/$t.log
    # -jobs/-workers: independent fuzzer processes sharing the scratch corpus.
    extra=()
    ((jobs > 1)) && extra=(-jobs="$jobs" -workers="$jobs")
    if cargo fuzz run -O -s "$sanitizer" "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        "${extra[@]}" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed=1
    fi
    # With -jobs each job writes fuzz-N.log in the working directory, and the parent
    # copies every finished job's log into its own output: count the job logs only,
    # or every execution is counted twice.
    if ((jobs > 1)); then counted=(fuzz-*.log); else counted=("$log"); fi
    n=$( { cat "${counted[@]}" 2>/dev/null || true; } | sed -n 's/^stat::number_of_executed_units: *//p' | awk '{s+=$1} END {print s+0}')
    rm -f fuzz-*.log
    total=$((total + n))
    printf 'FUZZ target=%s seconds=%s sanitizer=%s executions=%s status=%s\n' "$t" "$secs" "$sanitizer" "$n" "$status"
    [[ $status == ok ]] || tail -40 "$log" >&2
done
printf 'FUZZ total_executions=%s\n' "$total"
exit "$failed"
