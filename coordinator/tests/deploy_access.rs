//! Who may reach what, as deploy/ says it: secrets and volumes (no server key in a client),
//! network policies that admit only the named peers, the NATS configuration and its
//! permissions as nats-server reads them, compose's private passwords and ports, and the
//! consumers KEDA scales on.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::deploy::*;
use serde_yaml_ng::Value;

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
        let mut cmd = Command::new(hangar_loadtest::services::nats_binary());
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
