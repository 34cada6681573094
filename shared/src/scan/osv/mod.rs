//! OSV records (the subset matching needs), loaded from a directory (JSON records, osv.dev's
//! published layout of `<Ecosystem>/all.zip`, or both), a zip of records, or a JSON record or
//! array, found at a path, an http(s) URL, an S3 object or an OCI artifact in a registry.
//! A malformed record is a warning naming its file; the rest loads. What is read is bounded
//! by [`DbLimits`]: a record over its cap is a warning naming the database and entry, a
//! database over its total is refused. A record given twice (a record of two ecosystems is
//! in both of their zips; two databases overlap) is kept once, its newest `modified`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::{Warnings, size};
use crate::error::{Error, Result};

mod record;

pub use record::{Affected, Event, PackageId, Range, Record};

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
    /// The most of a zip read while its central directory is parsed: 64 MiB, about 900,000
    /// entries of osv.dev's names (its all-ecosystem export has some 500,000). The zip
    /// crate keeps a few hundred bytes for each entry before any is read, so within `file`
    /// alone 20 million tiny entries would be gigabytes.
    pub directory: u64,
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
            directory: 64 * MIB,
        }
    }
}

/// A reader that gives at most `left` bytes (`u64::MAX`: no bound), then fails.
struct DirectoryBudget<R> {
    inner: R,
    left: Arc<AtomicU64>,
}

impl<R: Read> Read for DirectoryBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left.load(Ordering::Relaxed);
        if left == 0 {
            return Err(std::io::Error::other("past the central directory's bound"));
        }
        let room = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..room])?;
        if left != u64::MAX {
            self.left.store(left - n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

impl<R: Seek> Seek for DirectoryBudget<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
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
        let left = Arc::new(AtomicU64::new(self.limits.directory));
        let reader = DirectoryBudget {
            inner: reader,
            left: left.clone(),
        };
        let mut zip = zip::ZipArchive::new(reader).map_err(|e| {
            if left.load(Ordering::Relaxed) == 0 {
                Error::invalid(format!(
                    "{label}: the zip's central directory is over {} (a database of millions \
                     of entries); refused",
                    size(self.limits.directory)
                ))
            } else {
                Error::invalid(format!("{label}: not a zip of OSV records: {e}"))
            }
        })?;
        // The directory is read; the entries are bounded one by one.
        left.store(u64::MAX, Ordering::Relaxed);
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
mod tests;
