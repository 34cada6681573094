//! Files named on the command line or by configuration (lists, keys, passphrases, auth and
//! policy files, token files), read whole only up to a size that fits what they are: a path
//! that points at `/dev/zero` or a log that never ends is refused by name, never held.

use std::io::Read as _;
use std::path::Path;

/// Keys, certificates, passphrases, auth, policy, token and schedule files.
pub const CONFIG: u64 = 4 << 20;
/// Image lists (a line per image: half a million images fit).
pub const LIST: u64 = 64 << 20;

/// `path` whole, if it holds at most `cap` bytes.
pub fn read(path: impl AsRef<Path>, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path.as_ref())?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {}", size(cap)),
        ));
    }
    Ok(bytes)
}

/// `path` whole as UTF-8 text, if it holds at most `cap` bytes.
pub fn read_text(path: impl AsRef<Path>, cap: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, cap)?).map_err(|e| {
        // Where: a list's one bad line should not leave its author searching the file.
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at
            - bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (line {line}, byte {column} of the line)"),
        )
    })
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn an_endless_file_is_refused_at_its_cap() {
        let e = read_text("/dev/zero", 1 << 20).expect_err("endless");
        assert_eq!(e.to_string(), "larger than 1 MiB");
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("list.txt");
        std::fs::write(&p, "a/b:c\n").expect("write");
        assert_eq!(read_text(&p, 6).expect("fits"), "a/b:c\n");
        assert!(read_text(&p, 5).is_err());
        std::fs::write(&p, [0xff, 0xfe]).expect("write");
        assert_eq!(
            read_text(&p, 6).expect_err("bytes").to_string(),
            "not UTF-8 text (line 1, byte 1 of the line)"
        );
        std::fs::write(&p, b"a/b:c\nd/\xc3\xa9:1\nd/e\xff:2\n").expect("write");
        assert_eq!(
            read_text(&p, 64).expect_err("bytes").to_string(),
            "not UTF-8 text (line 3, byte 4 of the line)"
        );
    }
}
