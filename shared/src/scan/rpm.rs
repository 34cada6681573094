//! rpm's database. The sqlite form (`rpmdb.sqlite`, RHEL 9, Fedora, SUSE): the `Packages`
//! table holds one rpm header blob per package, parsed here for name, epoch, version,
//! release, license and source rpm. The Berkeley DB form (`var/lib/rpm/Packages`, RHEL ≤ 8)
//! is reported as unsupported.

use super::{Package, PkgKind};

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
    if !path.ends_with("rpmdb.sqlite") {
        return (
            Vec::new(),
            vec![format!(
                "{path}: unsupported rpm database (Berkeley DB); only rpmdb.sqlite is read"
            )],
        );
    }
    match read_sqlite(path, body) {
        Ok(r) => r,
        Err(e) => (
            Vec::new(),
            vec![format!("{path}: cannot read the rpm database: {e}")],
        ),
    }
}

fn read_sqlite(path: &str, body: &[u8]) -> Result<(Vec<Package>, Vec<String>), String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(file.path(), body).map_err(|e| e.to_string())?;
    let db = rusqlite::Connection::open_with_flags(
        file.path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .map_err(|e| e.to_string())?;
    let mut stmt = db
        .prepare("SELECT hnum, blob FROM Packages")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .map_err(|e| e.to_string())?;
    let mut packages = Vec::new();
    let mut warnings = Vec::new();
    for row in rows {
        let (hnum, blob) = row.map_err(|e| e.to_string())?;
        let Some(tags) = header(&blob) else {
            warnings.push(format!(
                "{path}: package {hnum}: malformed rpm header; skipped"
            ));
            continue;
        };
        let get = |t: u32| tags.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone());
        let (Some(name), Some(version), Some(release)) = (get(NAME), get(VERSION), get(RELEASE))
        else {
            warnings.push(format!(
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
        packages.push(Package {
            kind: PkgKind::Rpm,
            name,
            version: evr,
            source,
            source_version,
            license: get(LICENSE),
            path: path.to_owned(),
        });
    }
    Ok((packages, warnings))
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

    #[test]
    fn malformed_headers_are_refused_not_panicked_on() {
        assert!(header(&[0, 0, 0, 9, 0, 0, 0, 1]).is_none());
        assert!(header(&[]).is_none());
    }
}
