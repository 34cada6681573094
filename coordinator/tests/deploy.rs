//! deploy/ is checked against the code: every file parses; every metric the dashboard and
//! the alert rules query is one the code exports; every flag and environment variable the
//! manifests pass is one the binaries accept; ports, labels and files line up; and
//! Prometheus' own `promtool` accepts the rules.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::deploy::*;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn help(bin: &str, args: &[&str]) -> String {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord")).with_file_name(bin);
    let out = Command::new(path)
        .args(args)
        .arg("--help")
        .output()
        .expect("help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Metric names the code registers (the string literals naming them).
fn exported() -> BTreeSet<String> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut names = BTreeSet::new();
    for f in ["worker/src/metrics.rs", "coordinator/src/metrics.rs"] {
        let text = std::fs::read_to_string(root.join(f)).expect("a metrics source file");
        for part in text.split('"').skip(1).step_by(2) {
            if part.starts_with("hangar_")
                && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                names.insert(part.to_owned());
            }
        }
    }
    names
}

fn queried(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("hangar_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(name.to_owned());
        i = end;
    }
    out
}

#[test]
fn every_file_parses_and_every_queried_metric_is_exported() {
    let mut all = Vec::new();
    files(&deploy(), &mut all);
    for f in &all {
        match f.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                docs(f);
            }
            Some("json") => {
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).expect("read"))
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            }
            _ => {}
        }
    }
    let exported = exported();
    assert!(exported.contains("hangar_bytes_total"), "{exported:?}");
    let dashboard =
        std::fs::read_to_string(deploy().join("grafana/hangar-fleet.json")).expect("dashboard");
    let d: serde_json::Value = serde_json::from_str(&dashboard).expect("json");
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 12, "{exprs:?}");
    let alerts = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).expect("alerts");
    for (what, text) in [("dashboard", exprs.join("\n")), ("alerts", alerts.clone())] {
        let q = queried(&text);
        assert!(!q.is_empty());
        for name in q {
            assert!(
                exported.contains(&name),
                "{what} queries {name}, which the code does not export ({exported:?})"
            );
        }
    }
    // The PrometheusRule carries exactly the rules of alerts.yml.
    let rule = docs(&deploy().join("k8s/monitoring.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("PrometheusRule");
    let plain = &docs(&deploy().join("prometheus/alerts.yml"))[0];
    assert_eq!(rule["spec"]["groups"], plain["groups"]);
}

#[test]
fn promtool_accepts_the_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy().join("prometheus/alerts.yml"))
        .output()
        .expect("promtool (scripts/dev-services.sh installs prometheus)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The OpenTelemetry SDK reads its own variables; ours must name the one that turns it on.
fn read_by_telemetry(var: &str) -> bool {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let code = std::fs::read_to_string(root.join("shared/src/telemetry.rs")).expect("telemetry.rs");
    var == "OTEL_EXPORTER_OTLP_ENDPOINT" && code.contains(&format!("\"{var}\""))
}

/// `--flag`s in an argument list.
fn flags(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn flags_env_ports_and_files_line_up_with_the_binaries() {
    let worker_help = help("hangar-worker", &[]);
    let serve_help = help("hangar-coord", &["serve"]);
    let submit_help = help("hangar-coord", &["submit"]);
    let k8s = deploy().join("k8s");
    let mut container_ports: Vec<(String, String, i64)> = Vec::new();
    let mut service_ports: Vec<(String, String)> = Vec::new();
    let kustomization = &docs(&k8s.join("kustomization.yaml"))[0];
    for r in strings(&kustomization["resources"]) {
        assert!(k8s.join(&r).exists(), "kustomization lists {r}");
        for d in docs(&k8s.join(&r)) {
            let kind = d["kind"].as_str().unwrap_or_default().to_owned();
            let pod = match kind.as_str() {
                "Deployment" | "StatefulSet" => d["spec"]["template"]["spec"].clone(),
                "CronJob" => d["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
                "Service" => {
                    let app = d["spec"]["selector"]["app.kubernetes.io/name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    for p in d["spec"]["ports"]
                        .as_sequence()
                        .cloned()
                        .unwrap_or_default()
                    {
                        service_ports.push((
                            app.clone(),
                            p["name"].as_str().unwrap_or_default().to_owned(),
                        ));
                        let target = p["targetPort"].as_str().unwrap_or_default().to_owned();
                        assert!(
                            container_ports
                                .iter()
                                .any(|(a, n, _)| *a == app && *n == target),
                            "service {app} targets {target}"
                        );
                    }
                    continue;
                }
                _ => continue,
            };
            let app = d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            for c in pod["containers"].as_sequence().cloned().unwrap_or_default() {
                let command = strings(&c["command"]);
                let args = strings(&c["args"]);
                let (bin_help, listen) = match (
                    command.first().map(String::as_str),
                    args.first().map(String::as_str),
                ) {
                    (Some("hangar-worker"), _) => (&worker_help, None),
                    (Some("hangar-coord"), Some("serve")) => (
                        &serve_help,
                        args.iter().skip_while(|a| *a != "--listen").nth(1).cloned(),
                    ),
                    (Some("hangar-coord"), Some("submit")) => (&submit_help, None),
                    (None, Some("-c"))
                        if c["image"].as_str().is_some_and(|i| i.starts_with("nats:")) =>
                    {
                        // nats-server reads its config from the generated ConfigMap.
                        let conf = args.get(1).cloned().unwrap_or_default();
                        assert!(
                            mounted_under(&c, &conf).is_some(),
                            "{r}: nats config {conf} is not mounted"
                        );
                        for p in c["ports"].as_sequence().cloned().unwrap_or_default() {
                            container_ports.push((
                                app.clone(),
                                p["name"].as_str().unwrap_or_default().to_owned(),
                                p["containerPort"].as_i64().unwrap_or_default(),
                            ));
                        }
                        continue;
                    }
                    other => panic!("unexpected container command {other:?}"),
                };
                // Paths in flags (`--flag /p`, `NAME=/p`) are files the pod mounts.
                for a in &args {
                    let path = a.split_once('=').map(|(_, p)| p).unwrap_or(a);
                    if path.starts_with('/') {
                        assert!(
                            mounted_under(&c, path).is_some(),
                            "{r}: {path} is in no volume of {command:?}"
                        );
                    }
                }
                // Variables set one by one (secrets) are read by the binary.
                for e in c["env"].as_sequence().cloned().unwrap_or_default() {
                    let name = e["name"].as_str().unwrap_or_default();
                    assert!(
                        bin_help.contains(&format!("[env: {name}")),
                        "{r}: {name} is read by no flag of {command:?}"
                    );
                }
                for f in flags(&args) {
                    assert!(
                        bin_help.contains(&format!("{f} "))
                            || bin_help.contains(&format!("{f}["))
                            || bin_help.contains(&format!("{f}\n")),
                        "{r}: {f} is not a flag of {command:?}"
                    );
                }
                for p in c["ports"].as_sequence().cloned().unwrap_or_default() {
                    let port = p["containerPort"].as_i64().unwrap_or_default();
                    container_ports.push((
                        app.clone(),
                        p["name"].as_str().unwrap_or_default().to_owned(),
                        port,
                    ));
                    if let Some(l) = &listen {
                        assert!(
                            l.ends_with(&format!(":{port}")),
                            "--listen {l} vs containerPort {port}"
                        );
                    }
                }
                for probe in ["readinessProbe", "livenessProbe"] {
                    if let Some(port) = c[probe]["httpGet"]["port"].as_str() {
                        assert!(
                            c["ports"]
                                .as_sequence()
                                .is_some_and(|ps| ps.iter().any(|p| p["name"] == port)),
                            "{probe} port {port}"
                        );
                    }
                }
            }
        }
    }
    // The worker listens where its container port says.
    let config = &docs(&k8s.join("config.yaml"))[0];
    let listen = config["data"]["HANGAR_WORKER_LISTEN"]
        .as_str()
        .expect("listen");
    let worker_port = container_ports
        .iter()
        .find(|(a, n, _)| a == "hangar-worker" && n == "metrics")
        .expect("worker port")
        .2;
    assert!(listen.ends_with(&format!(":{worker_port}")));
    // Every environment variable the ConfigMap sets is one a binary reads.
    let all_help = format!("{worker_help}{serve_help}{submit_help}");
    for (k, _) in config["data"].as_mapping().expect("data") {
        let k = k.as_str().unwrap_or_default();
        assert!(
            all_help.contains(&format!("[env: {k}")) || read_by_telemetry(k),
            "{k} is read by no binary"
        );
    }
    // The ServiceMonitor scrapes ports the services have.
    let monitor = docs(&k8s.join("monitoring.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("ServiceMonitor");
    for e in monitor["spec"]["endpoints"]
        .as_sequence()
        .expect("endpoints")
    {
        let port = e["port"].as_str().unwrap_or_default();
        assert!(
            service_ports.iter().any(|(_, n)| n == port),
            "ServiceMonitor port {port}"
        );
    }
    // Files named by the kustomization's secret generator and the compose file exist.
    for g in kustomization["secretGenerator"]
        .as_sequence()
        .expect("secrets")
    {
        for f in strings(&g["files"])
            .iter()
            .chain(strings(&g["envs"]).iter())
        {
            let file = f.split('=').next_back().unwrap_or_default();
            assert!(k8s.join(file).exists(), "{file}");
        }
    }
    let compose_dir = deploy().join("compose");
    let compose = &docs(&compose_dir.join("compose.yaml"))[0];
    for (name, svc) in compose["services"].as_mapping().expect("services") {
        for v in strings(&svc["volumes"]) {
            if v.starts_with('.') {
                let host = v.split(':').next().unwrap_or_default();
                assert!(compose_dir.join(host).exists(), "{name:?} mounts {host}");
            }
        }
        let command = strings(&svc["command"]);
        let entry = strings(&svc["entrypoint"]);
        let h = match (
            entry.first().map(String::as_str),
            command.first().map(String::as_str),
        ) {
            (Some("hangar-worker"), _) => Some(&worker_help),
            (Some("hangar-coord"), Some("serve")) => Some(&serve_help),
            _ => None,
        };
        if let Some(h) = h {
            for f in flags(&command) {
                assert!(
                    h.contains(&format!("{f} ")) || h.contains(&format!("{f}[")),
                    "compose {name:?}: {f}"
                );
            }
            if let Some(envs) = svc["environment"].as_mapping() {
                for (k, _) in envs {
                    let k = k.as_str().unwrap_or_default();
                    assert!(
                        k.starts_with("AWS_")
                            || h.contains(&format!("[env: {k}"))
                            || read_by_telemetry(k),
                        "compose {name:?}: {k}"
                    );
                }
            }
        }
    }
    let prom = std::fs::read_to_string(deploy().join("prometheus/prometheus.yml"))
        .expect("prometheus.yml");
    assert!(prom.contains("coordinator:8080") && prom.contains("port: 9464"));
}
