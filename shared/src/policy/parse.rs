//! Reading `policy.json`'s requirements: every field checked (an unknown one makes the file
//! invalid, as containers/image's strict parser does), keys and identity rules turned into
//! the values `mod.rs` evaluates.

use serde_json::{Map, Value};

use super::{DockerName, Identity, KeySource, Requirement, Rule};

pub(super) fn only_fields(
    obj: &Map<String, Value>,
    allowed: &[&str],
    what: &str,
) -> std::result::Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{what}: unknown field {k:?}")),
        None => Ok(()),
    }
}

pub(super) fn string_field(
    obj: &Map<String, Value>,
    field: &str,
    what: &str,
) -> std::result::Result<Option<String>, String> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{what}: {field:?} is not a string")),
    }
}

pub(super) fn requirements(
    list: &Value,
    label: &str,
) -> std::result::Result<Vec<Requirement>, String> {
    let list = list
        .as_array()
        .ok_or_else(|| format!("{label}: the requirements are not a list"))?;
    if list.is_empty() {
        return Err(format!(
            "{label}: the list of requirements must not be empty (use insecureAcceptAnything)"
        ));
    }
    list.iter()
        .enumerate()
        .map(|(n, r)| requirement(r, &format!("{label}[{n}]")))
        .collect()
}

pub(super) fn requirement(value: &Value, label: &str) -> std::result::Result<Requirement, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("{label}: a requirement is an object"))?;
    let kind = string_field(obj, "type", label)?
        .ok_or_else(|| format!("{label}: the requirement has no \"type\""))?;
    let rule = match kind.as_str() {
        "insecureAcceptAnything" => {
            only_fields(obj, &["type"], label)?;
            Rule::Accept
        }
        "reject" => {
            only_fields(obj, &["type"], label)?;
            Rule::Reject
        }
        "signedBy" => {
            Rule::Unsupported("requirement type \"signedBy\" (GPG simple signing)".into())
        }
        "sigstoreSigned" => sigstore(obj, label)?,
        other => {
            return Err(format!(
                "{label}: unknown policy requirement type {other:?}"
            ));
        }
    };
    let text = match &rule {
        Rule::Sigstore { keys, identity } => {
            let keys: Vec<String> = keys
                .iter()
                .map(|k| match k {
                    KeySource::Path(p) => format!("keyPath {}", p.display()),
                    KeySource::Data(_, n) => format!("keyData #{}", n + 1),
                })
                .collect();
            format!(
                "sigstoreSigned ({}, signedIdentity {})",
                keys.join(", "),
                identity.describe()
            )
        }
        _ => kind.clone(),
    };
    Ok(Requirement { rule, text })
}

pub(super) fn sigstore(obj: &Map<String, Value>, label: &str) -> std::result::Result<Rule, String> {
    const KEYS: [&str; 4] = ["keyPath", "keyPaths", "keyData", "keyDatas"];
    const KEYLESS: [&str; 6] = [
        "fulcio",
        "rekorPublicKeyPath",
        "rekorPublicKeyPaths",
        "rekorPublicKeyData",
        "rekorPublicKeyDatas",
        "pki",
    ];
    let mut allowed = vec!["type", "signedIdentity"];
    allowed.extend(KEYS);
    allowed.extend(KEYLESS);
    only_fields(obj, &allowed, label)?;
    let identity = match obj.get("signedIdentity") {
        None => Identity::MatchRepoDigestOrExact,
        Some(v) => match signed_identity_rule(v, label)? {
            Ok(i) => i,
            Err(unsupported) => return Ok(Rule::Unsupported(unsupported)),
        },
    };
    if let Some(field) = KEYLESS.iter().find(|f| obj.contains_key(**f)) {
        return Ok(Rule::Unsupported(format!(
            "sigstoreSigned with {field:?} (Fulcio, Rekor or PKI verification)"
        )));
    }
    let given: Vec<&str> = KEYS
        .iter()
        .copied()
        .filter(|k| obj.contains_key(*k))
        .collect();
    if given.len() != 1 {
        return Err(format!(
            "{label}: sigstoreSigned needs exactly one of keyPath, keyPaths, keyData and keyDatas"
        ));
    }
    let strings = |field: &str| -> std::result::Result<Vec<String>, String> {
        let list = obj[field]
            .as_array()
            .ok_or_else(|| format!("{label}: {field:?} is not a list"))?;
        if list.is_empty() {
            return Err(format!("{label}: {field:?} is empty"));
        }
        list.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{label}: {field:?} holds a non-string"))
            })
            .collect()
    };
    let keys = match given[0] {
        "keyPath" => vec![KeySource::Path(
            string_field(obj, "keyPath", label)?
                .unwrap_or_default()
                .into(),
        )],
        "keyPaths" => strings("keyPaths")?
            .into_iter()
            .map(|p| KeySource::Path(p.into()))
            .collect(),
        "keyData" => vec![KeySource::Data(
            string_field(obj, "keyData", label)?.unwrap_or_default(),
            0,
        )],
        _ => strings("keyDatas")?
            .into_iter()
            .enumerate()
            .map(|(n, d)| KeySource::Data(d, n))
            .collect(),
    };
    if keys
        .iter()
        .any(|k| matches!(k, KeySource::Path(p) if p.as_os_str().is_empty()))
    {
        return Err(format!("{label}: an empty key path"));
    }
    Ok(Rule::Sigstore { keys, identity })
}

