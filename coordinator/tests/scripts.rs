//! The project's own scripts leave nothing behind.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `scripts/dev-services.sh registry` (the demo's registry helper) removes its temporary
/// directory when stopped; it used to leave about 260 MB per demo run behind.
#[test]
fn the_registry_helper_leaves_no_directory_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-services.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("registry")
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dev-services.sh registry");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("its address");
    assert!(line.trim().starts_with("127.0.0.1:"), "{line}");
    let made: Vec<_> = std::fs::read_dir(tmp.path()).expect("tmp").collect();
    assert_eq!(made.len(), 1, "its storage directory");
    // Stopped as the demo stops it.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the helper did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
