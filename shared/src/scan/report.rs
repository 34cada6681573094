//! The scan report formats: Hangar's csv, json and yaml, plus SPDX (json, csv) and
//! CycloneDX json. Pure functions over scanned images; the only output is the `Write` given.
//!
//! The structured formats are one document ([`document`]): `{"time", "results": [{reference,
//! images: [...]}]}`, each image with its findings and, for SPDX and CycloneDX, its SBOM.
//! [`write`] encodes it as JSON; YAML is encoded by the caller from [`document`] (this crate
//! has no YAML encoder).

use std::io::{self, Write};

use serde_json::{Value, json};

use super::matcher::Finding;
use super::{Inventory, Package, PkgKind};
use crate::manifest::Platform;

/// One scanned platform image.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// The image as the list (or job) names it.
    pub reference: String,
    /// The platform manifest's digest.
    pub digest: String,
    pub platform: Platform,
    pub inventory: Inventory,
    pub findings: Vec<Finding>,
}

/// A report format (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Yaml,
    SpdxJson,
    SpdxCsv,
    CycloneDxJson,
}

impl Format {
    /// Every format, as `--format` names them.
    pub const NAMES: [&'static str; 6] = [
        "csv",
        "json",
        "yaml",
        "spdx-json",
        "spdx-csv",
        "cyclonedx-json",
    ];

    /// The format of a (lower case) `--format` name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "csv" => Self::Csv,
            "json" => Self::Json,
            "yaml" => Self::Yaml,
            "spdx-json" => Self::SpdxJson,
            "spdx-csv" => Self::SpdxCsv,
            "cyclonedx-json" => Self::CycloneDxJson,
            _ => return None,
        })
    }

    /// The report file's extension: `csv`, `json`, `yaml`, `spdx.json`, `spdx.csv`,
    /// `cdx.json`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Yaml => "yaml",
            Self::SpdxJson => "spdx.json",
            Self::SpdxCsv => "spdx.csv",
            Self::CycloneDxJson => "cdx.json",
        }
    }
}

/// Writes the report of `scanned` in `format`, `now` (RFC 3339) as its time. YAML is not
/// written here (an `Unsupported` error): encode [`document`] with a YAML serializer.
pub fn write<W: Write>(
    mut out: W,
    scanned: &[Scanned],
    format: Format,
    now: &str,
) -> io::Result<()> {
    match format {
        Format::Csv => write_csv(out, scanned),
        Format::SpdxCsv => write_spdx_csv(out, scanned),
        Format::Json | Format::SpdxJson | Format::CycloneDxJson => {
            serde_json::to_writer_pretty(&mut out, &document(scanned, format, now))?;
            Ok(())
        }
        Format::Yaml => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a YAML report is encoded by the caller from scan::report::document",
        )),
    }
}

/// The findings, one line each: `image,arch,os,package,title,id,severity,installed,fixed,url`.
pub fn write_csv<W: Write>(mut out: W, scanned: &[Scanned]) -> io::Result<()> {
    out.write_all(b"image,arch,os,package,title,id,severity,installed,fixed,url\n")?;
    for s in scanned {
        for f in &s.findings {
            let cells = [
                &s.reference,
                &s.platform.architecture,
                &s.platform.os,
                &f.package,
                &f.title,
                &f.id,
                &f.severity,
                &f.installed,
                &f.fixed,
                &f.url,
            ];
            out.write_all(csv_line(cells).as_bytes())?;
        }
    }
    Ok(())
}

/// The packages, one line each:
/// `image,arch,os,package,license,versionInfo,supplier,originator,SPDXID`.
pub fn write_spdx_csv<W: Write>(mut out: W, scanned: &[Scanned]) -> io::Result<()> {
    out.write_all(b"image,arch,os,package,license,versionInfo,supplier,originator,SPDXID\n")?;
    for s in scanned {
        for (i, p) in s.inventory.packages.iter().enumerate() {
            let license = p.license.clone().unwrap_or_default();
            let id = spdx_id(i, p);
            let cells = [
                &s.reference,
                &s.platform.architecture,
                &s.platform.os,
                &p.name,
                &license,
                &p.version,
                "",
                "",
                &id,
            ];
            out.write_all(csv_line(cells).as_bytes())?;
        }
    }
    Ok(())
}

/// The structured report: `{"time": now, "results": [...]}` (Hangar's YAML names the list
/// `result`), images grouped by reference; SPDX and CycloneDX add each image's SBOM.
pub fn document(scanned: &[Scanned], format: Format, now: &str) -> Value {
    let results = by_reference(scanned.iter().map(|s| {
        let p = &s.platform;
        let mut image = json!({
            "digest": s.digest,
            "platform": {"arch": p.architecture, "os": p.os, "osVersion": p.os_version, "osFeatures": p.os_features, "variant": p.variant},
            "vulnerabilities": s.findings,
        });
        match format {
            Format::SpdxJson => image["spdx"] = spdx(s, now),
            Format::CycloneDxJson => image["cyclonedx"] = cyclonedx(s, now),
            _ => {}
        }
        (s.reference.clone(), image)
    }));
    if format == Format::Yaml {
        json!({"time": now, "result": results})
    } else {
        json!({"time": now, "results": results})
    }
}

