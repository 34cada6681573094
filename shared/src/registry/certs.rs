//! Certificates to trust for one registry, where containers/image (and so Hangar, skopeo,
//! podman) looks for them: `--cert-dir DIR` when given, else the first of
//! `$HOME/.config/containers/certs.d/HOST[:PORT]/`, `/etc/containers/certs.d/HOST[:PORT]/`,
//! `/etc/docker/certs.d/HOST[:PORT]/` that exists. In it, `*.crt` files are CAs — the usual
//! way a private Harbor with its own CA is trusted. `*.cert`/`*.key` pairs are client
//! certificates, which the registry client (oci-client) cannot present: they are refused
//! with a clear error rather than silently not sent.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The directory of certificates for `host`, if any.
pub(super) fn dir_for(host: &str, cert_dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = cert_dir {
        return Some(dir.to_owned());
    }
    let mut roots = Vec::new();
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        roots.push(PathBuf::from(home).join(".config/containers/certs.d"));
    }
    roots.push(PathBuf::from("/etc/containers/certs.d"));
    roots.push(PathBuf::from("/etc/docker/certs.d"));
    roots.into_iter().map(|r| r.join(host)).find(|d| d.is_dir())
}

/// The CA certificates (PEM, one certificate each) in `dir`.
pub(super) fn cas(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let unreadable =
        |e: std::io::Error| Error::invalid(format!("certificate directory {}: {e}", dir.display()));
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => {
                let pem = std::fs::read(&path).map_err(unreadable)?;
                let certs = split_pem(&pem);
                if certs.is_empty() {
                    return Err(Error::invalid(format!(
                        "{}: no PEM certificate in it",
                        path.display()
                    )));
                }
                out.extend(certs);
            }
            Some("cert") | Some("key") => {
                return Err(Error::invalid(format!(
                    "{}: client certificates (*.cert/*.key) are not supported yet; only CA certificates (*.crt) are read",
                    path.display()
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The `CERTIFICATE` blocks of a PEM bundle, each on its own.
fn split_pem(pem: &[u8]) -> Vec<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]).into_bytes());
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_split_and_client_certificates_are_refused() {
        let one = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(split_pem(format!("junk\n{one}{one}").as_bytes()).len(), 2);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.crt"), one.repeat(2)).expect("ca");
        std::fs::write(dir.path().join("README"), "ignored").expect("other");
        assert_eq!(cas(dir.path()).expect("cas").len(), 2);
        std::fs::write(dir.path().join("client.cert"), one).expect("cert");
        let e = cas(dir.path()).unwrap_err();
        assert!(e.message.contains("client certificates"), "{}", e.message);
        assert_eq!(dir_for("x", Some(dir.path())), Some(dir.path().to_owned()));
    }
}
