//! OSV records (the subset matching needs), loaded from a directory (JSON records, osv.dev's
//! published layout of `<Ecosystem>/all.zip`, or both), a zip of records, or a JSON record or
//! array, found at a path, an http(s) URL, an S3 object or an OCI artifact in a registry.
//! A malformed record is a warning naming its file; the rest loads. What is read is bounded
//! by [`DbLimits`]: a record over its cap is a warning naming the database and entry, a
//! database over its total is refused. A record given twice (a record of two ecosystems is
//! in both of their zips; two databases overlap) is kept once, its newest `modified`.

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

/// Records by (ecosystem, package name).
#[derive(Debug, Default)]
pub struct Database {
    pub records: Vec<Record>,
    pub by_package: HashMap<(String, String), Vec<(usize, usize)>>,
    /// The newest `modified` time among the records (RFC 3339), withdrawn ones included:
    /// the database's age, as osv.dev dates its records.
    pub newest: Option<chrono::DateTime<chrono::Utc>>,
    pub warnings: Vec<String>,
    /// Withdrawn records read (dated, never matched).
    pub withdrawn: usize,
    /// Entries read as candidate records: files, zip entries, array items.
    pub entries: usize,
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
        self.db.entries += 1;
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

    /// Every `*.json` entry of a zip read from `reader`, named `label: entry`. A file that
    /// is not a zip is an error naming it: a truncated download must not pass for a
    /// database with fewer records.
    fn zip<R: Read + Seek>(&mut self, reader: R, label: &str) -> Result<()> {
        let mut zip = zip::ZipArchive::new(reader)
            .map_err(|e| Error::invalid(format!("{label}: not a zip of OSV records: {e}")))?;
        for i in 0..zip.len() {
            let f = match zip.by_index(i) {
                Ok(f) => f,
                Err(e) => {
                    self.warnings.push(format!("{label}: entry {i}: {e}"));
                    continue;
                }
            };
            let name = match f.name() {
                Ok(n) => n.into_owned(),
                Err(e) => {
                    self.warnings.push(format!("{label}: entry {i}: {e}"));
                    continue;
                }
            };
            if !name.ends_with(".json") {
                continue;
            }
            let declared = f.size();
            self.record(f, declared, label, &name)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Database {
        self.db.warnings = self.warnings.into_vec();
        self.db.index();
        self.db
    }
}

/// A record's `modified` as a time: RFC 3339, or (leniently) without its zone, as UTC.
fn modified(r: &Record) -> Option<chrono::DateTime<chrono::Utc>> {
    let m = r.modified.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(m) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDateTime::parse_from_str(m, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

impl Database {
    /// Takes a record in; [`Database::index`] de-duplicates and indexes them.
    fn add(&mut self, record: Record) {
        if let Some(t) = modified(&record) {
            self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        }
        if record.withdrawn.is_some() {
            self.withdrawn += 1;
            return;
        }
        self.records.push(record);
    }

    /// Keeps one record per id (the newest `modified`; the first read on a tie) and indexes
    /// them by (ecosystem, package).
    fn index(&mut self) {
        let mut keep: HashMap<&str, usize> = HashMap::new();
        for (i, r) in self.records.iter().enumerate() {
            match keep.get(r.id.as_str()) {
                Some(&k) if modified(r) <= modified(&self.records[k]) => {}
                _ => {
                    keep.insert(&r.id, i);
                }
            }
        }
        let kept: std::collections::HashSet<usize> = keep.into_values().collect();
        let mut i = 0;
        self.records.retain(|_| {
            i += 1;
            kept.contains(&(i - 1))
        });
        self.by_package.clear();
        for (at, record) in self.records.iter().enumerate() {
            for (i, a) in record.affected.iter().enumerate() {
                if let Some(p) = &a.package {
                    self.by_package
                        .entry((p.ecosystem.clone(), p.name.clone()))
                        .or_default()
                        .push((at, i));
                }
            }
        }
    }

    /// Adds another database's records (`--db` given more than once): one record per id,
    /// the newest; the newest `modified` of both; the warnings of both.
    pub fn merge(&mut self, other: Database) {
        self.records.extend(other.records);
        self.warnings.extend(other.warnings);
        self.newest = self.newest.max(other.newest);
        self.withdrawn += other.withdrawn;
        self.entries += other.entries;
        self.index();
    }

    /// A database with no record to match is an error naming it, never an empty report.
    pub fn check_usable(&self, label: &str) -> Result<()> {
        if !self.records.is_empty() {
            return Ok(());
        }
        let read = match (self.entries, self.withdrawn) {
            (0, _) => "no *.json record or */all.zip in it".to_owned(),
            (n, 0) => format!("{n} entries read, none an OSV record"),
            (n, w) => format!("{n} entries read, {w} withdrawn, none other an OSV record"),
        };
        Err(Error::invalid(format!(
            "{label}: no usable OSV records ({read}); a database is a directory of OSV JSON \
             records and/or osv.dev's <Ecosystem>/all.zip, such a zip, or a JSON record or array"
        )))
    }

    /// A directory's records, recursively, within the default limits: see
    /// [`Database::from_dir_with`].
    pub fn from_dir(dir: &std::path::Path) -> Result<Self> {
        Self::from_dir_with(dir, &DbLimits::default())
    }

    /// A directory's records, recursively: every `*.json` file, and every `*.zip` of them
    /// (osv.dev publishes `<Ecosystem>/all.zip`; the two layouts may be mixed). Each record
    /// at most `limits.record`, each zip at most `limits.file`, all records together at most
    /// `limits.total`. Read in name order; a directory reached twice (a symlink loop) is read
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
            let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&d)
                .map_err(|e| Error::invalid(format!("{}: {e}", d.display())))?
                .flatten()
                .map(|e| e.path())
                .collect();
            paths.sort();
            // Popped last first: subdirectories in name order too.
            for p in paths.iter().rev().filter(|p| p.is_dir()) {
                stack.push(p.clone());
            }
            for p in paths.iter().filter(|p| !p.is_dir()) {
                let name = p.strip_prefix(dir).unwrap_or(p).display().to_string();
                let open = || std::fs::File::open(p).and_then(|f| Ok((f.metadata()?.len(), f)));
                match p.extension().and_then(|x| x.to_str()) {
                    Some("json") => match open() {
                        Ok((len, f)) => l.record(f, len, &label, &name)?,
                        Err(err) => l.warnings.push(format!("{label}: {name}: {err}")),
                    },
                    Some("zip") => {
                        let zip_label = format!("{label}/{name}");
                        let (len, f) =
                            open().map_err(|e| Error::invalid(format!("{zip_label}: {e}")))?;
                        if len > limits.file {
                            return Err(Error::invalid(format!(
                                "{zip_label}: {len} bytes, over the {} limit for a database file; refused",
                                size(limits.file)
                            )));
                        }
                        l.zip(std::io::BufReader::new(f), &zip_label)?;
                    }
                    _ => {}
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
        let mut l = Loader::new(limits);
        l.zip(reader, label)?;
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
                    l.db.entries += 1;
                    match serde_json::from_value::<Record>(item) {
                        Ok(r) => l.db.add(r),
                        Err(e) => l
                            .warnings
                            .push(format!("{label}[{i}]: not an OSV record, skipped: {e}")),
                    }
                }
            }
            Ok(_) => {
                l.db.entries += 1;
                l.add(label, &bytes);
            }
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

    fn dated(id: &str, eco: &str, name: &str, modified: &str) -> String {
        format!(
            r#"{{"id":"{id}","modified":"{modified}","affected":[{{"package":{{"ecosystem":"{eco}","name":"{name}"}}}}]}}"#
        )
    }

    #[test]
    fn osv_dev_layout_zips_per_ecosystem_mixed_with_json() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dated("DEBIAN-1", "Debian:12", "openssl", "2025-01-02T00:00:00Z");
        let alp = dated(
            "ALPINE-1",
            "Alpine:v3.20",
            "musl",
            "2025-01-03T00:00:00.123456Z",
        );
        let py = dated("PYSEC-1", "PyPI", "requests", "2025-01-01T00:00:00Z");
        for (eco, body) in [("Debian", &deb), ("Alpine", &alp)] {
            std::fs::create_dir(dir.path().join(eco)).unwrap();
            std::fs::write(
                dir.path().join(eco).join("all.zip"),
                zip_of(&[("X.json", body.as_bytes()), ("README", b"not a record")]),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("PYSEC-1.json"), &py).unwrap();
        std::fs::write(dir.path().join("ecosystems.txt"), "Debian\nAlpine\n").unwrap();
        let db = Database::from_dir(dir.path()).unwrap();
        let mut ids: Vec<&str> = db.records.iter().map(|r| r.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["ALPINE-1", "DEBIAN-1", "PYSEC-1"]);
        assert_eq!(db.candidates("Alpine:v3.20", "musl").count(), 1);
        assert_eq!(
            db.newest.unwrap().to_rfc3339(),
            "2025-01-03T00:00:00.123456+00:00"
        );
        assert!(db.warnings.is_empty(), "{:?}", db.warnings);
        db.check_usable("db").unwrap();

        // A damaged zip is an error naming it, not fewer records.
        std::fs::write(dir.path().join("Debian").join("all.zip"), b"PK\x03\x04oops").unwrap();
        let err = Database::from_dir(dir.path()).unwrap_err();
        assert!(
            err.message
                .contains("Debian/all.zip: not a zip of OSV records"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_zip_in_a_directory_over_the_file_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let body = record("A");
        let zip = zip_of(&[("A.json", body.as_bytes())]);
        std::fs::write(dir.path().join("all.zip"), &zip).unwrap();
        let limits = DbLimits {
            file: zip.len() as u64 - 1,
            ..small()
        };
        let err = Database::from_dir_with(dir.path(), &limits).unwrap_err();
        assert!(err.message.contains("all.zip: "), "{}", err.message);
        assert!(
            err.message.contains("limit for a database file"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_record_given_twice_is_kept_once_at_its_newest() {
        let old = dated("X-1", "PyPI", "old-name", "2024-01-01T00:00:00Z");
        let new = dated("X-1", "PyPI", "new-name", "2024-06-01T00:00:00Z");
        let db = Database::from_bytes(format!("[{new},{old}]").as_bytes(), "db").unwrap();
        assert_eq!(db.records.len(), 1);
        assert_eq!(db.candidates("PyPI", "new-name").count(), 1);
        assert_eq!(db.candidates("PyPI", "old-name").count(), 0);

        let mut a = Database::from_bytes(old.as_bytes(), "a").unwrap();
        let b = Database::from_bytes(
            format!(
                "[{new},{}]",
                dated("Y-1", "npm", "y", "2023-01-01T00:00:00Z")
            )
            .as_bytes(),
            "b",
        )
        .unwrap();
        a.merge(b);
        assert_eq!(a.records.len(), 2);
        assert_eq!(a.candidates("PyPI", "new-name").count(), 1);
        assert_eq!(a.candidates("PyPI", "old-name").count(), 0);
        assert_eq!(a.candidates("npm", "y").count(), 1);
        assert_eq!(a.newest.unwrap().to_rfc3339(), "2024-06-01T00:00:00+00:00");
    }

    #[test]
    fn withdrawn_records_date_the_database_but_never_match() {
        let live = dated("A-1", "PyPI", "a", "2024-01-01T00:00:00Z");
        let gone = dated("B-1", "PyPI", "b", "2024-03-01T00:00:00Z").replace(
            r#""modified""#,
            r#""withdrawn":"2024-03-01T00:00:00Z","modified""#,
        );
        let db = Database::from_bytes(format!("[{live},{gone}]").as_bytes(), "db").unwrap();
        assert_eq!(db.records.len(), 1);
        assert_eq!(db.withdrawn, 1);
        assert_eq!(db.newest.unwrap().to_rfc3339(), "2024-03-01T00:00:00+00:00");
        let only = Database::from_bytes(gone.as_bytes(), "gone.json").unwrap();
        assert!(only.check_usable("gone.json").is_err());
    }

    #[test]
    fn a_database_without_records_is_an_error_naming_it() {
        let empty = tempfile::tempdir().unwrap();
        let err = Database::from_dir(empty.path())
            .unwrap()
            .check_usable("empty-dir")
            .unwrap_err();
        assert!(
            err.message.starts_with(
                "empty-dir: no usable OSV records (no *.json record or */all.zip in it)"
            ),
            "{}",
            err.message
        );
        let zip = zip_of(&[("README.txt", b"hello")]);
        let err = Database::from_bytes(&zip, "none.zip")
            .unwrap()
            .check_usable("none.zip")
            .unwrap_err();
        assert!(
            err.message.starts_with("none.zip: no usable"),
            "{}",
            err.message
        );
        let other = tempfile::tempdir().unwrap();
        std::fs::write(
            other.path().join("package.json"),
            r#"{"name":"x","version":"1"}"#,
        )
        .unwrap();
        std::fs::write(other.path().join("undated.json"), r#"{"id":"X-1"}"#).unwrap();
        let db = Database::from_dir(other.path()).unwrap();
        assert_eq!(db.warnings.len(), 2, "{:?}", db.warnings);
        let err = db.check_usable("other").unwrap_err();
        assert!(
            err.message
                .starts_with("other: no usable OSV records (2 entries read, none an OSV record)"),
            "{}",
            err.message
        );
    }
}
