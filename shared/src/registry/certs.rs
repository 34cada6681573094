//! Certificates for one registry, where containers/image (and so Hangar, skopeo, podman)
//! looks for them: `--cert-dir DIR` when given, else the first of
//! `$HOME/.config/containers/certs.d/HOST[:PORT]/`, `/etc/containers/certs.d/HOST[:PORT]/`,
//! `/etc/docker/certs.d/HOST[:PORT]/` that exists. In it, `*.crt` files are CAs to trust —
//! the usual way a private Harbor with its own CA is trusted — and a `NAME.cert` with its
//! `NAME.key` is a client certificate presented to a registry that asks for one. A
//! certificate without its key, or a key without its certificate, is an error naming it,
//! as containers/image makes it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What a registry's certificate directory holds.
#[derive(Default)]
pub(super) struct Trust {
    /// CA certificates, PEM, one each.
    pub cas: Vec<Vec<u8>>,
    /// The client certificate to present.
    pub client: Option<ClientCert>,
}

pub(super) struct ClientCert {
    /// The certificate's file, for messages.
    pub cert: PathBuf,
    /// The certificate (chain) and its private key, PEM, one after the other.
    pub pem: Vec<u8>,
}

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

/// The largest certificate or key file read.
const MAX_FILE: u64 = 1 << 20;

/// The CA certificates and the client certificate in `dir`. Of several client certificates
/// the first by name is presented (the TLS client here takes one), and the others named in
/// a warning.
pub(super) fn read(dir: &Path) -> Result<Trust> {
    let unreadable =
        |e: std::io::Error| Error::invalid(format!("certificate directory {}: {e}", dir.display()));
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let mut trust = Trust::default();
    for path in &names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => {
                let certs = split_pem(&read_file(path)?);
                if certs.is_empty() {
                    return Err(Error::invalid(format!(
                        "{}: no PEM certificate in it",
                        path.display()
                    )));
                }
                trust.cas.extend(certs);
            }
            Some("cert") => {
                let key = path.with_extension("key");
                if !key.is_file() {
                    return Err(Error::invalid(format!(
                        "{}: a client certificate without its key {}",
                        path.display(),
                        key.display()
                    )));
                }
                if trust.client.is_some() {
                    tracing::warn!(
                        cert = %path.display(),
                        "a second client certificate in the directory: only the first by name is presented"
                    );
                    continue;
                }
                let mut pem = read_file(path)?;
                pem.push(b'\n');
                pem.extend(read_file(&key)?);
                trust.client = Some(ClientCert {
                    cert: path.clone(),
                    pem,
                });
            }
            Some("key") if !path.with_extension("cert").is_file() => {
                return Err(Error::invalid(format!(
                    "{}: a client key without its certificate {}",
                    path.display(),
                    path.with_extension("cert").display()
                )));
            }
            _ => {}
        }
    }
    Ok(trust)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    crate::local_file::read(path, MAX_FILE)
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
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
    fn bundles_split_and_client_certificates_pair_with_their_keys() {
        let one = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(split_pem(format!("junk\n{one}{one}").as_bytes()).len(), 2);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.crt"), one.repeat(2)).expect("ca");
        std::fs::write(dir.path().join("README"), "ignored").expect("other");
        let trust = read(dir.path()).expect("cas");
        assert_eq!(trust.cas.len(), 2);
        assert!(trust.client.is_none());
        // A certificate without its key, then a key without its certificate.
        std::fs::write(dir.path().join("client.cert"), one).expect("cert");
        let e = read(dir.path()).err().expect("no key");
        assert!(e.message.contains("client.key"), "{}", e.message);
        std::fs::rename(
            dir.path().join("client.cert"),
            dir.path().join("other.cert"),
        )
        .expect("rename");
        std::fs::write(dir.path().join("client.key"), "KEY").expect("key");
        let e = read(dir.path()).err().expect("no cert");
        assert!(e.message.contains("client.cert"), "{}", e.message);
        std::fs::rename(
            dir.path().join("other.cert"),
            dir.path().join("client.cert"),
        )
        .expect("rename");
        let client = read(dir.path()).expect("pair").client.expect("client");
        assert_eq!(client.cert, dir.path().join("client.cert"));
        assert!(String::from_utf8_lossy(&client.pem).ends_with("KEY"));
        assert_eq!(dir_for("x", Some(dir.path())), Some(dir.path().to_owned()));
    }

    /// A CA file that never ends (a link to `/dev/zero`) is refused by name after 1 MiB.
    #[cfg(unix)]
    #[test]
    fn an_endless_certificate_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("endless.crt")).expect("link");
        let e = read(dir.path()).err().expect("refused");
        assert!(e.message.contains("endless.crt"), "{}", e.message);
        assert!(e.message.contains("larger than 1 MiB"), "{}", e.message);
        std::fs::remove_file(dir.path().join("endless.crt")).expect("unlink");
        std::fs::write(
            dir.path().join("big.key"),
            vec![b'A'; (MAX_FILE + 1) as usize],
        )
        .expect("key");
        std::fs::write(dir.path().join("big.cert"), "x").expect("cert");
        let e = read(dir.path()).err().expect("refused");
        assert!(e.message.contains("big.key"), "{}", e.message);
    }
}
