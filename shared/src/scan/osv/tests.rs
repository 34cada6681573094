//! Loading OSV databases within their limits.

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
        directory: 1 << 20,
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
        vec!["db.zip: huge.json: 4000 bytes, over the 1000 bytes limit for one record; skipped"]
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
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), r.as_bytes())).collect();
    let err = Database::from_zip_reader(std::io::Cursor::new(zip_of(&entries)), "db.zip", &small())
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
    let err = Database::from_reader(std::io::Cursor::new(doc), "db.json", &small()).unwrap_err();
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
    let db = Database::from_zip_reader(std::io::Cursor::new(zip_of(&entries)), "db.zip", &small())
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
        err.message
            .starts_with("empty-dir: no usable OSV records (no *.json record or */all.zip in it)"),
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

#[test]
fn a_zip_whose_central_directory_is_past_its_bound_is_refused_before_any_entry() {
    let names: Vec<String> = (0..100)
        .map(|i| format!("{i:03}-{}.txt", "x".repeat(100)))
        .collect();
    let mut entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let ok = record("OK-1");
    entries.push(("OK-1.json", ok.as_bytes()));
    let zip = zip_of(&entries);
    // About 15 KB of directory: 100 entries of 46 bytes and a 108-byte name each.
    let at = |directory: u64| {
        let limits = DbLimits {
            directory,
            ..small()
        };
        Database::from_reader(std::io::Cursor::new(zip.clone()), "db.zip", &limits)
    };
    let err = at(10_000).unwrap_err();
    assert_eq!(
        err.message,
        "db.zip: the zip's central directory is over 10000 bytes (a database of millions of \
         entries); refused"
    );
    let db = at(64 << 10).unwrap();
    assert_eq!(db.records.len(), 1);
}
