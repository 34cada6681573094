//! rpm's database. The sqlite form (`rpmdb.sqlite`, RHEL 9, Fedora, SUSE): the `Packages`
//! table holds one rpm header blob per package, parsed here for name, epoch, version,
//! release, license and source rpm. The Berkeley DB form (`var/lib/rpm/Packages`, RHEL ≤ 8)
//! is reported as unsupported.
//!
//! The database is the image author's file, queried by sqlite: it is opened read-only and
//! defensively, only a real `Packages` table is read (a view could recurse without end),
//! with a row cap and a budget of virtual-machine steps and time enforced by sqlite's
//! progress handler.

use std::time::{Duration, Instant};

use rusqlite::OptionalExtension;
use rusqlite::config::DbConfig;

use super::{Cancel, Limits, Package, PkgKind, Sink};

pub const DATABASES: &[&str] = &[
    "var/lib/rpm/rpmdb.sqlite",
    "usr/lib/sysimage/rpm/rpmdb.sqlite",
    "var/lib/rpm/Packages",
];

const NAME: u32 = 1000;
const VERSION: u32 = 1001;
const RELEASE: u32 = 1002;
const EPOCH: u32 = 1003;
const LICENSE: u32 = 1014;
const SOURCERPM: u32 = 1044;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Tag → value of the string and int32 entries of one header blob (no lead magic, as
/// rpmdb.sqlite stores it).
fn header(blob: &[u8]) -> Option<Vec<(u32, String)>> {
    let il = be32(blob, 0)? as usize;
    let dl = be32(blob, 4)? as usize;
    let data_start = 8usize.checked_add(il.checked_mul(16)?)?;
    let data = blob.get(data_start..data_start.checked_add(dl)?)?;
    let mut out = Vec::new();
    for i in 0..il {
        let e = 8 + i * 16;
        let (tag, kind, offset) = (
            be32(blob, e)?,
            be32(blob, e + 4)?,
            be32(blob, e + 8)? as usize,
        );
        match kind {
            // STRING, STRING_ARRAY, I18NSTRING: the first NUL-terminated string.
            6 | 8 | 9 => {
                let rest = data.get(offset..)?;
                let end = rest.iter().position(|b| *b == 0)?;
                out.push((tag, String::from_utf8_lossy(&rest[..end]).into_owned()));
            }
            4 => out.push((tag, be32(data, offset)?.to_string())),
            _ => {}
        }
    }
    Some(out)
}

/// `name-version-release.src.rpm` → (name, version-release).
fn source_rpm(s: &str) -> Option<(String, String)> {
    let base = s
        .strip_suffix(".src.rpm")
        .or_else(|| s.strip_suffix(".nosrc.rpm"))?;
    let (rest, release) = base.rsplit_once('-')?;
    let (name, version) = rest.rsplit_once('-')?;
    Some((name.to_owned(), format!("{version}-{release}")))
}

pub fn parse(path: &str, body: &[u8]) -> (Vec<Package>, Vec<String>) {
    let mut sink = Sink::new(&Limits::default());
    read(
        path,
        "?",
        body,
        &Limits::default(),
        &Cancel::default(),
        &mut sink,
    );
    sink.into_lists()
}

/// Reads the packages of one rpm database found at `path` in `layer`, within `limits`;
/// what stops it early is a warning naming both.
pub(crate) fn read(
    path: &str,
    layer: &str,
    body: &[u8],
    limits: &Limits,
    cancel: &Cancel,
    sink: &mut Sink,
) {
    if !path.ends_with("rpmdb.sqlite") {
        sink.warn(format!(
            "{path}: unsupported rpm database (Berkeley DB); only rpmdb.sqlite is read"
        ));
        return;
    }
    if let Err(e) = read_sqlite(path, body, limits, cancel, sink) {
        sink.warn(format!(
            "{path} (layer {layer}): cannot read the rpm database: {e}; its packages are not listed"
        ));
    }
}

/// Why an rpm database was not (fully) read.
#[derive(Debug, thiserror::Error)]
enum RpmdbError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("`Packages` is {0}, not a table; an rpm database keeps its headers in a table")]
    NotATable(String),
    #[error("`Packages` has no plain `{0}` column (generated or with a default)")]
    Column(&'static str),
    #[error("the query took over its budget ({0:?}, or its virtual-machine steps) and was stopped")]
    OverBudget(Duration),
    #[error("scan abandoned (timed out)")]
    Cancelled,
}

