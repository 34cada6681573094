//! OSV records (the subset matching needs), loaded from a directory of JSON files or a
//! zip of them (osv.dev's per-ecosystem `all.zip`), found at a path, an http(s) URL, an S3
//! object or an OCI artifact in a registry. A malformed record is a warning naming its file;
//! the rest loads. What is read is bounded by [`DbLimits`]: a record over its cap is a
//! warning naming the database and entry, a database over its total is refused.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use serde::Deserialize;
use serde_json::Value;

use super::{Warnings, size};
use crate::error::{Error, Result};

/// Fills as much of `buf` as the reader has (a short file is not an error here).
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

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

/// What loading a database may read. A database comes from outside (a download, an
/// artifact, a file someone carried in), so a small zip must not unpack into gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbLimits {
    /// One record, uncompressed: a file of a directory or an entry of a zip, 16 MiB (real
    /// records are a few KiB; the largest, Linux kernel ones, about 1 MiB). Checked against
    /// a zip entry's declared size and again while it is read.
    pub record: u64,
    /// All records together, uncompressed: 4 GiB (osv.dev's all-ecosystem export is under
    /// a quarter of that; one ecosystem's is tens of MiB).
    pub total: u64,
    /// A database file as downloaded or read, before unpacking: 2 GiB. It is streamed to a
    /// temporary file and a zip is read from there entry by entry, so this bounds disk and
    /// the zip's directory, not memory.
    pub file: u64,
    /// A bare JSON document (one record or an array of them) is parsed whole: 64 MiB;
    /// larger databases come as a zip or a directory.
    pub document: u64,
    /// Warnings kept; beyond them one line counts the rest: 100.
    pub warnings: usize,
}

impl Default for DbLimits {
    fn default() -> Self {
        const MIB: u64 = 1 << 20;
        DbLimits {
            record: 16 * MIB,
            total: 4 << 30,
            file: 2 << 30,
            document: 64 * MIB,
            warnings: 100,
        }
    }
}

/// A database being loaded: its records, its warnings (capped) and what was read so far.
struct Loader {
    db: Database,
    warnings: Warnings,
    total: u64,
    limits: DbLimits,
}

impl Loader {
    fn new(limits: &DbLimits) -> Self {
        Loader {
            db: Database::default(),
            warnings: Warnings::new(limits.warnings),
            total: 0,
            limits: *limits,
        }
    }

    /// Counts `n` more bytes of records against the total, naming where it ran out.
    fn count(&mut self, n: u64, label: &str, entry: &str) -> Result<()> {
        self.total = self.total.saturating_add(n);
        if self.total > self.limits.total {
            return Err(Error::invalid(format!(
                "{label}: more than {} of records uncompressed (reached at {entry}); refused",
                size(self.limits.total)
            )));
        }
        Ok(())
    }

    /// Reads one record of `declared` bytes from `reader`, skipping it (with a warning) when
    /// it is over the per-record cap, by its own word or in fact.
    fn record<R: Read>(
        &mut self,
        reader: R,
        declared: u64,
        label: &str,
        entry: &str,
    ) -> Result<()> {
        let cap = self.limits.record;
        if declared > cap {
            self.warnings.push(format!(
                "{label}: {entry}: {declared} bytes, over the {} limit for one record; skipped",
                size(cap)
            ));
            return Ok(());
        }
        self.count(declared, label, entry)?;
        let mut body = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        if let Err(e) = reader.take(cap + 1).read_to_end(&mut body) {
            self.warnings
                .push(format!("{label}: {entry}: {e}; skipped"));
            return Ok(());
        }
        let read = body.len() as u64;
        if read > cap {
            self.warnings.push(format!(
                "{label}: {entry}: more than the {} limit for one record (it declared {declared} bytes); skipped",
                size(cap)
            ));
            return Ok(());
        }
        // What was read beyond what was declared counts too.
        self.count(read.saturating_sub(declared), label, entry)?;
        self.add(&format!("{label}: {entry}"), &body);
        Ok(())
    }

    fn add(&mut self, origin: &str, bytes: &[u8]) {
        match serde_json::from_slice::<Record>(bytes) {
            Ok(r) => self.db.add(r),
            Err(e) => self
                .warnings
                .push(format!("{origin}: not an OSV record, skipped: {e}")),
        }
    }

