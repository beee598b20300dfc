//! `ftpgate probe` as a process inside a namespace, and the NAT'd-server
//! topology its tests share.
//!
//! [`NatServer`] turns the proxy namespace of a [`ReverseTopology`] into a
//! NAT router in front of the backend, the way small sites publish an FTP
//! server: DNAT of the control port(s) and of a passive range from the
//! public 203.0.113.1 to the backend's private 10.0.0.2, masquerade of the
//! backend's outgoing connections (active-mode data), no FTP helper. So the
//! server only knows its private address, and announces it in `227` unless
//! configured with `pasv_address`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::addrs::*;
use super::netns::{run_bounded, Netns};
use super::servers::{FtpServer, ServerKind, FTP_PASS, FTP_USER};
use super::ReverseTopology;

/// One probe run.
pub struct ProbeRun {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ProbeRun {
    /// The `--json` report.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("probe output is not JSON ({e}):\n{self}"))
    }

    /// The check of `step` (e.g. `PASV`, `banner`) in the JSON report.
    pub fn check(&self, step: &str) -> Value {
        let j = self.json();
        j["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["step"] == step).cloned())
            .unwrap_or_else(|| panic!("no `{step}` check in the report:\n{self}"))
    }

    /// Asserts the verdict of `step`, and that its remedy contains `remedy`.
    pub fn assert_verdict(&self, step: &str, verdict: &str, remedy: &str) {
        let c = self.check(step);
        assert_eq!(c["verdict"], verdict, "verdict of {step}:\n{self}");
        if !remedy.is_empty() {
            let r = c["remedy"].as_str().unwrap_or_default();
            assert!(
                r.contains(remedy),
                "remedy of {step} lacks {remedy:?}:\n{self}"
            );
        }
    }

    /// Every check passed and the exit status is 0.
    pub fn assert_all_pass(&self) {
        let j = self.json();
        let failed: Vec<&Value> = j["checks"]
            .as_array()
            .map(|a| a.iter().filter(|c| c["status"] == "fail").collect())
            .unwrap_or_default();
        assert!(failed.is_empty(), "failed checks {failed:?}:\n{self}");
        assert_eq!(j["ok"], true, "{self}");
        assert_eq!(self.code, Some(0), "{self}");
    }

    /// The probe never shows the password, on either stream.
    pub fn assert_no_password(&self) {
        for (name, s) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            assert!(!s.contains(FTP_PASS), "password on {name}:\n{self}");
        }
    }
}

impl std::fmt::Display for ProbeRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "$ ftpgate {}", self.args.join(" "))?;
        writeln!(f, "exit: {:?}", self.code)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

/// `ftp://ftpgate-test:<password>@<addr>/<path>`.
pub fn url(scheme: &str, addr: SocketAddr, path: &str) -> String {
    format!("{scheme}://{FTP_USER}:{FTP_PASS}@{addr}/{path}")
}

/// Runs `ftpgate probe args...` in `ns`, bounded by `bound`.
pub fn probe(ns: &Netns, args: &[&str], bound: Duration) -> ProbeRun {
    let mut cmd = ns.command(super::proxy::FTPGATE_BIN);
    cmd.arg("probe").args(args);
    let (out, timed_out) = run_bounded(cmd, bound);
    let run = ProbeRun {
        args: args.iter().map(|a| a.replace(FTP_PASS, "***")).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!timed_out, "probe exceeded {bound:?}:\n{run}");
    run
}

/// The proxy namespace of `topo` as a NAT router in front of the backend.
pub struct NatServer<'a> {
    pub topo: &'a ReverseTopology,
}

impl<'a> NatServer<'a> {
    pub fn new(topo: &'a ReverseTopology) -> NatServer<'a> {
        let gw = &topo.proxy;
        gw.sysctl("net.ipv4.ip_forward", "1");
        topo.backend
            .route(&["default", "via", &PROXY_PRIVATE_V4.to_string()]);
        gw.run_ok(
            "iptables",
            &[
                "-w",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "10.0.0.0/24",
                "-o",
                "eth0",
                "-j",
                "MASQUERADE",
            ],
        );
        NatServer { topo }
    }

    /// Forwards public TCP `ports` (`21` or `50000:50099`) to the backend.
    pub fn forward(&self, ports: &str) {
        self.topo.proxy.run_ok(
            "iptables",
            &[
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &PROXY_PUBLIC_V4.to_string(),
                "-p",
                "tcp",
                "--dport",
                ports,
                "-j",
                "DNAT",
                "--to-destination",
                &BACKEND_V4.to_string(),
            ],
        );
    }

    /// Adds (`-A`) or deletes (`-D`) a forwarding rule dropping `ports`: one
    /// spelling, so deleting removes exactly what was added.
    pub fn drop_forwarded(&self, action: &str, ports: &str) {
        self.topo.proxy.run_ok(
            "iptables",
            &[
                "-w", action, "FORWARD", "-p", "tcp", "--dport", ports, "-j", "DROP",
            ],
        );
    }

    /// vsftpd on the backend at `port` (forwarded), with passive ports
    /// `lo..=hi` (forwarded) and `extra` configuration.
    pub fn vsftpd(&self, port: u16, (lo, hi): (u16, u16), extra: &str) -> FtpServer {
        self.forward(&port.to_string());
        self.forward(&format!("{lo}:{hi}"));
        FtpServer::start_with(
            &self.topo.topo,
            &self.topo.backend,
            SocketAddr::new(IpAddr::V4(BACKEND_V4), port),
            ServerKind::Vsftpd,
            &format!("pasv_min_port={lo}\npasv_max_port={hi}\n{extra}"),
        )
    }

    /// The public control endpoint of a server started with [`Self::vsftpd`].
    pub fn public(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(PROXY_PUBLIC_V4), port)
    }
}

/// A CA and a server certificate for `ip` signed by it, made with `openssl`
/// in `dir`: returns (ca.pem, cert.pem, key.pem).
pub fn make_certificates(dir: &Path, ip: IpAddr) -> (String, String, String) {
    make_certificates_for(dir, &format!("IP:{ip}"), &ip.to_string())
}

/// [`make_certificates`] for any subjectAltName (`DNS:ftp.example.net`), with
/// `cn` as the certificate's common name.
pub fn make_certificates_for(dir: &Path, san: &str, cn: &str) -> (String, String, String) {
    let p = |n: &str| dir.join(n).display().to_string();
    let (ca, ca_key, cert, key, csr, ext) = (
        p("ca.pem"),
        p("ca-key.pem"),
        p("cert.pem"),
        p("key.pem"),
        p("cert.csr"),
        p("ext.cnf"),
    );
    std::fs::write(
        &ext,
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(args);
        super::netns::run_ok(cmd);
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "30",
        "-subj",
        "/CN=ftpgate probe test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        &format!("/CN={cn}"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "30",
        "-extfile",
        &ext,
    ]);
    (ca, cert, key)
}