/// `Ok(Err(what))` for an identity rule containers/image has and this project does not.
pub(super) fn signed_identity_rule(
    value: &Value,
    label: &str,
) -> std::result::Result<std::result::Result<Identity, String>, String> {
    let label = format!("{label}.signedIdentity");
    let obj = value
        .as_object()
        .ok_or_else(|| format!("{label}: not an object"))?;
    let kind = string_field(obj, "type", &label)?.ok_or_else(|| format!("{label}: no \"type\""))?;
    let reference = |field: &str| -> std::result::Result<DockerName, String> {
        only_fields(obj, &["type", field], &label)?;
        let text = string_field(obj, field, &label)?
            .ok_or_else(|| format!("{label}: {kind} needs {field:?}"))?;
        DockerName::parse(&text)
            .ok_or_else(|| format!("{label}: {field} {text:?} is not a valid Docker reference"))
    };
    Ok(Ok(match kind.as_str() {
        "matchExact" | "matchRepoDigestOrExact" | "matchRepository" => {
            only_fields(obj, &["type"], &label)?;
            match kind.as_str() {
                "matchExact" => Identity::MatchExact,
                "matchRepository" => Identity::MatchRepository,
                _ => Identity::MatchRepoDigestOrExact,
            }
        }
        "exactReference" => {
            let r = reference("dockerReference")?;
            if r.is_name_only() {
                return Err(format!(
                    "{label}: dockerReference {r} has neither a tag nor a digest"
                ));
            }
            Identity::ExactReference(r)
        }
        "exactRepository" => {
            let r = reference("dockerRepository")?;
            Identity::ExactRepository(r)
        }
        "remapIdentity" => {
            return Ok(Err("signedIdentity \"remapIdentity\"".into()));
        }
        other => return Err(format!("{label}: unknown signedIdentity type {other:?}")),
    }))
}

/// A docker scope is a fully expanded reference (`host[:port]/repo[:tag|@digest]`), a
/// prefix of one, or `*.domain`.
pub(super) fn validate_docker_scope(scope: &str) -> std::result::Result<(), String> {
    if let Some(domain) = scope.strip_prefix("*.") {
        if domain.is_empty() || domain.contains(['*', '/', ':']) {
            return Err("a wildcard scope is *.domain (e.g. *.example.com)".into());
        }
        return Ok(());
    }
    let host = scope.split('/').next().unwrap_or_default();
    let is_host = (host.contains(['.', ':']) || host == "localhost")
        && crate::reference::validate_registry(host).is_ok();
    let expanded = is_host
        && (host == scope
            || DockerName::parse(scope).is_some_and(|n| n.name.starts_with(&format!("{host}/"))));
    if !expanded {
        return Err(format!(
            "scope {scope:?} is not a fully expanded reference (e.g. docker.io/library/busybox)"
        ));
    }
    Ok(())
}