/// SQLite virtual-machine steps between two calls of the progress handler.
const STEPS_PER_CHECK: i32 = 10_000;
/// The most steps one database may cost: reading 100,000 packages takes a few million.
const STEP_BUDGET: u64 = 2_000_000_000;

/// Stops the connection's queries once they have run `STEP_BUDGET` virtual-machine steps,
/// once `deadline` passes, or once `cancel` is set: sqlite runs on this blocking thread and
/// nothing else could stop it.
fn budget(
    db: &mut rusqlite::Connection,
    deadline: Instant,
    cancel: Cancel,
) -> rusqlite::Result<()> {
    let mut steps = 0u64;
    db.progress_handler(
        STEPS_PER_CHECK,
        Some(move || {
            steps += STEPS_PER_CHECK as u64;
            steps > STEP_BUDGET || cancel.is_cancelled() || Instant::now() >= deadline
        }),
    )
}

fn read_sqlite(
    path: &str,
    body: &[u8],
    limits: &Limits,
    cancel: &Cancel,
    sink: &mut Sink,
) -> Result<(), RpmdbError> {
    let started = Instant::now();
    let stopped = |e: rusqlite::Error| {
        if cancel.is_cancelled() {
            RpmdbError::Cancelled
        } else if started.elapsed() >= limits.rpm_time
            || e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
        {
            RpmdbError::OverBudget(limits.rpm_time)
        } else {
            RpmdbError::Sqlite(e)
        }
    };
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), body)?;
    // Read-only and without SQLITE_OPEN_URI: the name is a plain path, the file is never
    // written.
    let mut db = rusqlite::Connection::open_with_flags(
        file.path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    // The schema is the image author's: nothing in it runs with trust (defensive mode,
    // untrusted schema), views and triggers are off altogether.
    db.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    db.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    db.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)?;
    db.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    db.execute_batch("PRAGMA trusted_schema=OFF; PRAGMA query_only=ON;")?;
    budget(&mut db, started + limits.rpm_time, cancel.clone())?;
    // Only a real table (a b-tree of stored rows: rootpage > 0 rules out virtual tables)
    // is read; a view or anything else could compute without end.
    let kind: Option<(String, i64)> = db
        .query_row(
            "SELECT type, rootpage FROM main.sqlite_master WHERE name = 'Packages' COLLATE NOCASE",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(stopped)?;
    match kind {
        Some((t, root)) if t == "table" && root > 0 => {}
        Some((t, _)) if t == "table" => {
            return Err(RpmdbError::NotATable("a virtual table".into()));
        }
        Some((t, _)) => return Err(RpmdbError::NotATable(format!("a {t}"))),
        None => return Err(RpmdbError::NotATable("missing".into())),
    }
    // Generated columns and defaults are expressions evaluated on read; rpm's own columns
    // have neither.
    for column in ["hnum", "blob"] {
        let plain: bool = db
            .query_row(
                "SELECT count(*) FROM pragma_table_xinfo('Packages') \
                 WHERE name = ?1 COLLATE NOCASE AND hidden = 0 AND dflt_value IS NULL",
                [column],
                |r| r.get::<_, i64>(0),
            )
            .map_err(stopped)?
            == 1;
        if !plain {
            return Err(RpmdbError::Column(column));
        }
    }
    let mut stmt = db
        .prepare("SELECT hnum, blob FROM main.Packages")
        .map_err(stopped)?;
    let mut rows = stmt.query([]).map_err(stopped)?;
    let mut n = 0usize;
    while let Some(row) = rows.next().map_err(stopped)? {
        if cancel.is_cancelled() {
            return Err(RpmdbError::Cancelled);
        }
        if started.elapsed() >= limits.rpm_time {
            return Err(RpmdbError::OverBudget(limits.rpm_time));
        }
        n += 1;
        if n > limits.rpm_rows {
            sink.warn(format!(
                "{path}: more than {} rows in `Packages`; only the first {} are read",
                limits.rpm_rows, limits.rpm_rows
            ));
            break;
        }
        let hnum: i64 = row.get(0).map_err(stopped)?;
        let tags = match row.get_ref(1).map_err(stopped)? {
            rusqlite::types::ValueRef::Blob(b) => header(b),
            _ => None,
        };
        let Some(tags) = tags else {
            sink.warn(format!(
                "{path}: package {hnum}: malformed rpm header; skipped"
            ));
            continue;
        };
        let get = |t: u32| tags.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone());
        let (Some(name), Some(version), Some(release)) = (get(NAME), get(VERSION), get(RELEASE))
        else {
            sink.warn(format!(
                "{path}: package {hnum}: no name, version or release; skipped"
            ));
            continue;
        };
        // gpg-pubkey entries are keys, not software.
        if name == "gpg-pubkey" {
            continue;
        }
        let evr = match get(EPOCH).filter(|e| e != "0") {
            Some(e) => format!("{e}:{version}-{release}"),
            None => format!("{version}-{release}"),
        };
        let (source, source_version) = match get(SOURCERPM).as_deref().and_then(source_rpm) {
            Some((n, v)) => (Some(n), Some(v)),
            None => (None, None),
        };
        sink.package(Package {
            kind: PkgKind::Rpm,
            name,
            version: evr,
            source,
            source_version,
            license: get(LICENSE),
            path: path.to_owned(),
        });
        if sink.full() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod header_properties {
    use proptest::prelude::*;

    fn be(n: u32) -> [u8; 4] {
        n.to_be_bytes()
    }

    proptest! {
        /// Any bytes, and headers whose counts, kinds and offsets are arbitrary: parsed or
        /// refused, never a panic, and every string read lies inside the blob.
        #[test]
        fn rpm_headers_parse_or_are_refused(
            noise in proptest::collection::vec(any::<u8>(), 0..512),
            entries in proptest::collection::vec((any::<u32>(), 0u32..12, any::<u16>()), 0..8),
            data in proptest::collection::vec(any::<u8>(), 0..256),
            claimed in proptest::option::of(any::<u32>()),
        ) {
            let _ = super::header(&noise);
            let mut blob = Vec::new();
            blob.extend(be(claimed.unwrap_or(entries.len() as u32)));
            blob.extend(be(data.len() as u32));
            for (tag, kind, offset) in &entries {
                blob.extend(be(*tag));
                blob.extend(be(*kind));
                blob.extend(be(u32::from(*offset)));
                blob.extend(be(1));
            }
            blob.extend(&data);
            if let Some(tags) = super::header(&blob) {
                for (_, value) in tags {
                    prop_assert!(value.len() <= blob.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_rpm_names() {
        assert_eq!(
            source_rpm("openssl-3.0.7-27.el9.src.rpm"),
            Some(("openssl".into(), "3.0.7-27.el9".into()))
        );
        assert_eq!(source_rpm("junk"), None);
    }

    /// An rpm header blob with a name, version and release.
    fn blob(name: &str) -> Vec<u8> {
        let mut data = Vec::new();
        let mut index = Vec::new();
        for (tag, value) in [(NAME, name), (VERSION, "1"), (RELEASE, "1.el9")] {
            index.extend(tag.to_be_bytes());
            index.extend(6u32.to_be_bytes());
            index.extend((data.len() as u32).to_be_bytes());
            index.extend(1u32.to_be_bytes());
            data.extend(value.as_bytes());
            data.push(0);
        }
        let mut out = Vec::new();
        out.extend(3u32.to_be_bytes());
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(index);
        out.extend(data);
        out
    }

    /// An sqlite database made by `sql`, as bytes.
    fn database(sql: &str, blobs: &[Vec<u8>]) -> Vec<u8> {
        let file = tempfile::NamedTempFile::new().unwrap();
        let db = rusqlite::Connection::open(file.path()).unwrap();
        db.execute_batch(sql).unwrap();
        for b in blobs {
            db.execute("INSERT INTO Packages (blob) VALUES (?1)", [b])
                .unwrap();
        }
        drop(db);
        std::fs::read(file.path()).unwrap()
    }

    const RPM_SCHEMA: &str =
        "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL);";

    fn run(body: &[u8], limits: &Limits, cancel: &Cancel) -> (Vec<Package>, Vec<String>) {
        let mut sink = Sink::new(limits);
        read(DATABASES[0], "sha256:l1", body, limits, cancel, &mut sink);
        sink.into_lists()
    }

    #[test]
    fn reads_a_real_packages_table() {
        let body = database(RPM_SCHEMA, &[blob("bash"), blob("openssl")]);
        let (p, w) = run(&body, &Limits::default(), &Cancel::default());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].version, "1-1.el9");
    }

    #[test]
    fn a_recursive_view_is_refused_before_it_runs() {
        let body = database(
            "CREATE VIEW Packages AS WITH RECURSIVE r(hnum, blob) AS \
             (SELECT 1, x'00' UNION ALL SELECT hnum + 1, blob || blob FROM r) \
             SELECT hnum, blob FROM r;",
            &[],
        );
        let started = Instant::now();
        let (p, w) = run(&body, &Limits::default(), &Cancel::default());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(p.is_empty());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("var/lib/rpm/rpmdb.sqlite (layer sha256:l1): cannot read the rpm database: `Packages` is a view, not a table"),
            "{w:?}"
        );
    }

    #[test]
    fn generated_or_defaulted_columns_are_refused() {
        let body = database(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, \
             blob BLOB GENERATED ALWAYS AS (zeroblob(1000000)) VIRTUAL);",
            &[],
        );
        let (_, w) = run(&body, &Limits::default(), &Cancel::default());
        assert!(w[0].contains("no plain `blob` column"), "{w:?}");
        let body = database(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB DEFAULT (zeroblob(1000000)));",
            &[],
        );
        let (_, w) = run(&body, &Limits::default(), &Cancel::default());
        assert!(w[0].contains("no plain `blob` column"), "{w:?}");
    }

    #[test]
    fn rows_past_the_cap_are_not_read() {
        let blobs: Vec<Vec<u8>> = (0..5).map(|i| blob(&format!("p{i}"))).collect();
        let body = database(RPM_SCHEMA, &blobs);
        let limits = Limits {
            rpm_rows: 2,
            ..Limits::default()
        };
        let (p, w) = run(&body, &limits, &Cancel::default());
        assert_eq!(p.len(), 2);
        assert_eq!(
            w,
            vec![
                "var/lib/rpm/rpmdb.sqlite: more than 2 rows in `Packages`; only the first 2 are read"
            ]
        );
    }

    #[test]
    fn a_cancelled_or_over_budget_read_stops_with_a_reason() {
        let body = database(RPM_SCHEMA, &[blob("bash")]);
        let cancel = Cancel::default();
        cancel.cancel();
        let (p, w) = run(&body, &Limits::default(), &cancel);
        assert!(p.is_empty());
        assert!(w[0].ends_with("cannot read the rpm database: scan abandoned (timed out); its packages are not listed"), "{w:?}");
        let limits = Limits {
            rpm_time: Duration::ZERO,
            ..Limits::default()
        };
        let (p, w) = run(&body, &limits, &Cancel::default());
        assert!(p.is_empty());
        assert!(w[0].contains("over its budget (0ns"), "{w:?}");
    }

    #[test]
    fn the_budget_interrupts_a_query_that_runs_on() {
        let mut db = rusqlite::Connection::open_in_memory().unwrap();
        let started = Instant::now();
        budget(
            &mut db,
            started + Duration::from_millis(200),
            Cancel::default(),
        )
        .unwrap();
        // Counts forever in constant memory: only the interrupt ends it.
        let r = db.query_row(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            [],
            |r| r.get::<_, i64>(0),
        );
        assert_eq!(
            r.unwrap_err().sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn not_a_database_is_a_warning() {
        let (p, w) = run(b"not sqlite at all", &Limits::default(), &Cancel::default());
        assert!(p.is_empty());
        assert!(w[0].contains("cannot read the rpm database"), "{w:?}");
    }

    #[test]
    fn malformed_headers_are_refused_not_panicked_on() {
        assert!(header(&[0, 0, 0, 9, 0, 0, 0, 1]).is_none());
        assert!(header(&[]).is_none());
    }
}