/// One CSV line (with its newline), cells quoted when they hold `,`, `"` or a line break.
pub fn csv_line<S: AsRef<str>>(cells: impl IntoIterator<Item = S>) -> String {
    let mut line = cells
        .into_iter()
        .map(|c| {
            let c = c.as_ref();
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// Report entries grouped as Hangar's reports have them: `[{reference, images: [...]}]`,
/// in the order references first appear.
pub fn by_reference(rows: impl IntoIterator<Item = (String, Value)>) -> Vec<Value> {
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for (reference, image) in rows {
        match groups.iter_mut().find(|(r, _)| *r == reference) {
            Some((_, images)) => images.push(image),
            None => groups.push((reference, vec![image])),
        }
    }
    groups
        .into_iter()
        .map(|(reference, images)| json!({"reference": reference, "images": images}))
        .collect()
}

/// The package URL of `p` (pypi, deb, apk or rpm, namespaced by the image's OS).
fn purl(inv: &Inventory, p: &Package) -> String {
    let os = inv.os.as_ref();
    match p.kind {
        PkgKind::Python => format!("pkg:pypi/{}@{}", p.name.to_lowercase(), p.version),
        PkgKind::Dpkg => format!(
            "pkg:deb/{}/{}@{}{}",
            os.map_or("debian", |o| o.id.as_str()),
            p.name,
            p.version,
            os.map(|o| format!("?distro={}-{}", o.id, o.version))
                .unwrap_or_default()
        ),
        PkgKind::Apk => format!(
            "pkg:apk/{}/{}@{}",
            os.map_or("alpine", |o| o.id.as_str()),
            p.name,
            p.version
        ),
        PkgKind::Rpm => format!(
            "pkg:rpm/{}/{}@{}",
            os.map_or("rpm", |o| o.id.as_str()),
            p.name,
            p.version
        ),
    }
}

/// The SPDX identifier of the `i`th package: its name with anything but ASCII letters,
/// digits, `.` and `-` made `-`, and its index.
fn spdx_id(i: usize, p: &Package) -> String {
    let clean: String = p
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-Package-{clean}-{i}")
}

/// An SPDX 2.3 document of one image's packages.
fn spdx(s: &Scanned, now: &str) -> Value {
    let packages: Vec<Value> = s
        .inventory
        .packages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "SPDXID": spdx_id(i, p),
                "name": p.name,
                "versionInfo": p.version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": p.license.clone().unwrap_or_else(|| "NOASSERTION".into()),
                "supplier": "NOASSERTION",
                "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl(&s.inventory, p)}],
            })
        })
        .collect();
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", s.reference, s.digest),
        "documentNamespace": format!("https://hangar-fleet.invalid/spdx/{}", s.digest),
        "creationInfo": {"creators": ["Tool: hangar-fleet"], "created": now},
        "packages": packages,
    })
}

/// A CycloneDX 1.5 BOM of one image: its packages and findings.
fn cyclonedx(s: &Scanned, now: &str) -> Value {
    let components: Vec<Value> = s
        .inventory
        .packages
        .iter()
        .map(|p| json!({"type": "library", "bom-ref": purl(&s.inventory, p), "name": p.name, "version": p.version, "purl": purl(&s.inventory, p)}))
        .collect();
    let vulnerabilities: Vec<Value> = s
        .findings
        .iter()
        .map(|f| {
            let r = s
                .inventory
                .packages
                .iter()
                .find(|p| p.name == f.package && p.version == f.installed)
                .map(|p| purl(&s.inventory, p))
                .unwrap_or_default();
            json!({
                "id": f.id,
                "source": {"name": "OSV", "url": f.url},
                "ratings": [{"severity": f.severity.to_lowercase()}],
                "description": f.title,
                "recommendation": if f.fixed.is_empty() { String::new() } else { format!("upgrade to {}", f.fixed) },
                "affects": [{"ref": r}],
            })
        })
        .collect();
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_of(&s.digest)),
        "version": 1,
        "metadata": {"timestamp": now, "tools": [{"name": "hangar-fleet"}],
                     "component": {"type": "container", "name": s.reference, "version": s.digest}},
        "components": components,
        "vulnerabilities": vulnerabilities,
    })
}

/// A stable UUID-shaped name from a digest (the BOM's serial number).
fn uuid_of(digest: &str) -> String {
    let hex: String = digest
        .trim_start_matches("sha256:")
        .chars()
        .take(32)
        .collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_name_parses_to_itself() {
        for name in Format::NAMES {
            assert!(Format::parse(name).is_some(), "{name}");
        }
        assert_eq!(Format::parse("xml"), None);
        assert_eq!(Format::CycloneDxJson.extension(), "cdx.json");
    }

    #[test]
    fn csv_cells_are_quoted_only_when_needed() {
        assert_eq!(csv_line(["a", "b,c", "d\"e"]), "a,\"b,c\",\"d\"\"e\"\n");
    }

    #[test]
    fn the_yaml_document_names_its_list_result() {
        let s = Scanned {
            reference: "docker.io/library/alpine:3".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            platform: Platform::default(),
            inventory: Inventory::default(),
            findings: Vec::new(),
        };
        let doc = document(std::slice::from_ref(&s), Format::Yaml, "now");
        assert_eq!(doc["result"][0]["reference"], "docker.io/library/alpine:3");
        let doc = document(&[s.clone(), s], Format::CycloneDxJson, "now");
        assert_eq!(doc["results"][0]["images"].as_array().unwrap().len(), 2);
        assert_eq!(
            doc["results"][0]["images"][0]["cyclonedx"]["serialNumber"],
            "urn:uuid:abababab-abab-4bab-8bab-abababababab"
        );
        let mut out = Vec::new();
        assert!(write(&mut out, &[], Format::Yaml, "now").is_err());
    }
}
