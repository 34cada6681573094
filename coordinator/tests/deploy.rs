//! deploy/ is checked against the code: every file parses; every metric the dashboard and
//! the alert rules query is one the code exports; every flag and environment variable the
//! manifests pass is one the binaries accept; ports, labels and files line up; and
//! Prometheus' own `promtool` accepts the rules.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

fn deploy() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

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

/// The volume mount of container `c` that `path` lies under.
fn mounted_under(c: &Value, path: &str) -> Option<String> {
    c["volumeMounts"]
        .as_sequence()?
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .find(|m| path.starts_with(&format!("{}/", m.trim_end_matches('/'))))
        .map(str::to_owned)
}

/// `--flag`s in an argument list.
/// The OpenTelemetry SDK reads its own variables; ours must name the one that turns it on.
fn read_by_telemetry(var: &str) -> bool {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let code = std::fs::read_to_string(root.join("shared/src/telemetry.rs")).expect("telemetry.rs");
    var == "OTEL_EXPORTER_OTLP_ENDPOINT" && code.contains(&format!("\"{var}\""))
}

fn flags(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or_default().to_owned())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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

/// Pod specs of the kustomization's workloads, with their pod labels.
fn workloads(k8s: &Path) -> Vec<(String, Value, Value)> {
    let kustomization = &docs(&k8s.join("kustomization.yaml"))[0];
    let mut out = Vec::new();
    for r in strings(&kustomization["resources"]) {
        for d in docs(&k8s.join(&r)) {
            let template = match d["kind"].as_str().unwrap_or_default() {
                "Deployment" | "StatefulSet" => d["spec"]["template"].clone(),
                "CronJob" => d["spec"]["jobTemplate"]["spec"]["template"].clone(),
                _ => continue,
            };
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let mut spec = template["spec"].clone();
            // A StatefulSet's claims are volumes of its pods too.
            for claim in d["spec"]["volumeClaimTemplates"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
            {
                let volume: Value = serde_yaml_ng::from_str(&format!(
                    "{{name: {}}}",
                    claim["metadata"]["name"].as_str().unwrap_or_default()
                ))
                .expect("volume");
                if let Some(v) = spec["volumes"].as_sequence_mut() {
                    v.push(volume);
                }
            }
            out.push((name, template["metadata"]["labels"].clone(), spec));
        }
    }
    out
}

/// Keys of each generated Secret or ConfigMap, by name.
fn generated(k8s: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let kustomization = &docs(&k8s.join("kustomization.yaml"))[0];
    let mut out = std::collections::BTreeMap::new();
    for section in ["secretGenerator", "configMapGenerator"] {
        for g in kustomization[section]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
        {
            let mut keys = Vec::new();
            for f in strings(&g["files"]) {
                let key = match f.split_once('=') {
                    Some((k, _)) => k.to_owned(),
                    None => f.rsplit('/').next().unwrap_or_default().to_owned(),
                };
                keys.push(key);
            }
            for e in strings(&g["envs"]) {
                let text = std::fs::read_to_string(k8s.join(&e)).expect("env file");
                for l in text
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                {
                    keys.push(l.split('=').next().unwrap_or_default().to_owned());
                }
            }
            out.insert(g["name"].as_str().unwrap_or_default().to_owned(), keys);
        }
    }
    out
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_mapping()
        .is_some_and(|m| m.iter().all(|(k, v)| labels[k] == *v))
}

#[test]
fn secrets_and_volumes_line_up_and_clients_get_no_server_keys() {
    let k8s = deploy().join("k8s");
    let generated = generated(&k8s);
    for (name, _, pod) in workloads(&k8s) {
        let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
        for c in pod["containers"].as_sequence().cloned().unwrap_or_default() {
            for m in c["volumeMounts"].as_sequence().cloned().unwrap_or_default() {
                let v = m["name"].as_str().unwrap_or_default();
                assert!(
                    volumes.iter().any(|x| x["name"] == m["name"]),
                    "{name}: mount of unknown volume {v}"
                );
            }
            for e in c["env"].as_sequence().cloned().unwrap_or_default() {
                let r = &e["valueFrom"]["secretKeyRef"];
                if let Some(secret) = r["name"].as_str() {
                    let key = r["key"].as_str().unwrap_or_default();
                    let keys = generated
                        .get(secret)
                        .unwrap_or_else(|| panic!("{name}: secret {secret} is not generated"));
                    assert!(
                        keys.iter().any(|k| k == key),
                        "{name}: {secret} has no {key}"
                    );
                }
            }
            // Whoever talks to NATS or serves finds the CA where the ConfigMap says.
            let command = strings(&c["command"]);
            let args = strings(&c["args"]);
            let talks_nats = command.first().map(String::as_str) == Some("hangar-worker")
                || args.first().map(String::as_str) == Some("serve");
            if talks_nats {
                let config = &docs(&k8s.join("config.yaml"))[0];
                let ca = config["data"]["HANGAR_NATS_CA"]
                    .as_str()
                    .expect("HANGAR_NATS_CA");
                assert!(mounted_under(&c, ca).is_some(), "{name}: {ca} not mounted");
                assert!(
                    c["env"]
                        .as_sequence()
                        .is_some_and(|e| e.iter().any(|x| x["name"] == "HANGAR_NATS_PASSWORD"
                            && x["valueFrom"]["secretKeyRef"].is_mapping())),
                    "{name}: its NATS password must come from a Secret"
                );
            }
        }
        for v in &volumes {
            if let Some(secret) = v["secret"]["secretName"].as_str() {
                let keys = generated
                    .get(secret)
                    .unwrap_or_else(|| panic!("{name}: secret {secret} is not generated"));
                let items: Vec<String> = v["secret"]["items"]
                    .as_sequence()
                    .map(|i| {
                        i.iter()
                            .filter_map(|x| x["key"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                for i in &items {
                    assert!(keys.contains(i), "{name}: {secret} has no {i}");
                }
                // Only the NATS server itself mounts NATS' private key.
                if secret == "hangar-nats-tls" && name != "nats" {
                    assert_eq!(items, vec!["ca.crt".to_owned()], "{name} mounts {secret}");
                }
                if secret == "hangar-api-tls" && name != "hangar-coordinator" {
                    assert_eq!(items, vec!["ca.crt".to_owned()], "{name} mounts {secret}");
                }
            }
            if let Some(cm) = v["configMap"]["name"].as_str() {
                assert!(
                    generated.contains_key(cm) || v["configMap"]["optional"] == true,
                    "{name}: configMap {cm}"
                );
            }
        }
    }
    // The token file parses as `serve --api-tokens` expects: SHA-256s, never tokens.
    let tokens = &docs(&k8s.join("secrets/api-tokens.yaml"))[0];
    for t in tokens["tokens"].as_sequence().expect("tokens") {
        let sum = t["sha256"].as_str().unwrap_or_default();
        assert!(
            sum.len() == 64 && sum.chars().all(|c| c.is_ascii_hexdigit()),
            "{t:?}"
        );
        assert!(["read", "submit", "admin"].contains(&t["role"].as_str().unwrap_or_default()));
    }
}

#[test]
fn network_policies_admit_only_the_named_peers() {
    let k8s = deploy().join("k8s");
    let pods = workloads(&k8s);
    let policies: Vec<Value> = docs(&k8s.join("networkpolicy.yaml"));
    let app = |name: &str| {
        pods.iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no workload {name}"))
            .clone()
    };
    // The peers admitted to `port` of `target`'s pods: their workload names, or the label
    // or namespace that stands for them.
    let admitted = |target: &str, port: i64| -> Vec<String> {
        let (_, labels, pod) = app(target);
        let ports: Vec<i64> = pod["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|p| p["containerPort"].as_i64())
            .collect();
        let mut out = Vec::new();
        for p in policies
            .iter()
            .filter(|p| selects(&p["spec"]["podSelector"], &labels))
        {
            for rule in p["spec"]["ingress"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
            {
                let rule_ports: Vec<i64> = rule["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x["port"].as_i64())
                    .collect();
                for rp in &rule_ports {
                    assert!(ports.contains(rp), "{target} has no port {rp}");
                }
                if !rule_ports.contains(&port) {
                    continue;
                }
                for from in rule["from"].as_sequence().cloned().unwrap_or_default() {
                    if let Some(ns) =
                        from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                            .as_str()
                    {
                        out.push(format!("namespace {ns}"));
                    } else if from["podSelector"].is_mapping() {
                        let named: Vec<String> = pods
                            .iter()
                            .filter(|(_, l, _)| selects(&from["podSelector"], l))
                            .map(|(n, _, _)| n.clone())
                            .collect();
                        if named.is_empty() {
                            // A label no workload here carries: for clients to opt in.
                            let sel = &from["podSelector"]["matchLabels"];
                            out.push(format!(
                                "label {}",
                                serde_yaml_ng::to_string(sel).unwrap_or_default().trim()
                            ));
                        }
                        out.extend(named);
                    } else {
                        panic!("{target}: a rule admitting everyone: {from:?}");
                    }
                }
            }
        }
        out.sort();
        out
    };
    // Everything else is dropped.
    assert!(
        policies.iter().any(|p| p["spec"]["podSelector"]
            .as_mapping()
            .is_some_and(|m| m.is_empty())
            && p["spec"]["ingress"].is_null()),
        "no default deny"
    );
    assert_eq!(
        admitted("nats", 4222),
        vec!["hangar-coordinator", "hangar-worker"]
    );
    assert_eq!(
        admitted("nats", 8222),
        vec!["namespace keda", "namespace monitoring"]
    );
    assert_eq!(
        admitted("hangar-coordinator", 8080),
        vec![
            "hangar-nightly-mirror",
            "label hangar.io/api-client: 'true'",
            "namespace monitoring"
        ]
    );
    assert_eq!(
        admitted("hangar-worker", 9464),
        vec!["namespace monitoring"]
    );
}

fn nats_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HANGAR_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// The deployed nats.conf, as nats-server itself reads it (`-t`), with its TLS files and
/// store moved to a temporary directory; passwords only through the environment.
#[test]
fn nats_server_accepts_the_deployed_config() {
    let dir = tempfile::tempdir().unwrap();
    let src = deploy().join("k8s/nats");
    let conf = std::fs::read_to_string(src.join("nats.conf")).unwrap();
    let permissions = std::fs::read_to_string(src.join("permissions.conf")).unwrap();
    assert!(!conf.contains("no_auth_user"), "an anonymous user");
    for user in ["coordinator", "worker"] {
        let line = conf
            .lines()
            .find(|l| l.contains(&format!("user: {user},")))
            .unwrap_or_else(|| panic!("no user {user}"));
        assert!(line.contains("password: $HANGAR_NATS_"), "{line}");
    }
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["nats".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(tls.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(tls.join("ca.crt"), cert.pem()).unwrap();
    std::fs::write(tls.join("tls.key"), key.serialize_pem()).unwrap();
    let moved = conf
        .replace("/etc/nats/tls", &tls.display().to_string())
        .replace(
            "store_dir: /data",
            &format!("store_dir: {}", dir.path().join("data").display()),
        );
    std::fs::write(dir.path().join("nats.conf"), moved).unwrap();
    std::fs::write(dir.path().join("permissions.conf"), permissions).unwrap();
    let check = |with_passwords: bool| {
        let mut cmd = Command::new(nats_binary());
        cmd.arg("-c").arg(dir.path().join("nats.conf")).arg("-t");
        if with_passwords {
            cmd.env("HANGAR_NATS_COORDINATOR_PASSWORD", "a")
                .env("HANGAR_NATS_WORKER_PASSWORD", "b");
        }
        cmd.output()
            .expect("nats-server (scripts/dev-services.sh installs it)")
    };
    let ok = check(true);
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    // Without the Secret's variables the server refuses to start, rather than run with
    // empty passwords.
    assert!(!check(false).status.success());
}

#[test]
fn compose_keeps_nats_passwords_and_ports_private() {
    let compose = &docs(&deploy().join("compose/compose.yaml"))[0];
    for (name, svc) in compose["services"].as_mapping().expect("services") {
        for p in strings(&svc["ports"]) {
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name:?} publishes {p} beyond loopback"
            );
        }
        if let Some(envs) = svc["environment"].as_mapping() {
            for (k, v) in envs {
                let k = k.as_str().unwrap_or_default();
                if k.contains("PASSWORD") || k.contains("TOKEN") {
                    let v = v.as_str().unwrap_or_default();
                    assert!(v.starts_with("${") && v.contains(":?"), "{name:?}: {k}={v}");
                }
            }
        }
    }
    let nats = &compose["services"]["nats"];
    let volumes = strings(&nats["volumes"]);
    for f in ["nats.conf", "permissions.conf"] {
        assert!(
            volumes
                .iter()
                .any(|v| v.starts_with(&format!("../k8s/nats/{f}:"))),
            "compose runs the same {f} as Kubernetes"
        );
    }
}

/// KEDA scales the workers on consumers the queue really creates, the blob lanes (copies and
/// their quick lane) and manifests among them.
#[test]
fn keda_scales_on_the_consumers_the_queue_creates() {
    let path = deploy().join("k8s/worker-keda.yaml");
    let mut named = BTreeSet::new();
    for doc in docs(&path) {
        for t in doc["spec"]["triggers"].as_sequence().into_iter().flatten() {
            let consumer = t["metadata"]["consumer"].as_str().expect("a consumer");
            assert_eq!(t["metadata"]["stream"].as_str(), Some("HANGAR_TASKS"));
            named.insert(consumer.to_owned());
        }
    }
    let created: BTreeSet<String> = hangar_shared::queue::jetstream::Lane::all()
        .map(|l| l.consumer())
        .collect();
    assert!(
        named.is_subset(&created),
        "{named:?} not all in {created:?}"
    );
    for lane in ["hangar-blob", "hangar-blob-quick", "hangar-manifest"] {
        assert!(named.contains(lane), "no trigger on {lane}: {named:?}");
    }
}
