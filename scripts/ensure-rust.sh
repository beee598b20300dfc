# Sourced by scripts/test.sh and scripts/demo.sh: makes `cargo` available.
# Debian 12's packaged rustc (1.63) is older than ftpgate's rust-version, so
# a missing toolchain is installed with rustup (minimal profile, plus rustfmt
# and clippy, which scripts/test.sh needs), and a C linker from apt.

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cc >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
        echo "ensure-rust: installing a C toolchain for linking" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            gcc libc6-dev ca-certificates curl
    fi
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    echo "ensure-rust: cargo not found; installing Rust with rustup" >&2
    if ! command -v curl >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            ca-certificates curl
    fi
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --component rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
}
