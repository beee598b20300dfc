//! The binary's contract with operators: `check` exit codes and messages, `--version`.

use std::process::Command;

fn ftpgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftpgate"))
}

#[test]
fn check_accepts_the_example_config() {
    let out = ftpgate()
        .args(["check", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ftpgate.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_names_the_offending_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, key) in [
        (
            "listen: ['127.0.0.1:2121']\nbackends: ['10.0.0.2:21']\ndata_ports: 9-1\n",
            "data_ports",
        ),
        (
            "listen: ['127.0.0.1:2121']\nbackends: ['10.0.0.2:21']\ntimeouts:\n  data_conect: 5s\n",
            "timeouts.data_conect",
        ),
        ("listen: ['127.0.0.1:2121']\n", "backends"),
        (
            "listen: ['127.0.0.1:2121']\nbackends: ['nohost']\n",
            "backends[0]",
        ),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = ftpgate()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {err}");
        assert!(err.contains(&format!("{key}:")), "{yaml}: {err}");
    }
}

#[test]
fn run_with_invalid_flags_exits_2_before_binding() {
    let out = ftpgate()
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:21",
        ])
        .args(["--data-ports", "0-10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ftpgate()
        .args(["run", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backends"));
}

#[test]
fn version_and_help() {
    let out = ftpgate().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ftpgate "));
    let out = ftpgate().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--backend",
        "--public-address",
        "--data-ports",
        "--config",
        "--admin-listen",
        "--relay",
        "--backend-reply-timeout",
        "--max-prelogin-sessions",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
}

#[test]
fn check_reports_every_error_one_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: ['127.0.0.1:2121']\nbackends: ['10.0.0.2:21']\n\
         public_address: ['0.0.0.0']\n\
         active:\n  ports: 50500-51500\n\
         control:\n  max_pipelined_commands: 0\n",
    )
    .unwrap();
    let out = ftpgate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    for (line, key) in lines.iter().zip([
        "public_address:",
        "active.ports:",
        "control.max_pipelined_commands:",
    ]) {
        assert!(
            line.starts_with(&format!("{}: {key}", path.display())),
            "{line}"
        );
    }
}

#[test]
fn check_warns_about_deprecated_keys_and_rejects_both_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.yaml");
    let base = "listen: ['127.0.0.1:2121']\nbackends: ['10.0.0.2:21']\n";
    std::fs::write(&path, format!("{base}metrics: '127.0.0.1:9464'\n")).unwrap();
    let out = ftpgate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("admin.listen"),
        "{err}"
    );
    std::fs::write(
        &path,
        format!("{base}metrics: '127.0.0.1:9464'\nadmin:\n  listen: '127.0.0.1:9465'\n"),
    )
    .unwrap();
    let out = ftpgate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("metrics:") && err.contains("admin.listen"),
        "{err}"
    );
}

/// New flags parse (validation then fails on purpose, so nothing binds): exit 2 with the
/// configuration message, not clap's usage error (also 2, but on "error: unexpected").
#[test]
fn run_accepts_relay_and_admin_listen_flags() {
    for flags in [
        &["--relay", "copy"][..],
        &["--relay", "auto"],
        &["--admin-listen", "127.0.0.1:0"],
        &["--metrics", "127.0.0.1:0"],
        &[
            "--backend-reply-timeout",
            "0s",
            "--max-prelogin-sessions",
            "0",
        ],
    ] {
        let out = ftpgate()
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(
            err.contains("invalid configuration: backends:"),
            "{flags:?}: {err}"
        );
    }
    let out = ftpgate()
        .args(["run", "--listen", "127.0.0.1:0", "--relay", "splice"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: auto, copy"), "{err}");
}
