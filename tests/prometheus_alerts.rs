//! `deploy/prometheus/alerts.yml`: valid for `promtool check rules`, and every metric
//! its expressions name is one ftpgate exports (a renamed metric would leave an alert
//! that can never fire).
//!
//! promtool comes from Debian's `prometheus` package (scripts/install-test-deps.sh);
//! without it the promtool half is skipped, and fails when `CI` is set.

use std::path::PathBuf;
use std::process::Command;

fn alerts_file() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yml"
    ))
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    let Ok(out) = Command::new("promtool")
        .args(["check", "rules"])
        .arg(alerts_file())
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool not found but CI is set: run scripts/install-test-deps.sh"
        );
        eprintln!("SKIPPED promtool_accepts_the_alerting_rules: promtool not found");
        return;
    };
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("6 rules found"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn alerts_name_only_exported_metrics() {
    let text = std::fs::read_to_string(alerts_file()).unwrap();
    let metrics = ftpgate::metrics::Metrics::new();
    metrics.init_labels(&["10.0.0.2:21".parse().unwrap()]);
    metrics.cluster.init(0, 3);
    let exposition = metrics.render();
    let mut named = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("ftpgate_") {
            named += 1;
            assert!(
                exposition.contains(&format!("\n{word}"))
                    || exposition.contains(&format!("# TYPE {word} ")),
                "alerts.yml names {word}, which ftpgate does not export"
            );
        }
    }
    assert!(named >= 5, "alerts.yml names too few metrics");
}
