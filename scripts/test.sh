#!/usr/bin/env bash
# Runs every check and test ftpgate has, installing what the tests need.
# This is the README's test command and what CI (.ci/run) runs.
#
#   bash scripts/test.sh             # as root: installs deps, runs everything
#   bash scripts/test.sh             # not root: end-to-end tests SKIP
#                                    # (or fail, if CI is set)
#
# Extra arguments go to the test binaries, e.g. `bash scripts/test.sh reverse_`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

if [[ $(id -u) -eq 0 ]]; then
    step "installing test dependencies"
    bash scripts/install-test-deps.sh
else
    echo "test.sh: not root; skipping dependency installation." \
        "End-to-end tests need root (network namespaces)." >&2
fi

# shellcheck source=scripts/ensure-rust.sh
source scripts/ensure-rust.sh
ensure_rust

# rustfmt and clippy are rustup components; add them when rustup manages the
# toolchain and they are missing (a fresh CI image may have neither).
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
            step "rustup component add $c"
            rustup component add "$c"
        fi
    done
fi

# Namespaces of a test process that died without unwinding (SIGKILL, OOM)
# are named ftpgate-t-<pid>-...; remove those whose process is gone.
if [[ $(id -u) -eq 0 ]] && command -v ip >/dev/null 2>&1; then
    # (`|| true`: no match is the normal case and must not trip pipefail.)
    { ip netns list 2>/dev/null | awk '{print $1}' | grep '^ftpgate-t-' || true; } | while read -r ns; do
        pid=${ns#ftpgate-t-}
        pid=${pid%%-*}
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "test.sh: removing stale namespace $ns" >&2
            for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
            ip netns del "$ns" || true
        fi
    done
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo build --release"
cargo build --release

# End-to-end tests are IO-bound (each builds its own namespaces, daemons and
# ftpgate), so more threads than the 2 cores pay off. RUST_TEST_THREADS
# rather than --test-threads: harness=false targets (benches) ignore it.
step "cargo test"
RUST_TEST_THREADS="${TEST_THREADS:-4}" cargo test --all-targets -- "$@"

step "cargo test --doc"
cargo test --doc

# Fuzz smoke (issue 13): each target a few seconds, so a target that no longer builds
# or crashes on its seeds fails CI. Long runs: bash fuzz/run.sh SECONDS.
step "fuzz smoke"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
bash fuzz/run.sh "${FUZZ_SMOKE_SECONDS:-5}"

step "all checks passed"
