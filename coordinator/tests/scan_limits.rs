//! `scan` against hostile inputs built here: an rpm database whose `Packages` is a
//! recursive view, a small layer that inflates to huge Python metadata files, and an OSV
//! zip whose one entry inflates to a gigabyte. Each runs the real binary against a real
//! registry, and must end in its time with a warning naming the input and a peak RSS far
//! below what the input would unpack to.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hangar_shared::digest::Digest;

/// The most resident memory a scan of these inputs may reach.
const RSS_LIMIT_KIB: u64 = 512 * 1024;
const MIB: u64 = 1 << 20;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// One run of the binary: what it printed, how long it took, its peak RSS.
struct Measured {
    log: String,
    elapsed: Duration,
    peak_kib: u64,
    killed: bool,
}

/// Runs `hangar-coord ARGS`, polling `/proc/PID/status` for VmHWM (the peak resident set)
/// while it runs; kills it after `kill_after` so a regression fails instead of hanging.
fn run_measured(env: &Env, name: &str, args: &[String], kill_after: Duration) -> Measured {
    let log_path = env.path(&format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(args)
        .env("REGISTRY_AUTH_FILE", "/nonexistent/hangar-test-auth.json")
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("run hangar-coord");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let mut killed = false;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kib) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > kill_after {
            let _ = child.kill();
            let _ = child.wait();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Measured {
        log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        elapsed: start.elapsed(),
        peak_kib,
        killed,
    }
}

/// `hangar-coord scan` of `image` against `db`, with `--timeout`; asserts it ended within
/// the timeout plus 10 s and stayed under the RSS limit.
fn scan_within(env: &Env, name: &str, image: &str, db: &Path, timeout: u64) -> Measured {
    let list = env.write_list(&format!("{name}.txt"), &[image.to_owned()]);
    let args: Vec<String> = [
        "scan",
        "--tls-verify=false",
        "--skip-db-age-check",
        "-f",
        &s(&list),
        "--db",
        &s(db),
        "--timeout",
        &format!("{timeout}s"),
        "-r",
        &s(&env.path(&format!("{name}.json"))),
        "--format",
        "json",
        "-o",
        &s(&env.path(&format!("{name}-failed.txt"))),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let bound = Duration::from_secs(timeout + 10);
    let m = run_measured(env, name, &args, bound + Duration::from_secs(60));
    eprintln!(
        "{name}: {:?}, peak RSS {} MiB\n{}",
        m.elapsed,
        m.peak_kib / 1024,
        m.log
    );
    assert!(!m.killed, "{name} was still running after {:?}", m.elapsed);
    assert!(
        m.elapsed <= bound,
        "{name} took {:?}, over --timeout {timeout}s + 10 s",
        m.elapsed
    );
    assert!(
        m.peak_kib > 0 && m.peak_kib < RSS_LIMIT_KIB,
        "{name}: peak RSS {} KiB",
        m.peak_kib
    );
    m
}

/// A directory database of one harmless record.
fn small_db(env: &Env) -> std::path::PathBuf {
    let db = env.path("osv");
    std::fs::create_dir_all(&db).expect("db dir");
    std::fs::write(db.join("OK-1.json"), record("OK-1")).expect("record");
    db
}

fn record(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","modified":"2024-01-01T00:00:00Z","affected":[{{"package":{{"ecosystem":"PyPI","name":"nothing-here"}},"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}}]}}]}}]}}"#
    )
}

