//! Stateful firewalls (iptables + conntrack) inside a test namespace.
//!
//! [`install_idle_dropping_firewall`] models the middlebox that breaks long FTP
//! downloads in the wild: a connection-tracking firewall whose established-flow
//! timeout is shorter than the transfer. While the data connection is busy, the
//! control connection carries no packet; its conntrack entry expires, and the
//! server's `226` that finally arrives matches no entry. With
//! `nf_conntrack_tcp_loose=0` such a mid-stream packet cannot create a new
//! entry either, so it is classified INVALID and dropped: the client never
//! sees `226`. Only traffic on the control connection during the transfer (a
//! NOOP keepalive, TCP keepalive probes) keeps the entry alive.
//!
//! Every setting is per network namespace (kernel ≥ 4.x), so the host and
//! other tests are unaffected.

use std::process::Command;

use super::netns::{run_bounded, Netns};

/// Conntrack module presence: the `net.netfilter.nf_conntrack_*` sysctls only
/// exist once it is loaded. An iptables rule using `-m conntrack` loads it on
/// demand; `modprobe` covers hosts where that autoload is off.
fn ensure_conntrack_sysctls(ns: &Netns) {
    let probe = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established";
    let present = |ns: &Netns| {
        let mut cmd = ns.command("test");
        cmd.args(["-e", probe]);
        run_bounded(cmd, std::time::Duration::from_secs(10))
            .0
            .status
            .success()
    };
    if present(ns) {
        return;
    }
    // Best effort: the module may be built in or loading may be forbidden.
    let _ = Command::new("modprobe").arg("nf_conntrack").status();
    assert!(
        present(ns),
        "{probe} missing in {} even after `modprobe nf_conntrack`: \
         the kernel lacks connection tracking",
        ns.name()
    );
}

/// Installs a connection-tracking firewall in `ns` that forgets established
/// TCP flows after `established_timeout_secs` without a packet and drops
/// packets of forgotten flows (INVALID) in both directions. New connections
/// and packets of tracked flows pass.
pub fn install_idle_dropping_firewall(ns: &Netns, established_timeout_secs: u32) {
    // Rules first: `-m conntrack` makes the kernel track this namespace's flows.
    for chain in ["INPUT", "OUTPUT"] {
        for (state, verdict) in [("INVALID", "DROP"), ("ESTABLISHED,RELATED", "ACCEPT")] {
            ns.run_ok(
                "iptables",
                &[
                    "-w",
                    "-A",
                    chain,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    state,
                    "-j",
                    verdict,
                ],
            );
        }
        ns.run_ok(
            "iptables",
            &[
                "-w",
                "-A",
                chain,
                "-p",
                "tcp",
                "--syn",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "ACCEPT",
            ],
        );
    }
    ensure_conntrack_sysctls(ns);
    ns.sysctl(
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        &established_timeout_secs.to_string(),
    );
    // A packet in the middle of an unknown flow is INVALID, not NEW: the
    // expired control connection cannot be picked up again.
    ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0");
}

/// Packets dropped so far by the INVALID rule of `chain` (INPUT or OUTPUT).
pub fn invalid_drops(ns: &Netns, chain: &str) -> u64 {
    let out = ns.run_ok("iptables", &["-w", "-L", chain, "-v", "-n", "-x"]);
    let text = String::from_utf8_lossy(&out.stdout);
    // "    pkts      bytes target prot opt in out source destination [match]"
    text.lines()
        .filter(|l| l.contains("DROP") && l.contains("INVALID"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Both chains' rules with counters and the conntrack table, for failure
/// messages.
pub fn describe(ns: &Netns) -> String {
    let mut s = String::new();
    for (prog, args) in [
        ("iptables", vec!["-w", "-L", "-v", "-n", "-x"]),
        ("conntrack", vec!["-L"]),
    ] {
        let mut cmd = ns.command(prog);
        cmd.args(&args);
        let (out, _) = run_bounded(cmd, std::time::Duration::from_secs(10));
        s.push_str(&format!(
            "--- {prog} {} in {} ---\n{}{}",
            args.join(" "),
            ns.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    s
}

/// Silently drops TCP SYNs to `port` in `ns`, like a firewall that blackholes
/// a dead backend: connecting to it neither succeeds nor is refused.
pub fn drop_syns_to_port(ns: &Netns, port: u16) {
    ns.run_ok(
        "iptables",
        &[
            "-w",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            &port.to_string(),
            "-j",
            "DROP",
        ],
    );
}

/// Makes `dev` in `ns` a slow uplink: a token bucket shapes everything `ns`
/// sends through it to `bytes_per_sec`, and TCP send buffers in `ns` are
/// capped at 128 KiB, so a server there writes its last byte (and sends its
/// `226`) only shortly before the client has received the file, instead of
/// handing megabytes to the kernel at once.
pub fn slow_uplink(ns: &Netns, dev: &str, bytes_per_sec: usize) {
    let rate = format!("{}bit", bytes_per_sec * 8);
    ns.run_ok(
        "tc",
        &[
            "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", "32kb", "latency",
            "200ms",
        ],
    );
    ns.sysctl("net.ipv4.tcp_wmem", "4096 16384 131072");
}
