//! An OSV record: the subset of the schema matching needs.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Required by the OSV schema: what is not dated is not an OSV record.
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