#[tokio::test]
async fn an_rpm_database_whose_packages_is_a_recursive_view_is_refused() {
    let env = Env::new();
    // Read as the old scanner read it, this view yields well-formed packages with 64 KiB
    // names without end: gigabytes within a minute.
    let rpmdb = env.path("rpmdb.sqlite");
    let py = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rpmdb_recursive_view.py"
        ))
        .arg(&rpmdb)
        .output()
        .expect("python3");
    assert!(py.status.success(), "{}", text(&py));
    let body = std::fs::read(&rpmdb).expect("rpmdb");
    assert!(body.len() < 64 * 1024, "a small file: {}", body.len());
    push_files_image(
        &env.src.addr,
        "limits/rpmview",
        vec![files_layer(&[
            ("etc/os-release", b"ID=\"rocky\"\nVERSION_ID=\"9.4\"\n"),
            ("var/lib/rpm/rpmdb.sqlite", &body),
        ])],
    )
    .await;
    let image = format!("{}/limits/rpmview:1", env.src.addr);
    let m = scan_within(&env, "rpmview", &image, &small_db(&env), 10);
    assert!(
        m.log.contains(&format!("[{image}@sha256:"))
            && m.log.contains("var/lib/rpm/rpmdb.sqlite (layer sha256:")
            && m.log
                .contains("cannot read the rpm database: `Packages` is a view, not a table"),
        "{}",
        m.log
    );
    assert!(
        m.log.contains("Scanned ["),
        "the image is still reported: {}",
        m.log
    );
}

/// A gzip-compressed tar layer with `n` Python METADATA files of `each` bytes, written
/// through a streaming encoder: the bodies are generated, never held.
fn metadata_bomb(n: usize, each: u64) -> bytes::Bytes {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for i in 0..n {
        let head = format!("Metadata-Version: 2.1\nName: bomb{i}\nVersion: 1.0\n\n");
        let body = head
            .as_bytes()
            .chain(std::io::repeat(b'x').take(each - head.len() as u64));
        let mut h = tar::Header::new_gnu();
        h.set_size(each);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(
            &mut h,
            format!("usr/lib/python3/site-packages/bomb{i}-1.0.dist-info/METADATA"),
            body,
        )
        .expect("tar");
    }
    let gz = tar.into_inner().expect("tar");
    bytes::Bytes::from(gz.finish().expect("gzip"))
}

#[tokio::test]
async fn a_layer_of_huge_python_metadata_is_skipped_file_by_file() {
    let env = Env::new();
    let each = 250 * MIB;
    let started = Instant::now();
    let layer = metadata_bomb(4, each);
    eprintln!(
        "layer: {} bytes compressed, built in {:?}",
        layer.len(),
        started.elapsed()
    );
    assert!(layer.len() < 8 << 20, "a small layer: {}", layer.len());
    // scan does not check diff ids; hashing 750 MiB here would only slow the test.
    let diff = Digest::of(b"not checked by scan");
    let (os, os_diff) = files_layer(&[("etc/os-release", b"ID=debian\nVERSION_ID=12\n")]);
    push_files_image(
        &env.src.addr,
        "limits/pybomb",
        vec![(os, os_diff), (layer, diff)],
    )
    .await;
    let image = format!("{}/limits/pybomb:1", env.src.addr);
    let m = scan_within(&env, "pybomb", &image, &small_db(&env), 120);
    for i in 0..4 {
        let needle = format!(
            "usr/lib/python3/site-packages/bomb{i}-1.0.dist-info/METADATA: {} bytes, over the 8 MiB limit for this file; skipped",
            each
        );
        assert!(m.log.contains(&needle), "{needle} in {}", m.log);
    }
    assert!(
        m.log.contains(&format!("[{image}@sha256:")) && m.log.contains("layer sha256:"),
        "image and layer named: {}",
        m.log
    );
    assert!(m.log.contains("debian 12, 0 packages"), "{}", m.log);

    // With a timeout shorter than the inflating takes, the timeout fires and the blocking
    // work stops with it: the process ends soon after.
    let m = scan_within(&env, "pybomb-timeout", &image, &small_db(&env), 1);
    assert!(
        m.log.contains(&format!("Failed to scan [{image}]"))
            && m.log.contains("timed out after 1s"),
        "{}",
        m.log
    );
}

