//! The Grafana dashboard in `grafana/` against what ftpgate really exports: every
//! PromQL expression names only ftpgate's metrics (a renamed metric breaks this test,
//! not a dashboard in production), every panel is well formed, and every datasource
//! reference resolves to the dashboard's variable or the provisioned datasource.

use std::collections::BTreeSet;
use std::path::Path;

use ftpgate::metrics::Metrics;
use serde_json::Value;

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&repo_file("grafana/dashboards/ftpgate.json")).expect("dashboard is JSON")
}

/// The sample names ftpgate exposes, read from its own exposition (`# TYPE` lines), so
/// histograms contribute their `_bucket`, `_sum` and `_count` series.
fn exported_names() -> BTreeSet<String> {
    let m = Metrics::new();
    m.init_labels(&["127.0.0.1:21".parse().unwrap()]);
    // The two families whose label values only traffic creates.
    m.commands_total.with_label_values(&["NOOP"]);
    m.replies_total.with_label_values(&["200"]);
    m.balancer_picks_total
        .with_label_values(&["round-robin", "127.0.0.1:21"]);
    m.backend_members
        .with_label_values(&["ftp.example.internal:21"]);
    m.backend_resolve_failures_total
        .with_label_values(&["ftp.example.internal:21"]);
    m.proxy_headers_total
        .with_label_values(&["control", "accepted"]);
    // Cluster families are created when cluster mode starts.
    m.cluster.init(0, 3);
    let mut names = BTreeSet::new();
    for line in m.render().lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// Every non-row panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels array") {
        if p["type"] == "row" {
            if let Some(inner) = p["panels"].as_array() {
                out.extend(inner.iter());
            }
        } else {
            out.push(p);
        }
    }
    out
}

/// PromQL words that are not metric names when not followed by `(`: operators, and
/// aggregations, which may be followed by `by (...)` before their parenthesis.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names an expression selects. Strings, label matchers (`{...}`), range
/// selectors (`[...]`), grouping label lists and `$variables` are dropped first; then
/// an identifier followed by `(` is a function or aggregation, and anything else that
/// is not a keyword is a metric name.
fn metric_names(expr: &str) -> Vec<String> {
    let mut cleaned = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let mut escaped = false;
                for d in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == c {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                for d in chars.by_ref() {
                    if d == close {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            _ => cleaned.push(c),
        }
    }
    let mut names = Vec::new();
    let bytes: Vec<char> = cleaned.chars().collect();
    let mut i = 0;
    let mut skip_group = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], '_' | ':' | '$'))
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let mut j = i;
            while j < bytes.len() && bytes[j].is_whitespace() {
                j += 1;
            }
            let is_call = bytes.get(j) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) && is_call
            {
                // A grouping label list: skip to its closing parenthesis.
                skip_group = true;
                i = j;
                continue;
            }
            if word.starts_with('$') || is_call || KEYWORDS.contains(&lower.as_str()) {
                continue;
            }
            names.push(word);
        } else if c.is_ascii_digit() || c == '.' {
            // A number, including exponents such as 1e3.
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], '.' | '_'))
            {
                i += 1;
            }
        } else if c == '(' && skip_group {
            while i < bytes.len() && bytes[i] != ')' {
                i += 1;
            }
            skip_group = false;
            i += 1;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_parser_finds_metric_names_only() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, direction) (rate(ftpgate_x_bucket{a="b{c}"}[$__rate_interval])))"#
        ),
        vec!["ftpgate_x_bucket"]
    );
    assert_eq!(
        metric_names("ftpgate_a / on(backend) group_left ftpgate_b > 1e3"),
        vec!["ftpgate_a", "ftpgate_b"]
    );
}

