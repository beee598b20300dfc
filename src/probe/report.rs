//! Rendering of the verdicts: a table for people, JSON for scripts.

use serde::Serialize;

use super::diagnose::{Check, Status};

/// The `--json` report.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// The probed URL, password redacted.
    pub url: &'a str,
    /// Every check passed (warnings allowed).
    pub ok: bool,
    /// One entry per step the probe reached.
    pub checks: &'a [Check],
}

/// Whether no check failed (warnings allowed): exit status 0.
pub fn all_passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// The `--json` report on `checks` for `url` (already redacted), pretty-printed.
pub fn json(url: &str, checks: &[Check]) -> String {
    let report = Report {
        url,
        ok: all_passed(checks),
        checks,
    };
    serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// One line per check (`✓`/`!`/`✗`, step, time, reason), the exact reply of
/// data-mode steps, and a remedy line under each failure.
pub fn table(url: &str, checks: &[Check]) -> String {
    let mut s = format!("ftpgate probe {url}\n");
    for c in checks {
        let mark = match c.status {
            Status::Pass => '✓',
            Status::Warn => '!',
            Status::Fail => '✗',
        };
        let ms = c.elapsed_ms.map(|m| format!("{m} ms")).unwrap_or_default();
        s.push_str(&format!("{mark} {:<8} {ms:>8}  {}\n", c.step, c.reason));
        let is_mode = matches!(c.step.as_str(), "EPSV" | "PASV" | "EPRT" | "PORT");
        if let (true, Some(r)) = (is_mode, &c.reply) {
            s.push_str(&format!(
                "{:>20}reply: {}\n",
                "",
                r.lines().next().unwrap_or_default()
            ));
        }
        if let (Status::Fail, Some(r)) = (c.status, &c.remedy) {
            s.push_str(&format!("{:>20}remedy: {r}\n", ""));
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed == 0 {
        s.push_str("result: every check passed\n");
    } else {
        s.push_str(&format!("result: {failed} check(s) failed\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::diagnose::Verdict;

    fn check(step: &str, status: Status) -> Check {
        Check {
            step: step.into(),
            status,
            verdict: if status == Status::Fail {
                Verdict::PassivePrivateAddress
            } else {
                Verdict::Ok
            },
            elapsed_ms: Some(4),
            reply: Some("227 Entering Passive Mode (10,0,0,2,195,80).".into()),
            reason: "why".into(),
            remedy: (status == Status::Fail).then(|| "do this".into()),
            details: None,
        }
    }

    #[test]
    fn table_marks_and_remedies() {
        let t = table(
            "ftp://u:***@h:21/",
            &[check("banner", Status::Pass), check("PASV", Status::Fail)],
        );
        assert!(t.contains("✓ banner"), "{t}");
        assert!(t.contains("✗ PASV"), "{t}");
        assert!(
            t.contains("reply: 227 Entering Passive Mode (10,0,0,2,195,80)."),
            "{t}"
        );
        assert!(t.contains("remedy: do this"), "{t}");
        assert!(t.ends_with("result: 1 check(s) failed\n"), "{t}");
    }

    #[test]
    fn json_shape() {
        let j: serde_json::Value =
            serde_json::from_str(&json("ftp://h:21/", &[check("PASV", Status::Fail)])).unwrap();
        assert_eq!(j["ok"], false);
        assert_eq!(j["checks"][0]["verdict"], "passive_private_address");
        assert_eq!(j["checks"][0]["status"], "fail");
        assert_eq!(j["checks"][0]["remedy"], "do this");
        let j: serde_json::Value =
            serde_json::from_str(&json("ftp://h:21/", &[check("PASV", Status::Warn)])).unwrap();
        assert_eq!(j["ok"], true);
    }
}
