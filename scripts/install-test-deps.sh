#!/usr/bin/env bash
# Installs everything ftpgate's end-to-end tests and demo need on Debian 12.
# Idempotent: safe to run on every CI invocation.
#
# - Debian packages for the clients (curl, lftp, tnftp), vsftpd (installed
#   normally), pyftpdlib, and the network tooling (iproute2, iptables, ...).
# - proftpd is unpacked with `apt-get download` + `dpkg -x` into
#   /opt/ftpgate-test/proftpd: Debian's FTP servers all provide `ftp-server`
#   and conflict with each other, so only one (vsftpd) can be installed.
#   proftpd's shared-library dependencies are installed normally (they do
#   not conflict). The tests run it as /opt/ftpgate-test/proftpd/usr/sbin/
#   proftpd -n -c <own config>; everything it needs is compiled in.
#   mod_tls (proftpd-mod-crypto) and mod_proxy (proftpd-mod-proxy) are
#   unpacked the same way into /opt/ftpgate-test/proftpd-crypto and
#   /opt/ftpgate-test/proftpd-proxy and loaded with ModulePath/LoadModule.
#   pure-ftpd is unpacked the same way into /opt/ftpgate-test/pure-ftpd.
# - A locked-down system account `ftpgate-test` (password `ftpgate-test-pw`)
#   that vsftpd and proftpd log in as: both need a real system account for
#   local logins. Its shell is nologin; authentication goes through a
#   dedicated PAM service (/etc/pam.d/ftpgate-test) that only does pam_unix.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-test-deps.sh: must run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
OPT=/opt/ftpgate-test
TEST_USER=ftpgate-test
TEST_PASS=ftpgate-test-pw

PACKAGES=(
    ca-certificates curl lftp tnftp vsftpd python3 python3-pyftpdlib
    # test certificates for the FTPS checks of tests/e2e_probe.rs and e2e_ftps.rs
    openssl
    # pyftpdlib's TLS_FTPHandler (tests/e2e_ftps.rs)
    python3-openssl
    iproute2 iptables conntrack nftables procps coreutils util-linux passwd
    # promtool and the prometheus server, for tests/metrics_admin.rs
    prometheus
    # server farms (tests/e2e_farm.rs): a real PROXY-protocol load balancer, and a
    # DNS server for named backends (dnsmasq-base: the binary without the system
    # service that the dnsmasq package would start on port 53)
    haproxy dnsmasq-base
    # pip for kubernetes-validate below (tests/kubernetes_manifests.rs)
    python3-pip
    # proftpd-core's shared libraries (the package itself is unpacked below)
    libhiredis0.14 libmemcached11 libmemcachedutil2 libpcre2-posix3
    libacl1 libcap2 libcrypt1 libidn2-0 libncursesw6 libpam0g libssl3
    # proftpd-mod-proxy's shared libraries (bench/run.sh's mod_proxy path; the
    # module is unpacked below)
    libsodium23 libsqlite3-0
    # pure-ftpd's shared libraries (unpacked below): libsodium23, listed above
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    echo "install-test-deps.sh: installing ${missing[*]}" >&2
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

# vsftpd's package starts the system-wide daemon on port 21 of the host.
# Tests run their own instances inside network namespaces, so the system one
# is not needed; stop it where an init system is present (ignore failures in
# containers without one).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet vsftpd 2>/dev/null; then
    systemctl stop vsftpd || true
    systemctl disable vsftpd || true
fi

# Unpack a .deb into $OPT/<dir> unless that version is already there.
unpack() {
    local pkg=$1 dir=$2 marker
    local version
    version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
    if [[ -z "$version" || "$version" == "(none)" ]]; then
        apt-get update
        version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
    fi
    marker="$OPT/$dir/.version"
    if [[ -f "$marker" && "$(cat "$marker")" == "$version" ]]; then
        return 0
    fi
    local tmp
    tmp=$(mktemp -d)
    # Let apt fetch as its unprivileged _apt user (avoids a sandbox warning).
    chown _apt "$tmp" 2>/dev/null || true
    # `apt-get download` writes into the current directory; _apt cannot
    # write into a root-only mktemp dir, which only produces a warning.
    (cd "$tmp" && apt-get download "$pkg=$version")
    rm -rf "${OPT:?}/$dir"
    mkdir -p "$OPT/$dir"
    dpkg -x "$tmp"/*.deb "$OPT/$dir"
    echo "$version" >"$marker"
    rm -rf "$tmp"
    echo "install-test-deps.sh: unpacked $pkg $version into $OPT/$dir" >&2
}
mkdir -p "$OPT"
unpack proftpd-core proftpd
# mod_tls (FTPS, tests/e2e_ftps.rs) lives in proftpd-mod-crypto; loaded with
# ModulePath/LoadModule from here.
unpack proftpd-mod-crypto proftpd-crypto
# mod_proxy (ProFTPD as a reverse proxy: the comparison path of bench/run.sh) lives
# in proftpd-mod-proxy; loaded with ModulePath/LoadModule from here.
unpack proftpd-mod-proxy proftpd-proxy

# Kubernetes manifests (tests/kubernetes_manifests.rs): kubernetes-validate checks the
# rendered overlays against the Kubernetes API schemas it ships (1.25 to 1.37 in this
# version; the test asks for 1.30, strict). Pinned: a new release may change its schemas.
# kubectl (for `kubectl kustomize`) is not installed here: Debian 12 has only kubectl
# 1.20, whose kustomize is too old; this machine image ships a current one.
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! python3 -m pip show kubernetes-validate 2>/dev/null | grep -qx "Version: $KUBERNETES_VALIDATE_VERSION"; then
    python3 -m pip install --quiet --break-system-packages "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
if ! command -v kubectl >/dev/null 2>&1; then
    echo "install-test-deps.sh: kubectl not found: tests/kubernetes_manifests.rs will fail under CI" >&2
fi

# pure-ftpd (FTPS interop, tests/e2e_ftps.rs): also an `ftp-server`, unpacked the
# same way; the tests run $OPT/pure-ftpd/usr/sbin/pure-ftpd with command-line
# options only (no wrapper, no inetd).
unpack pure-ftpd pure-ftpd

# Prove the unpacked binaries run (all shared libraries resolved).
"$OPT/proftpd/usr/sbin/proftpd" --version >/dev/null
"$OPT/pure-ftpd/usr/sbin/pure-ftpd" --help >/dev/null

# The test account: no login shell. vsftpd changes into the home directory
# before `local_root`, so the home must exist (empty, owned by root).
TEST_HOME=/var/lib/ftpgate-test
mkdir -p "$TEST_HOME"
chmod 0755 "$TEST_HOME"
if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir "$TEST_HOME" \
        --shell /usr/sbin/nologin "$TEST_USER"
fi
if [[ "$(getent passwd "$TEST_USER" | cut -d: -f6,7)" != "$TEST_HOME:/usr/sbin/nologin" ]]; then
    usermod --home "$TEST_HOME" --shell /usr/sbin/nologin "$TEST_USER"
fi
echo "$TEST_USER:$TEST_PASS" | chpasswd

# vsftpd's default PAM service also requires the shell to be listed in
# /etc/shells (pam_shells); a dedicated service with pam_unix only lets the
# nologin account authenticate over FTP while it still cannot log in anywhere
# else.
cat >/etc/pam.d/ftpgate-test <<'PAM'
# Used only by ftpgate's end-to-end tests (scripts/install-test-deps.sh).
auth     required pam_unix.so
account  required pam_unix.so
session  required pam_permit.so
PAM

echo "install-test-deps.sh: ok" >&2
