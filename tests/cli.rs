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
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
}
