//! Images and versions from Rancher's Kontainer Driver Metadata (`data.json`): K3s and
//! RKE2 releases whose channel-server range holds the Rancher version, and RKE1's system
//! images per Kubernetes minor.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value};

use super::version;
use super::{Found, Lists};

/// A distribution whose releases KDM lists (`k3s`, `rke2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distro {
    K3s,
    Rke2,
}

impl Distro {
    pub fn name(self) -> &'static str {
        match self {
            Distro::K3s => "k3s",
            Distro::Rke2 => "rke2",
        }
    }

    /// Where a release's image lists are, under `base` (GitHub, or a mirror of its release
    /// downloads): Linux, and Windows for RKE2.
    pub fn image_lists(self, base: &str, ver: &str) -> (String, Option<String>) {
        let base = base.trim_end_matches('/');
        match self {
            Distro::K3s => (
                format!("{base}/k3s-io/k3s/releases/download/{ver}/k3s-images.txt"),
                None,
            ),
            Distro::Rke2 => (
                format!(
                    "{base}/rancher/rke2/releases/download/{ver}/rke2-images-all.linux-amd64.txt"
                ),
                Some(format!(
                    "{base}/rancher/rke2/releases/download/{ver}/rke2-images.windows-amd64.txt"
                )),
            ),
        }
    }
}

/// The data's top-level object, its keys matched without regard to case (as Go decodes it).
pub struct Kdm(Map<String, Value>);

impl Kdm {
    pub fn parse(bytes: &[u8], name: &str) -> Result<Self> {
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => bail!("{name}: KDM data is not a JSON object"),
            Err(e) => bail!("{name}: KDM data is not valid JSON: {e}"),
        }
    }

    fn key(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    fn object(&self, key: &str) -> Option<&Map<String, Value>> {
        self.key(key).and_then(Value::as_object)
    }

    /// The releases of `distro` supported by `rancher`, the newest patch of each minor only
    /// when `latest_patch_only` (Hangar's `--kdm-remove-deprecated`), newest first.
    pub fn releases(
        &self,
        distro: Distro,
        rancher: &semver::Version,
        latest_patch_only: bool,
    ) -> Result<Vec<String>> {
        let releases = self
            .key(distro.name())
            .and_then(|d| d.get("releases"))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                anyhow!(
                    "the KDM data has no {}.releases list (it is needed, even empty)",
                    distro.name()
                )
            })?;
        let channel =
            |r: &Value, k: &str| r.get(k).and_then(Value::as_str).and_then(version::parse);
        let mut kept: Vec<(semver::Version, String)> = releases
            .iter()
            .filter_map(|r| {
                let ver = r.get("version")?.as_str().filter(|v| !v.is_empty())?;
                let (min, max) = (
                    channel(r, "minChannelServerVersion")?,
                    channel(r, "maxChannelServerVersion")?,
                );
                let inside =
                    version::cmp(&min, rancher).is_le() && version::cmp(rancher, &max).is_le();
                Some((version::parse(ver)?, ver.to_owned())).filter(|_| inside)
            })
            .collect();
        if latest_patch_only {
            let mut newest: BTreeMap<String, (semver::Version, String)> = BTreeMap::new();
            for (v, text) in kept {
                let better =
                    newest
                        .get(&version::major_minor(&v))
                        .is_none_or(|(best, best_text)| {
                            version::cmp(&v, best)
                                .then_with(|| text.cmp(best_text))
                                .is_gt()
                        });
                if better {
                    newest.insert(version::major_minor(&v), (v, text));
                }
            }
            kept = newest.into_values().collect();
        }
        kept.sort_by(|(a, at), (b, bt)| version::cmp(b, a).then_with(|| bt.cmp(at)));
        Ok(kept.into_iter().map(|(_, t)| t).collect())
    }

    /// RKE1: for each Kubernetes minor Rancher supports, its newest system images.
    pub fn rke1(&self, rancher: &semver::Version, found: &mut Found) {
        let Some(images) = self.object("K8sVersionRKESystemImages") else {
            return;
        };
        let info = self.object("K8sVersionInfo");
        let field = |key: &str, name: &str| {
            info.and_then(|i| i.get(key))
                .and_then(|e| e.get(name))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .and_then(version::parse)
        };
        let mut newest: BTreeMap<String, (semver::Version, &String)> = BTreeMap::new();
        for k in images.keys() {
            if field(k, "deprecateRancherVersion")
                .is_some_and(|d| version::cmp(rancher, &d).is_ge())
                || field(k, "minRancherVersion").is_some_and(|m| version::cmp(rancher, &m).is_lt())
            {
                continue;
            }
            let mm: String = k.split('.').take(2).collect::<Vec<_>>().join(".");
            if field(&mm, "maxRancherVersion").is_some_and(|m| version::cmp(rancher, &m).is_gt()) {
                continue;
            }
            let Some(v) = version::parse(k) else { continue };
            if newest
                .get(&mm)
                .is_none_or(|(best, _)| version::cmp(&v, best).is_gt())
            {
                newest.insert(mm, (v, k));
            }
        }
        let linux_options = self.object("K8sVersionServiceOptions");
        let windows_options = self.object("K8sVersionWindowsServiceOptions");
        for (mm, (_, k)) in newest {
            let Some(system) = images.get(k).and_then(Value::as_object) else {
                continue;
            };
            let value = |name: &str| {
                system
                    .get(name)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            if windows_options.is_some_and(|o| o.contains_key(&mm)) {
                found.rke1_versions.insert(k.clone());
                for name in [
                    "nginxProxy",
                    "certDownloader",
                    "kubernetesServicesSidecar",
                    "kubernetes",
                    "windowsPodInfraContainer",
                ] {
                    if let Some(image) = value(name).filter(|i| rancher_project(i)) {
                        found.add(Lists::Windows, image, "rke-system-windows");
                    }
                }
            }
            if linux_options.is_some_and(|o| o.contains_key(&mm)) {
                found.rke1_versions.insert(k.clone());
                for (name, image) in system {
                    let Some(image) = image.as_str().filter(|s| !s.is_empty()) else {
                        continue;
                    };
                    if name != "windowsPodInfraContainer" && rancher_project(image) {
                        found.add(Lists::Linux, image, "rke-system-linux");
                        found.rke1_linux.insert(image.to_owned());
                    }
                }
            }
        }
    }
}