/// Writes an OSV zip: `huge.json`, `size` zeros that say so; `liar.json`, `lie` zeros whose
/// headers then say 100 bytes; and one real record. Streamed: nothing is held.
fn zip_bomb(path: &Path, size: u64, lie: u64) {
    let file = std::fs::File::create(path).expect("zip file");
    let mut z = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(9));
    let chunk = vec![0u8; MIB as usize];
    for (name, n) in [("huge.json", size), ("liar.json", lie)] {
        z.start_file(name, opts).expect("entry");
        for _ in 0..n / MIB {
            z.write_all(&chunk).expect("zeros");
        }
    }
    z.start_file("OK-1.json", opts).expect("entry");
    z.write_all(record("OK-1").as_bytes()).expect("record");
    z.finish().expect("zip");
    // The liar's local and central headers now declare 100 bytes uncompressed.
    let mut bytes = std::fs::read(path).expect("zip");
    let name = b"liar.json";
    let mut patched = 0;
    for at in 0..bytes.len().saturating_sub(46) {
        let (size_at, name_at) = match &bytes[at..at + 4] {
            b"PK\x03\x04" => (at + 22, at + 30),
            b"PK\x01\x02" => (at + 24, at + 46),
            _ => continue,
        };
        if bytes.get(name_at..name_at + name.len()) == Some(&name[..]) {
            bytes[size_at..size_at + 4].copy_from_slice(&100u32.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "both headers of liar.json");
    std::fs::write(path, bytes).expect("zip");
}

#[tokio::test]
async fn an_osv_zip_whose_entries_inflate_to_gigabytes_is_bounded() {
    let env = Env::new();
    push_files_image(
        &env.src.addr,
        "limits/tiny",
        vec![files_layer(&[(
            "etc/os-release",
            b"ID=alpine\nVERSION_ID=3.20.0\n",
        )])],
    )
    .await;
    let zip = env.path("all.zip");
    let started = Instant::now();
    zip_bomb(&zip, 1 << 30, 64 * MIB);
    let len = std::fs::metadata(&zip).expect("zip").len();
    eprintln!("zip: {len} bytes, built in {:?}", started.elapsed());
    assert!(len < 4 << 20, "a small zip: {len}");
    let image = format!("{}/limits/tiny:1", env.src.addr);
    let m = scan_within(&env, "osvbomb", &image, &zip, 30);
    let zip_name = s(&zip);
    assert!(
        m.log.contains(&format!(
            "{zip_name}: huge.json: 1073741824 bytes, over the 16 MiB limit for one record; skipped"
        )),
        "{}",
        m.log
    );
    // The zip reader stops an entry at the size it declared; past that, the record cap
    // (read through `take`) would.
    assert!(
        m.log.contains(&format!(
            "{zip_name}: liar.json: File is larger than its declared uncompressed size; skipped"
        )) || m.log.contains(&format!(
            "{zip_name}: liar.json: more than the 16 MiB limit for one record (it declared 100 bytes); skipped"
        )),
        "{}",
        m.log
    );
    assert!(m.log.contains("1 records"), "the rest loads: {}", m.log);
    assert!(m.log.contains("Scanned ["), "{}", m.log);
}

/// A dpkg status of `n` packages, each built from `source`; `version` gives the i-th its
/// version.
fn dpkg_status(n: usize, source: &str, version: impl Fn(usize) -> String) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "Package: {source}-{i}\nVersion: {}\nSource: {source}\n\n",
            version(i)
        ));
    }
    out.into_bytes()
}

