//! `deploy/kubernetes/`: every overlay renders with `kubectl kustomize`, validates against
//! the Kubernetes 1.30 schemas in strict mode, and agrees with the ftpgate.yaml it ships:
//! the LoadBalancer lists exactly the control port and every data port, the grace period
//! covers the drain, replicas fit the slices, the peers' names resolve to the headless
//! Service, and the committed port lists are what `gen-ports.py` makes of the configs.
//!
//! kubectl comes with the machine image, kubernetes-validate (PyPI, pinned) from
//! scripts/install-test-deps.sh; without one, the tests that need it are skipped, and fail
//! when `CI` is set.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

/// The oldest Kubernetes the manifests are for: the preStop `sleep` action is on by
/// default from 1.30.
const KUBERNETES_VERSION: &str = "1.30.0";

/// The kinds the validator has no schema for, each for a stated reason.
const CUSTOM_KINDS: &[&str] = &[
    // prometheus-operator's CRD (overlays/servicemonitor); checked by hand below.
    "ServiceMonitor",
];

fn kube_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every overlay directory, by name.
fn overlays() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(kube_dir().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    for want in ["large", "servicemonitor", "small"] {
        assert!(names.iter().any(|n| n == want), "overlay {want} missing");
    }
    names
}

/// `None` (after checking that CI is not set) when the program is not installed.
fn run(test: &str, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Option<Output> {
    let child = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} not found but CI is set: run scripts/install-test-deps.sh"
        );
        eprintln!("SKIPPED {test}: {program} not found");
        return None;
    };
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    Some(child.wait_with_output().unwrap())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl kustomize deploy/kubernetes/overlays/<name>`: the YAML text.
fn render(test: &str, overlay: &str) -> Option<String> {
    let dir = format!("deploy/kubernetes/overlays/{overlay}");
    let out = run(test, "kubectl", &["kustomize", &dir], None)?;
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}:\n{}",
        text(&out)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// An overlay's rendered resources and the ftpgate.yaml its ConfigMap carries.
struct Rendered {
    overlay: String,
    resources: Vec<Value>,
    config: Value,
}

impl Rendered {
    fn of(test: &str, overlay: &str) -> Option<Rendered> {
        let yaml = render(test, overlay)?;
        let resources: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|doc| Value::deserialize(doc).unwrap())
            .collect();
        let mut r = Rendered {
            overlay: overlay.to_string(),
            resources,
            config: Value::Null,
        };
        let text = r.one("ConfigMap", "ftpgate")["data"]["ftpgate.yaml"]
            .as_str()
            .unwrap_or_else(|| panic!("{overlay}: the ConfigMap has no ftpgate.yaml"))
            .to_string();
        r.config = serde_yaml::from_str(&text).unwrap();
        Some(r)
    }

    /// The one resource of `kind` whose name is `name` (a generated ConfigMap's name
    /// carries a hash suffix: `ftpgate-<hash>`).
    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .resources
            .iter()
            .filter(|r| r["kind"].as_str() == Some(kind))
            .filter(|r| {
                let n = r["metadata"]["name"].as_str().unwrap_or("");
                n == name || (kind == "ConfigMap" && n.starts_with(&format!("{name}-")))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: want exactly one {kind} {name}",
            self.overlay
        );
        found[0]
    }

    fn container(&self) -> &Value {
        let containers = self.one("StatefulSet", "ftpgate")["spec"]["template"]["spec"]
            ["containers"]
            .as_sequence()
            .unwrap();
        assert_eq!(containers.len(), 1, "{}", self.overlay);
        &containers[0]
    }

    /// The container port named `name`.
    fn container_port(&self, name: &str) -> u64 {
        self.container()["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no container port {name}", self.overlay))
    }

    /// The port of an `ADDR:PORT` string at `key` (dotted path) in ftpgate.yaml.
    fn config_port(&self, key: &str) -> u64 {
        let mut v = &self.config;
        for part in key.split('.') {
            v = &v[part];
        }
        let addr = v
            .as_str()
            .or_else(|| v.as_sequence().filter(|s| s.len() == 1)?[0].as_str())
            .unwrap_or_else(|| panic!("{}: `{key}` is not one address", self.overlay));
        port_of(addr)
    }

    fn data_ports(&self) -> (u64, u64) {
        let spec = self.config["data_ports"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: set data_ports explicitly", self.overlay));
        let (lo, hi) = spec.split_once('-').unwrap();
        (lo.parse().unwrap(), hi.parse().unwrap())
    }

    fn namespace(&self) -> &str {
        self.one("StatefulSet", "ftpgate")["metadata"]["namespace"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no namespace", self.overlay))
    }
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn rendered(test: &str) -> Vec<Rendered> {
    overlays()
        .iter()
        .map_while(|o| Rendered::of(test, o))
        .collect()
}

#[test]
fn every_overlay_validates_against_the_kubernetes_schemas() {
    const TEST: &str = "every_overlay_validates_against_the_kubernetes_schemas";
    for overlay in overlays() {
        let Some(yaml) = render(TEST, &overlay) else {
            return;
        };
        let Some(out) = run(
            TEST,
            "python3",
            &[
                "-m",
                "kubernetes_validate",
                "--strict",
                "-k",
                KUBERNETES_VERSION,
                "-",
            ],
            Some(yaml.as_bytes()),
        ) else {
            return;
        };
        let report = text(&out);
        if report.contains("No module named kubernetes_validate") {
            assert!(
                std::env::var_os("CI").is_none(),
                "kubernetes-validate not installed but CI is set: run scripts/install-test-deps.sh"
            );
            eprintln!("SKIPPED {TEST}: kubernetes-validate not installed");
            return;
        }
        assert!(
            out.status.success() && !report.contains("ERROR"),
            "{overlay}: kubernetes-validate failed:\n{report}"
        );
        // A resource without a schema is only warned about: allow that for the known
        // custom kinds alone, so a mistyped apiVersion cannot slip through unvalidated.
        for line in report.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                CUSTOM_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("kind {k} "))),
                "{overlay}: not validated: {line}"
            );
        }
        let docs = serde_yaml::Deserializer::from_str(&yaml).count();
        let custom = yaml
            .lines()
            .filter(|l| CUSTOM_KINDS.iter().any(|k| *l == format!("kind: {k}")))
            .count();
        let passed = report.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(passed, docs - custom, "{overlay}:\n{report}");
    }
}

#[test]
fn load_balancer_lists_the_control_port_and_every_data_port() {
    for r in rendered("load_balancer_lists_the_control_port_and_every_data_port") {
        let svc = r.one("Service", "ftpgate");
        assert_eq!(svc["spec"]["type"].as_str(), Some("LoadBalancer"));
        // The client's address must survive to the replica: data connections are
        // accepted only from the control client.
        assert_eq!(svc["spec"]["externalTrafficPolicy"].as_str(), Some("Local"));
        let control = r.config_port("listen");
        let (lo, hi) = r.data_ports();
        let want: BTreeSet<u64> = std::iter::once(control).chain(lo..=hi).collect();

        let ports = svc["spec"]["ports"].as_sequence().unwrap();
        let mut targets = BTreeSet::new();
        let mut names = BTreeSet::new();
        for p in ports {
            let name = p["name"].as_str().unwrap();
            let target = p["targetPort"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: {name}: targetPort must be a number", r.overlay));
            // Service port names: an IANA service name, at most 15 characters, unique.
            assert!(
                name.len() <= 15
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{}: port name {name}",
                r.overlay
            );
            assert!(names.insert(name), "{}: duplicate name {name}", r.overlay);
            assert!(targets.insert(target), "{}: port {target} twice", r.overlay);
            assert_eq!(p["protocol"].as_str(), Some("TCP"), "{}", r.overlay);
            if target != control {
                // Data ports are announced in 227/229 as they are: public = target.
                assert_eq!(p["port"].as_u64(), Some(target), "{}", r.overlay);
                assert_eq!(name, format!("d{target}"), "{}", r.overlay);
            }
        }
        let missing: Vec<_> = want.difference(&targets).collect();
        let extra: Vec<_> = targets.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{}: the Service misses ports {missing:?} and has extra ports {extra:?} \
             (data_ports {lo}-{hi}, control {control}): run deploy/kubernetes/gen-ports.py",
            r.overlay
        );
        assert_eq!(r.container_port("ftp"), control, "{}", r.overlay);
    }
}

#[test]
fn statefulset_fits_the_configuration() {
    for r in rendered("statefulset_fits_the_configuration") {
        let o = &r.overlay;
        let sts = r.one("StatefulSet", "ftpgate");
        let pod = &sts["spec"]["template"]["spec"];
        let c = r.container();

        // The kubelet's SIGKILL must not come before the drain is over.
        let drain =
            humantime::parse_duration(r.config["drain_timeout"].as_str().unwrap_or("15m")).unwrap();
        let pre_stop = Duration::from_secs(
            c["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or_else(|| panic!("{o}: no preStop sleep")),
        );
        let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
        assert!(
            grace >= drain + pre_stop,
            "{o}: terminationGracePeriodSeconds {grace:?} < drain_timeout {drain:?} + preStop {pre_stop:?}"
        );

        // Ordinal k announces slice k: every replica needs a slice.
        let slots = r.config["cluster"]["slots"].as_u64().unwrap();
        let replicas = sts["spec"]["replicas"].as_u64().unwrap();
        assert!(
            replicas <= slots,
            "{o}: {replicas} replicas > {slots} slots"
        );
        let (lo, hi) = r.data_ports();
        assert!(hi - lo + 1 >= slots, "{o}: fewer data ports than slots");

        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz"),
            "{o}"
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz"),
            "{o}"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some("metrics"), "{o}");
        }
        assert_eq!(
            r.container_port("metrics"),
            r.config_port("admin.listen"),
            "{o}"
        );
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args,
            ["run", "--config", "/etc/ftpgate/ftpgate.yaml"],
            "{o}"
        );
        let config_map = r.one("ConfigMap", "ftpgate")["metadata"]["name"].as_str();
        assert!(
            pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|v| v["configMap"]["name"].as_str() == config_map),
            "{o}: the pod does not mount ConfigMap {config_map:?}"
        );
        assert_eq!(
            sts["spec"]["podManagementPolicy"].as_str(),
            Some("Parallel")
        );

        // Peers: ftpgate-{ordinal}.<serviceName>.<namespace>... on the cluster port,
        // through a headless Service that keeps draining replicas.
        let peers_name = sts["spec"]["serviceName"].as_str().unwrap();
        let peers = r.one("Service", peers_name);
        assert_eq!(peers["spec"]["clusterIP"].as_str(), Some("None"), "{o}");
        assert_eq!(
            peers["spec"]["publishNotReadyAddresses"].as_bool(),
            Some(true),
            "{o}"
        );
        let cluster_port = r.config_port("cluster.listen");
        assert_eq!(r.container_port("cluster"), cluster_port, "{o}");
        assert!(
            peers["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| {
                    p["port"].as_u64() == Some(cluster_port)
                        && p["targetPort"].as_str() == Some("cluster")
                }),
            "{o}: {peers_name} does not serve the cluster port {cluster_port}"
        );
        let template = r.config["cluster"]["peer_template"].as_str().unwrap();
        let want = format!("ftpgate-{{ordinal}}.{peers_name}.{}.", r.namespace());
        assert!(
            template.starts_with(&want),
            "{o}: peer_template {template}: want {want}…"
        );
        assert_eq!(port_of(template), cluster_port, "{o}: peer_template port");
        assert_eq!(sts["metadata"]["name"].as_str(), Some("ftpgate"));

        let pdb = r.one("PodDisruptionBudget", "ftpgate");
        assert_eq!(pdb["spec"]["maxUnavailable"].as_u64(), Some(1), "{o}");
        let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
        for svc_or_pdb in [
            &pdb["spec"]["selector"]["matchLabels"],
            &r.one("Service", "ftpgate")["spec"]["selector"],
            &peers["spec"]["selector"],
        ] {
            for (k, v) in svc_or_pdb.as_mapping().unwrap() {
                assert_eq!(&pod_labels[k.as_str().unwrap()], v, "{o}: selector {k:?}");
            }
        }
        for res in &r.resources {
            if !matches!(res["kind"].as_str(), Some("Namespace")) {
                assert_eq!(
                    res["metadata"]["namespace"].as_str(),
                    Some(r.namespace()),
                    "{o}: {:?} {:?}",
                    res["kind"],
                    res["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn service_monitor_scrapes_the_metrics_port() {
    let Some(r) = Rendered::of("service_monitor_scrapes_the_metrics_port", "servicemonitor") else {
        return;
    };
    let sm = r.one("ServiceMonitor", "ftpgate");
    assert_eq!(sm["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
    let selector = sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
    let selected: Vec<&Value> = r
        .resources
        .iter()
        .filter(|s| s["kind"].as_str() == Some("Service"))
        .filter(|s| {
            selector
                .iter()
                .all(|(k, v)| &s["metadata"]["labels"][k.as_str().unwrap()] == v)
        })
        .collect();
    assert_eq!(
        selected.len(),
        1,
        "the ServiceMonitor selects {} Services",
        selected.len()
    );
    let svc_port = selected[0]["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(port))
        .unwrap_or_else(|| panic!("the selected Service has no port {port}"));
    assert_eq!(
        svc_port["port"].as_u64(),
        Some(r.config_port("admin.listen"))
    );
}

#[test]
fn committed_service_ports_match_gen_ports() {
    const TEST: &str = "committed_service_ports_match_gen_ports";
    let mut dirs = vec!["deploy/kubernetes/base".to_string()];
    for o in overlays() {
        if kube_dir()
            .join("overlays")
            .join(&o)
            .join("ftpgate.yaml")
            .is_file()
        {
            dirs.push(format!("deploy/kubernetes/overlays/{o}"));
        }
    }
    assert!(dirs.len() >= 3, "{dirs:?}");
    for dir in dirs {
        let Some(out) = run(
            TEST,
            "python3",
            &["deploy/kubernetes/gen-ports.py", "--check", &dir],
            None,
        ) else {
            return;
        };
        assert!(
            out.status.success(),
            "gen-ports.py --check {dir}:\n{}",
            text(&out)
        );
    }
}

/// Every shipped ftpgate.yaml is a configuration ftpgate itself accepts (what
/// `ftpgate check` says), in cluster mode, and pod `ftpgate-0` finds its ordinal in
/// its host name. Needs no kubectl.
#[test]
fn shipped_configs_pass_ftpgate_check() {
    let files: Vec<PathBuf> = ["base".to_string()]
        .into_iter()
        .chain(overlays().into_iter().map(|o| format!("overlays/{o}")))
        .map(|d| kube_dir().join(d).join("ftpgate.yaml"))
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 3, "base and the overlays: {files:?}");
    for f in files {
        let loaded = ftpgate::config::Config::from_file(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            loaded.deprecations.is_empty(),
            "{}: deprecated keys",
            f.display()
        );
        let cfg = loaded
            .config
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(cfg.cluster.enabled(), "{}: cluster mode off", f.display());
        assert_eq!(cfg.cluster.own_ordinal(Some("ftpgate-0")), Ok(0));
        assert!(
            cfg.cluster
                .peer_address(1)
                .is_some_and(|p| p.contains("ftpgate-1.")),
            "{}: peer_template",
            f.display()
        );
    }
}
