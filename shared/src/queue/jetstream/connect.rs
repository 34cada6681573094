//! Connecting to NATS: credentials, TLS files checked before the first try, and each
//! identity's own inbox prefix.

use std::time::Duration;

use super::bus;
use crate::error::{Error, Result};

/// How to reach NATS: `nats://host:port`, with optional user/password, token, creds file,
/// and TLS (a private CA to trust, a client certificate).
#[derive(Clone, Default)]
pub struct NatsOptions {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds: Option<std::path::PathBuf>,
    pub require_tls: bool,
    /// PEM file of the CA(s) that signed the server's certificate. async-nats then trusts
    /// only these, not the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate (chain) and its key, for servers that verify clients.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsOptions({})", redact_url(&self.url))
    }
}

pub use crate::redact::redact_url;

pub async fn connect(opts: &NatsOptions) -> Result<async_nats::Client> {
    let mut o = async_nats::ConnectOptions::new()
        .name("hangar")
        // A permissions violation is only an -ERR line from the server (the refused request
        // itself just times out): log it, or a locked-down bus fails without saying why.
        .event_callback(|event| async move {
            match event {
                async_nats::Event::ServerError(e) => tracing::warn!("nats server: {e}"),
                async_nats::Event::ClientError(e) => tracing::warn!("nats client: {e}"),
                _ => {}
            }
        });
    if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
        o = o
            .user_and_password(u.clone(), p.clone())
            .custom_inbox_prefix(inbox_prefix(u));
    }
    if let Some(t) = &opts.token {
        o = o.token(t.clone());
    }
    if let Some(c) = &opts.creds {
        let bad = |e: std::io::Error| {
            Error::invalid(format!("NATS credentials file {}: {e}", c.display()))
        };
        let text = crate::local_file::read_text(c, crate::local_file::CONFIG).map_err(bad)?;
        o = o.credentials(&text).map_err(bad)?;
    }
    // Bad TLS files would otherwise surface as an endless reconnect loop: check them here.
    if let Some(ca) = &opts.ca {
        check_pem(ca, "--nats-ca", "CERTIFICATE")?;
        o = o.add_root_certificates(ca.clone());
    }
    match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => {
            check_pem(cert, "--nats-tls-cert", "CERTIFICATE")?;
            check_pem(key, "--nats-tls-key", "PRIVATE KEY")?;
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(Error::invalid(
                "--nats-tls-cert and --nats-tls-key go together",
            ));
        }
    }
    // Whoever names a CA or a client certificate means TLS: never fall back to plain text
    // (and send a password in it) because the server did not offer TLS.
    let require_tls = opts.require_tls || opts.ca.is_some() || opts.tls_cert.is_some();
    o = o
        .require_tls(require_tls)
        .retry_on_initial_connect()
        .max_reconnects(None);
    tokio::time::timeout(Duration::from_secs(15), o.connect(&opts.url))
        .await
        .map_err(|_| {
            bus(format!(
                "cannot connect to {} within 15 s",
                redact_url(&opts.url)
            ))
        })?
        .map_err(bus)
}

/// `_INBOX.<user>`: replies to a user's requests (JetStream API answers, KV reads) land
/// under its own prefix, so the server's permissions can let each identity subscribe to its
/// replies only (`_INBOX.worker.>`) instead of everyone's (`_INBOX.>`). Characters NATS
/// gives a meaning in subjects are replaced.
pub fn inbox_prefix(user: &str) -> String {
    let token: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_INBOX.{token}")
}

/// `path` is readable and holds a PEM block of `kind` (a substring of its label, so
/// "PRIVATE KEY" accepts PKCS#8, RSA and EC keys).
fn check_pem(path: &std::path::Path, flag: &str, kind: &str) -> Result<()> {
    let text = crate::local_file::read_text(path, crate::local_file::CONFIG)
        .map_err(|e| Error::invalid(format!("{flag} {}: {e}", path.display())))?;
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(kind));
    if !found {
        return Err(Error::invalid(format!(
            "{flag} {}: no PEM {kind} in it",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureClass;

    #[test]
    fn urls_lose_their_credentials_in_logs() {
        let o = NatsOptions {
            url: "nats://a:b@h:1".into(),
            password: Some("b".into()),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains(":b@"));
    }

    #[test]
    fn inboxes_are_per_user_and_subject_safe() {
        assert_eq!(inbox_prefix("worker"), "_INBOX.worker");
        assert_eq!(inbox_prefix("a.b *>c"), "_INBOX.a_b___c");
    }

    #[tokio::test]
    async fn tls_files_are_checked_before_connecting() {
        let dir = std::env::temp_dir().join(format!("hangar-nats-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let url = "nats://127.0.0.1:1".to_owned();
        let cases = [
            (
                NatsOptions {
                    url: url.clone(),
                    ca: Some(dir.join("missing.pem")),
                    ..Default::default()
                },
                "--nats-ca",
            ),
            (
                NatsOptions {
                    url: url.clone(),
                    ca: Some(not_pem.clone()),
                    ..Default::default()
                },
                "no PEM CERTIFICATE",
            ),
            (
                NatsOptions {
                    url: url.clone(),
                    tls_cert: Some(not_pem.clone()),
                    ..Default::default()
                },
                "go together",
            ),
        ];
        for (opts, want) in cases {
            let e = connect(&opts).await.unwrap_err();
            assert_eq!(e.class, FailureClass::InvalidInput, "{e}");
            assert!(e.message.contains(want), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