/// RKE1's system images are kept only from Rancher's own projects.
fn rancher_project(image: &str) -> bool {
    let parts: Vec<&str> = image.split('/').filter(|p| !p.is_empty()).collect();
    let project = match parts.as_slice() {
        [_] => "library",
        [first, _] if first.contains(['.', ':']) || *first == "localhost" => "library",
        [first, _] => first,
        [_, middle, ..] => middle,
        [] => "",
    };
    matches!(project, "rancher" | "cnrancher" | "library")
}

/// The lines of a release's image list: `docker.io/` dropped, blank lines skipped.
pub fn list_lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.strip_prefix("docker.io/").unwrap_or(l).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_patch_of_each_minor_inside_the_channel_range() {
        let kdm = Kdm::parse(
            br#"{"K3S": {"releases": [
                {"version": "v1.30.4+k3s1", "minChannelServerVersion": "v2.9.0-alpha1", "maxChannelServerVersion": "v2.9.99"},
                {"version": "v1.30.5+k3s1", "minChannelServerVersion": "v2.9.0-alpha1", "maxChannelServerVersion": "v2.9.99"},
                {"version": "v1.29.9+k3s1", "minChannelServerVersion": "v2.9.0-alpha1", "maxChannelServerVersion": "v2.9.99"},
                {"version": "v1.27.1+k3s1", "minChannelServerVersion": "v2.7.0", "maxChannelServerVersion": "v2.8.99"},
                {"version": "v1.31.0+k3s1", "minChannelServerVersion": "v2.9.0"}
            ]}}"#,
            "kdm.json",
        )
        .expect("kdm");
        let v = version::parse("2.9.1").unwrap();
        assert_eq!(
            kdm.releases(Distro::K3s, &v, true).unwrap(),
            ["v1.30.5+k3s1", "v1.29.9+k3s1"]
        );
        assert_eq!(kdm.releases(Distro::K3s, &v, false).unwrap().len(), 3);
        assert!(kdm.releases(Distro::Rke2, &v, true).is_err());
    }

    #[test]
    fn rke1_images_come_only_from_rancher_projects() {
        assert!(rancher_project("rancher/hyperkube:v1"));
        assert!(rancher_project("alpine:3"));
        assert!(rancher_project("docker.io/rancher/x:1"));
        assert!(rancher_project("reg.io/cnrancher/x:1"));
        assert!(!rancher_project("weaveworks/weave-kube:2.8.1"));
    }
}