/// Packages multiplied by records: 90,000 binary packages of one source against its 2,000
/// records are 180 million findings (about 70 GB) when the same version, and 180 million
/// range evaluations (hours of one core in this debug build) when each has its own. Each scan stops at
/// its bound, naming the image; the other images of the list are not held up.
#[tokio::test]
async fn a_package_list_made_to_multiply_with_the_database_is_stopped() {
    let env = Env::new();
    let db = env.path("osv-multiply");
    std::fs::create_dir_all(&db).expect("db dir");
    for i in 0..2000 {
        for (source, events) in [
            ("linux", r#"[{"introduced":"0"}]"#),
            ("kernel", r#"[{"introduced":"0"},{"fixed":"0.1"}]"#),
        ] {
            let record = format!(
                r#"{{"id":"DEBIAN-{source}-{i}","modified":"2025-01-01T00:00:00Z","affected":[{{"package":{{"ecosystem":"Debian:12","name":"{source}"}},"ranges":[{{"type":"ECOSYSTEM","events":{events}}}]}}]}}"#
            );
            std::fs::write(db.join(format!("{source}-{i}.json")), record).expect("record");
        }
    }
    let os: (&str, &[u8]) = ("etc/os-release", b"ID=debian\nVERSION_ID=12\n");
    let same = dpkg_status(90_000, "linux", |_| "6.1".to_owned());
    let each_own = dpkg_status(90_000, "kernel", |i| format!("1.{i}"));
    for (name, status, bound) in [
        (
            "same",
            same,
            "more than 200000 vulnerability findings in one image",
        ),
        (
            "ownversion",
            each_own,
            "more than 1000000 vulnerability records to check in one image",
        ),
    ] {
        push_files_image(
            &env.src.addr,
            &format!("limits/{name}"),
            vec![files_layer(&[os, ("var/lib/dpkg/status", &status)])],
        )
        .await;
        let image = format!("{}/limits/{name}:1", env.src.addr);
        let m = scan_within(&env, name, &image, &db, 60);
        assert!(
            m.log.contains(&format!("Failed to scan [{image}@sha256:"))
                && m.log.contains(bound)
                && m.log.contains("matching stopped"),
            "{name}: {}",
            m.log
        );
        let failed =
            std::fs::read_to_string(env.path(&format!("{name}-failed.txt"))).expect("failed list");
        assert_eq!(
            failed.trim(),
            image,
            "{name}: the image is in the failed list"
        );
    }
}

/// An OSV zip whose central directory is past its 64 MiB bound (70,000 entries of
/// 1,000-byte names, 73 MB of directory): refused before any entry is read, naming the
/// file. The zip crate keeps each entry's name three times, so a file of millions of tiny
/// entries within the 2 GiB file bound would be gigabytes of memory.
#[tokio::test]
async fn an_osv_zip_with_a_central_directory_past_its_bound_is_refused() {
    let env = Env::new();
    push_files_image(
        &env.src.addr,
        "limits/dir",
        vec![files_layer(&[(
            "etc/os-release",
            b"ID=alpine\nVERSION_ID=3.20.0\n",
        )])],
    )
    .await;
    let zip = env.path("many.zip");
    let py = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
             \x20   for i in range(70000):\n\
             \x20       z.writestr(zipfile.ZipInfo('%06d-' % i + 'x' * 993 + '.txt'), b'')\n",
        ])
        .arg(&zip)
        .output()
        .expect("python3");
    assert!(py.status.success(), "{}", text(&py));
    let image = format!("{}/limits/dir:1", env.src.addr);
    let list = env.write_list("dir.txt", std::slice::from_ref(&image));
    let args: Vec<String> = [
        "scan",
        "--tls-verify=false",
        "--skip-db-age-check",
        "-f",
        &s(&list),
        "--db",
        &s(&zip),
        "-r",
        &s(&env.path("dir.json")),
        "-o",
        &s(&env.path("dir-failed.txt")),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let m = run_measured(&env, "dir", &args, Duration::from_secs(120));
    eprintln!(
        "{:?}, peak RSS {} MiB\n{}",
        m.elapsed,
        m.peak_kib / 1024,
        m.log
    );
    assert!(!m.killed, "still running after {:?}", m.elapsed);
    assert!(
        m.log.contains(&format!(
            "{}: the zip's central directory is over 64 MiB",
            s(&zip)
        )),
        "{}",
        m.log
    );
    assert!(
        m.peak_kib > 0 && m.peak_kib < RSS_LIMIT_KIB / 2,
        "peak RSS {} KiB",
        m.peak_kib
    );
    assert!(m.elapsed < Duration::from_secs(30), "{:?}", m.elapsed);
}
