//! OSV records (the subset matching needs), loaded from a directory of JSON files or a
//! zip of them (osv.dev's per-ecosystem `all.zip`), found at a path, an http(s) URL, an S3
//! object or an OCI artifact in a registry. A malformed record is a warning naming its file;
//! the rest loads.

use std::collections::HashMap;
use std::io::Read;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub modified: String,
    #[serde(default)]
    pub withdrawn: Option<String>,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub details: String,
    #[serde(default)]
    pub affected: Vec<Affected>,
    #[serde(default)]
    pub database_specific: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Affected {
    pub package: Option<PackageId>,
    #[serde(default)]
    pub ranges: Vec<Range>,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub ecosystem_specific: Option<Value>,
    #[serde(default)]
    pub database_specific: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PackageId {
    pub ecosystem: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Range {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Event {
    pub introduced: Option<String>,
    pub fixed: Option<String>,
    pub last_affected: Option<String>,
    pub limit: Option<String>,
}

impl Record {
    /// The severity a record states: `database_specific.severity` of the record or of the
    /// affected entry (GHSA, many distros), or Debian's `urgency`; else UNKNOWN.
    pub fn severity(&self, affected: &Affected) -> String {
        let from = |v: &Option<Value>, key: &str| {
            v.as_ref()
                .and_then(|v| v.get(key))
                .and_then(Value::as_str)
                .map(str::to_ascii_uppercase)
        };
        let raw = from(&affected.ecosystem_specific, "severity")
            .or_else(|| from(&affected.database_specific, "severity"))
            .or_else(|| from(&self.database_specific, "severity"))
            .or_else(|| from(&affected.ecosystem_specific, "urgency"));
        match raw.as_deref() {
            Some("CRITICAL") => "CRITICAL",
            Some("HIGH" | "IMPORTANT") => "HIGH",
            Some("MEDIUM" | "MODERATE") => "MEDIUM",
            Some("LOW" | "NEGLIGIBLE" | "UNIMPORTANT") => "LOW",
            _ => "UNKNOWN",
        }
        .to_owned()
    }

    pub fn title(&self) -> String {
        if !self.summary.is_empty() {
            return self.summary.clone();
        }
        self.details.lines().next().unwrap_or_default().to_owned()
    }
}

/// Records by (ecosystem, package name).
#[derive(Debug, Default)]
pub struct Database {
    pub records: Vec<Record>,
    pub by_package: HashMap<(String, String), Vec<(usize, usize)>>,
    /// The newest `modified` time among the records (RFC 3339), the database's age.
    pub newest: Option<chrono::DateTime<chrono::Utc>>,
    pub warnings: Vec<String>,
}

impl Database {
    fn add(&mut self, origin: &str, bytes: &[u8]) {
        let record: Record = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.warnings
                    .push(format!("{origin}: not an OSV record, skipped: {e}"));
                return;
            }
        };
        if record.withdrawn.is_some() {
            return;
        }
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&record.modified) {
            let t = t.with_timezone(&chrono::Utc);
            self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        }
        let at = self.records.len();
        for (i, a) in record.affected.iter().enumerate() {
            if let Some(p) = &a.package {
                self.by_package
                    .entry((p.ecosystem.clone(), p.name.clone()))
                    .or_default()
                    .push((at, i));
            }
        }
        self.records.push(record);
    }

    /// Every `*.json` of a directory, recursively.
    pub fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let mut db = Database::default();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d)
                .map_err(|e| Error::invalid(format!("{}: {e}", d.display())))?;
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "json") {
                    match std::fs::read(&p) {
                        Ok(b) => db.add(&p.display().to_string(), &b),
                        Err(err) => db.warnings.push(format!("{}: {err}", p.display())),
                    }
                }
            }
        }
        Ok(db)
    }

    /// Every `*.json` entry of a zip (deflated or stored), e.g. osv.dev's `all.zip`.
    pub fn from_zip(bytes: &[u8], label: &str) -> Result<Self> {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| Error::invalid(format!("{label}: not a zip of OSV records: {e}")))?;
        let mut db = Database::default();
        for i in 0..zip.len() {
            let mut f = match zip.by_index(i) {
                Ok(f) => f,
                Err(e) => {
                    db.warnings.push(format!("{label}: entry {i}: {e}"));
                    continue;
                }
            };
            let name = match f.name() {
                Ok(n) => n.into_owned(),
                Err(e) => {
                    db.warnings.push(format!("{label}: entry {i}: {e}"));
                    continue;
                }
            };
            if !name.ends_with(".json") {
                continue;
            }
            let mut body = Vec::new();
            if let Err(e) = f.read_to_end(&mut body) {
                db.warnings.push(format!("{label}: {name}: {e}"));
                continue;
            }
            db.add(&format!("{label}: {name}"), &body);
        }
        Ok(db)
    }

    /// A zip, or one JSON record or a JSON array of records.
    pub fn from_bytes(bytes: &[u8], label: &str) -> Result<Self> {
        if bytes.starts_with(b"PK") {
            return Self::from_zip(bytes, label);
        }
        let mut db = Database::default();
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    db.add(&format!("{label}[{i}]"), item.to_string().as_bytes());
                }
            }
            Ok(_) => db.add(label, bytes),
            Err(e) => {
                return Err(Error::invalid(format!(
                    "{label}: neither a zip nor JSON: {e}"
                )));
            }
        }
        Ok(db)
    }

    pub fn candidates(
        &self,
        ecosystem: &str,
        name: &str,
    ) -> impl Iterator<Item = (&Record, &Affected)> {
        self.by_package
            .get(&(ecosystem.to_owned(), name.to_owned()))
            .into_iter()
            .flatten()
            .map(|(r, a)| (&self.records[*r], &self.records[*r].affected[*a]))
    }
}