    fn finish(mut self) -> Database {
        self.db.warnings = self.warnings.into_vec();
        self.db
    }
}

impl Database {
    fn add(&mut self, record: Record) {
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

    /// Every `*.json` of a directory, recursively, within the default limits.
    pub fn from_dir(dir: &std::path::Path) -> Result<Self> {
        Self::from_dir_with(dir, &DbLimits::default())
    }

    /// Every `*.json` of a directory, recursively; each file at most `limits.record`, all
    /// of them at most `limits.total`. A directory reached twice (a symlink loop) is read
    /// once.
    pub fn from_dir_with(dir: &std::path::Path, limits: &DbLimits) -> Result<Self> {
        let mut l = Loader::new(limits);
        let label = dir.display().to_string();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            if let Ok(real) = std::fs::canonicalize(&d)
                && !seen.insert(real)
            {
                continue;
            }
            let entries = std::fs::read_dir(&d)
                .map_err(|e| Error::invalid(format!("{}: {e}", d.display())))?;
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "json") {
                    let name = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                    match std::fs::File::open(&p).and_then(|f| Ok((f.metadata()?.len(), f))) {
                        Ok((len, f)) => l.record(f, len, &label, &name)?,
                        Err(err) => l.warnings.push(format!("{name}: {err}")),
                    }
                }
            }
        }
        Ok(l.finish())
    }

    /// Every `*.json` entry of a zip (deflated or stored), e.g. osv.dev's `all.zip`, within
    /// the default limits.
    pub fn from_zip(bytes: &[u8], label: &str) -> Result<Self> {
        Self::from_zip_reader(std::io::Cursor::new(bytes), label, &DbLimits::default())
    }

    /// Every `*.json` entry of a zip read from `reader`: each at most `limits.record` (by
    /// the size its header declares and by what it actually inflates to), all at most
    /// `limits.total`.
    pub fn from_zip_reader<R: Read + Seek>(
        reader: R,
        label: &str,
        limits: &DbLimits,
    ) -> Result<Self> {
        let mut zip = zip::ZipArchive::new(reader)
            .map_err(|e| Error::invalid(format!("{label}: not a zip of OSV records: {e}")))?;
        let mut l = Loader::new(limits);
        for i in 0..zip.len() {
            let f = match zip.by_index(i) {
                Ok(f) => f,
                Err(e) => {
                    l.warnings.push(format!("{label}: entry {i}: {e}"));
                    continue;
                }
            };
            let name = match f.name() {
                Ok(n) => n.into_owned(),
                Err(e) => {
                    l.warnings.push(format!("{label}: entry {i}: {e}"));
                    continue;
                }
            };
            if !name.ends_with(".json") {
                continue;
            }
            let declared = f.size();
            l.record(f, declared, label, &name)?;
        }
        Ok(l.finish())
    }

    /// A zip, or one JSON record or a JSON array of records, within the default limits.
    pub fn from_bytes(bytes: &[u8], label: &str) -> Result<Self> {
        Self::from_reader(std::io::Cursor::new(bytes), label, &DbLimits::default())
    }

    /// A zip (read entry by entry), or one JSON record or a JSON array of records (at most
    /// `limits.document`), from a file or anything seekable.
    pub fn from_reader<R: Read + Seek>(
        mut reader: R,
        label: &str,
        limits: &DbLimits,
    ) -> Result<Self> {
        let io = |e: std::io::Error| Error::invalid(format!("{label}: {e}"));
        let mut magic = [0u8; 2];
        let n = read_up_to(&mut reader, &mut magic).map_err(io)?;
        reader.seek(SeekFrom::Start(0)).map_err(io)?;
        if magic[..n] == *b"PK" {
            return Self::from_zip_reader(reader, label, limits);
        }
        let mut bytes = Vec::new();
        reader
            .take(limits.document + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > limits.document {
            return Err(Error::invalid(format!(
                "{label}: a JSON document over {}; a database that large comes as a zip or a directory of records",
                size(limits.document)
            )));
        }
        let mut l = Loader::new(limits);
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Array(items)) => {
                drop(bytes);
                for (i, item) in items.into_iter().enumerate() {
                    match serde_json::from_value::<Record>(item) {
                        Ok(r) => l.db.add(r),
                        Err(e) => l
                            .warnings
                            .push(format!("{label}[{i}]: not an OSV record, skipped: {e}")),
                    }
                }
            }
            Ok(_) => l.add(label, &bytes),
            Err(e) => {
                return Err(Error::invalid(format!(
                    "{label}: neither a zip nor JSON: {e}"
                )));
            }
        }
        Ok(l.finish())
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn record(id: &str) -> String {
        format!(r#"{{"id":"{id}","modified":"2024-01-01T00:00:00Z","affected":[]}}"#)
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in entries {
            z.start_file(*name, opts).unwrap();
            z.write_all(body).unwrap();
        }
        z.finish().unwrap().into_inner()
    }

    fn small() -> DbLimits {
        DbLimits {
            record: 1000,
            total: 5000,
            file: 1 << 20,
            document: 2000,
            warnings: 3,
        }
    }

    #[test]
    fn a_zip_entry_over_its_cap_is_skipped_by_name() {
        let big = vec![b' '; 4000];
        let ok = record("OK-1");
        let zip = zip_of(&[("huge.json", &big), ("OK-1.json", ok.as_bytes())]);
        let db = Database::from_zip_reader(std::io::Cursor::new(zip), "db.zip", &small()).unwrap();
        assert_eq!(db.records.len(), 1);
        assert_eq!(
            db.warnings,
            vec![
                "db.zip: huge.json: 4000 bytes, over the 1000 bytes limit for one record; skipped"
            ]
        );
    }

    #[test]
    fn a_record_longer_than_it_declared_is_cut_off_and_skipped() {
        let mut l = Loader::new(&small());
        l.record(std::io::repeat(b' ').take(1 << 20), 10, "db", "liar.json")
            .unwrap();
        let db = l.finish();
        assert!(db.records.is_empty());
        assert_eq!(
            db.warnings,
            vec![
                "db: liar.json: more than the 1000 bytes limit for one record (it declared 10 bytes); skipped"
            ]
        );
    }

    #[test]
    fn a_database_over_its_total_is_refused_naming_the_entry() {
        let r = format!("{}{}", record("X"), " ".repeat(900));
        let names: Vec<String> = (0..8).map(|i| format!("r{i}.json")).collect();
        let entries: Vec<(&str, &[u8])> =
            names.iter().map(|n| (n.as_str(), r.as_bytes())).collect();
        let err =
            Database::from_zip_reader(std::io::Cursor::new(zip_of(&entries)), "db.zip", &small())
                .unwrap_err();
        assert!(
            err.message.starts_with(
                "db.zip: more than 5000 bytes of records uncompressed (reached at r5.json)"
            ),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_large_bare_json_document_is_refused() {
        let doc = format!("[{}]", vec![record("A"); 40].join(","));
        let err =
            Database::from_reader(std::io::Cursor::new(doc), "db.json", &small()).unwrap_err();
        assert!(
            err.message.contains("a JSON document over 2000 bytes"),
            "{}",
            err.message
        );
    }

    #[test]
    fn warnings_are_capped() {
        let names: Vec<String> = (0..10).map(|i| format!("bad{i}.json")).collect();
        let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"{"[..])).collect();
        let db =
            Database::from_zip_reader(std::io::Cursor::new(zip_of(&entries)), "db.zip", &small())
                .unwrap();
        assert_eq!(db.warnings.len(), 4);
        assert_eq!(
            db.warnings[3],
            "7 more warnings (only the first 3 are shown)"
        );
    }

    #[test]
    fn directories_are_capped_per_file_and_survive_symlink_loops() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), record("A")).unwrap();
        std::fs::write(dir.path().join("big.json"), vec![b' '; 4000]).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        let db = Database::from_dir_with(dir.path(), &small()).unwrap();
        assert_eq!(db.records.len(), 1);
        assert_eq!(db.warnings.len(), 1, "{:?}", db.warnings);
        assert!(db.warnings[0].contains("big.json: 4000 bytes, over the 1000 bytes limit"));
    }
}
