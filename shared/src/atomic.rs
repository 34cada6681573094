//! Files written whole or not at all: bytes go to a fresh temporary file beside the
//! destination — a random name, created exclusively (`O_EXCL`, so a planted file or
//! symlink at that name makes the create fail instead of being written through), its final
//! mode set before the rename — and are renamed into place once synced.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// The prefix of `dest`'s temporary files (for sweeping what a killed writer left).
pub fn temp_prefix(dest: &Path) -> String {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.partial-")
}

/// A fresh temporary path beside `dest`: its prefix, this process, 64 random bits.
pub fn temp_path(dest: &Path) -> PathBuf {
    let dir = parent(dest);
    let random = rand::rng().next_u64();
    dir.join(format!(
        "{}{}-{random:016x}",
        temp_prefix(dest),
        std::process::id()
    ))
}

/// Creates `path`, which must not exist (not even as a symlink). With `mode` the file gets
/// exactly that mode whatever the umask; without, the usual `0666 & !umask`.
pub fn create_new(path: &Path, mode: Option<u32>) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode.unwrap_or(0o666))
        .open(path)?;
    if let Some(mode) = mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// Writes `bytes` to `dest` whole or not at all (see the module's description).
pub fn write(dest: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    write_together(&[(dest, bytes, mode)])
}

/// Writes several files that belong together (a key and its public half): every one is
/// written whole to its temporary file first, and only then are they renamed into place,
/// in the order given, so a failure while writing replaces none of them.
pub fn write_together(files: &[(&Path, &[u8], Option<u32>)]) -> std::io::Result<()> {
    let mut temps = Vec::with_capacity(files.len());
    let written = (|| {
        for (dest, bytes, mode) in files {
            let temp = temp_path(dest);
            let mut f = create_new(&temp, *mode)?;
            temps.push(temp);
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        for (temp, (dest, _, _)) in temps.iter().zip(files) {
            commit(temp, dest)?;
        }
        Ok(())
    })();
    if written.is_err() {
        for temp in &temps {
            let _ = std::fs::remove_file(temp);
        }
    }
    written
}

/// Renames a finished temporary file over `dest` (a symlink there is replaced, not
/// followed) and makes the rename durable.
pub fn commit(temp: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::rename(temp, dest)?;
    if let Ok(d) = File::open(parent(dest)) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_planted_symlink_or_file_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("victim");
        std::fs::write(&target, "keep").expect("victim");
        let dest = dir.path().join("auth.json");
        std::os::unix::fs::symlink(&target, &dest).expect("symlink");
        write(&dest, b"secret", Some(0o600)).expect("write");
        assert_eq!(std::fs::read_to_string(&target).expect("victim"), "keep");
        assert_eq!(std::fs::read_to_string(&dest).expect("dest"), "secret");
        let meta = std::fs::symlink_metadata(&dest).expect("meta");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A world-readable file planted at the destination does not keep its mode.
        std::fs::remove_file(&dest).expect("rm");
        std::fs::write(&dest, "old").expect("plant");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write(&dest, b"new", Some(0o600)).expect("write");
        let mode = std::fs::metadata(&dest).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn temporary_names_are_unpredictable_and_never_reused() {
        let dest = Path::new("/tmp/x/auth.json");
        let (a, b) = (temp_path(dest), temp_path(dest));
        assert_ne!(a, b);
        assert!(
            a.to_string_lossy()
                .starts_with("/tmp/x/.auth.json.partial-")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &p).expect("symlink");
        assert!(create_new(&p, Some(0o600)).is_err());
        assert!(!dir.path().join("elsewhere").exists());
    }
}