#[test]
fn every_expression_names_only_exported_metrics() {
    let exported = exported_names();
    assert!(exported.contains("ftpgate_transfer_duration_seconds_bucket"));
    let d = dashboard();
    let mut used = BTreeSet::new();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "no metric in `{expr}`");
            for n in names {
                assert!(
                    exported.contains(&n),
                    "panel {:?}: `{n}` is not exported by ftpgate (expr `{expr}`); exported: {exported:?}",
                    p["title"]
                );
                used.insert(n);
            }
        }
    }
    // What operators need on one screen (issue 5): each must have a panel.
    for needed in [
        "ftpgate_sessions_active",
        "ftpgate_sessions_total",
        "ftpgate_data_bytes_total",
        "ftpgate_data_connections_total",
        "ftpgate_refusals_total",
        "ftpgate_timeouts_total",
        "ftpgate_backend_connect_errors_total",
        "ftpgate_data_ports_in_use",
        "ftpgate_data_ports_free",
        "ftpgate_data_port_exhausted_total",
        "ftpgate_backend_up",
        "ftpgate_backend_sessions_active",
        "ftpgate_transfer_duration_seconds_bucket",
        "ftpgate_backend_connect_duration_seconds_bucket",
        "ftpgate_reply_added_latency_seconds_bucket",
        // Server farms (issue 12): health state, policy distribution.
        "ftpgate_backend_draining",
        "ftpgate_balancer_picks_total",
        "ftpgate_health_checks_total",
        "ftpgate_backend_members",
        "ftpgate_proxy_headers_total",
        // Scale-out (issue 14): per-replica forwarding.
        "ftpgate_cluster_forwarded_total",
        "ftpgate_cluster_forward_failures_total",
        "ftpgate_cluster_forwarded_bytes_total",
        "ftpgate_cluster_ordinal",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}

/// The uid of the datasource that `grafana/provisioning/datasources/` provisions.
fn provisioned_uid() -> String {
    let y: serde_yaml::Value = serde_yaml::from_str(&repo_file(
        "grafana/provisioning/datasources/prometheus.yaml",
    ))
    .expect("datasource provisioning is YAML");
    let ds = &y["datasources"][0];
    assert_eq!(ds["type"].as_str(), Some("prometheus"));
    ds["uid"].as_str().expect("datasource uid").to_string()
}

/// Collects every `datasource` value anywhere in the dashboard.
fn datasource_refs<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "datasource" {
                    out.push(child);
                } else {
                    datasource_refs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| datasource_refs(i, out)),
        _ => {}
    }
}

#[test]
fn dashboard_is_well_formed_and_datasources_resolve() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    assert!(
        d["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40),
        "uid"
    );
    assert!(d["schemaVersion"].as_u64().is_some(), "schemaVersion");
    let all = panels(&d);
    assert!(!all.is_empty(), "no panels");
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "panel without title: {p}");
        assert!(
            p["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{title}: type"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        assert!(p["gridPos"]["x"].as_u64().unwrap() + p["gridPos"]["w"].as_u64().unwrap() <= 24);
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: duplicate id"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut ref_ids = BTreeSet::new();
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: expr"
            );
            assert!(
                ref_ids.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId"
            );
        }
    }

    // The datasource variable, defaulting to the provisioned datasource.
    let uid = provisioned_uid();
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = vars
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("DS_PROMETHEUS variable");
    assert_eq!(var["type"], "datasource");
    assert_eq!(var["query"], "prometheus");
    assert_eq!(var["current"]["value"].as_str(), Some(uid.as_str()));

    let mut refs = Vec::new();
    datasource_refs(&d, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let ok = match r {
            Value::String(s) => s == "${DS_PROMETHEUS}" || *s == uid,
            Value::Object(_) => {
                r["type"] == "prometheus"
                    && r["uid"]
                        .as_str()
                        .is_some_and(|u| u == "${DS_PROMETHEUS}" || u == uid)
            }
            _ => false,
        };
        assert!(ok, "datasource reference does not resolve: {r}");
    }
}

#[test]
fn dashboard_provisioning_is_a_file_provider() {
    let y: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("grafana/provisioning/dashboards/ftpgate.yaml"))
            .expect("dashboard provisioning is YAML");
    assert_eq!(y["apiVersion"].as_u64(), Some(1));
    let p = &y["providers"][0];
    assert_eq!(p["type"].as_str(), Some("file"));
    assert!(p["options"]["path"].as_str().is_some_and(|s| !s.is_empty()));
}
