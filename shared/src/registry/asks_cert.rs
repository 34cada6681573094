//! Whether a TLS server asks for a client certificate. A registry that wants one and gets
//! none ends the connection with an alert the HTTP client reports only as a closed
//! connection or channel; when `/v2/` cannot be asked over TLS and no certificate was
//! given, one handshake of our own tells the user what is really missing. Nothing is
//! sent but the handshake: the server's certificate is not checked (no credentials follow
//! it) and no client certificate is offered.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WantsClientCert};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ConfigBuilder, DigitallySignedStruct, SignatureScheme};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `host` (`name[:port]`, 443 when none) asks for a client certificate during the
/// TLS handshake. `false` when that cannot be told (no connection, no TLS, a timeout).
pub(super) async fn asks_for_client_cert(host: &str) -> bool {
    let host = host.to_owned();
    let asked = tokio::task::spawn_blocking(move || handshake(&host, TIMEOUT).unwrap_or(false));
    matches!(tokio::time::timeout(3 * TIMEOUT, asked).await, Ok(Ok(true)))
}

/// One handshake: connecting within `timeout`, all of it within twice that.
fn handshake(host: &str, timeout: Duration) -> Option<bool> {
    let (name, addr) = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') || name.ends_with(']') => {
            (name, format!("{name}:{port}"))
        }
        _ => (host, format!("{host}:443")),
    };
    let name = ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']'))
        .ok()?
        .to_owned();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let asked = Arc::new(Asked::default());
    let config = builder(provider.clone())?.with_client_cert_resolver(asked.clone());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let addr = addr.to_socket_addrs().ok()?.next()?;
    let sock = TcpStream::connect_timeout(&addr, timeout).ok()?;
    // A server trickling its handshake is given up as a whole, not read by read.
    let mut io = Deadline {
        sock,
        at: std::time::Instant::now() + 2 * timeout,
    };
    let mut rounds = 0;
    while conn.is_handshaking() && !asked.0.load(Ordering::Relaxed) && rounds < 32 {
        rounds += 1;
        if conn.complete_io(&mut io).is_err() {
            break;
        }
    }
    Some(asked.0.load(Ordering::Relaxed))
}

fn builder(
    provider: Arc<CryptoProvider>,
) -> Option<ConfigBuilder<rustls::ClientConfig, WantsClientCert>> {
    Some(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider))),
    )
}

/// The socket, each read and write given only the time left before `at`.
struct Deadline {
    sock: TcpStream,
    at: std::time::Instant,
}

impl Deadline {
    fn left(&self) -> std::io::Result<Duration> {
        self.at
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
    }
}

impl std::io::Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.set_read_timeout(Some(self.left()?))?;
        self.sock.read(buf)
    }
}

impl std::io::Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sock.set_write_timeout(Some(self.left()?))?;
        self.sock.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

/// Notes that the server asked for a certificate, and offers none.
#[derive(Debug, Default)]
struct Asked(AtomicBool);

impl ResolvesClientCert for Asked {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any server certificate (nothing but the handshake is sent), checking only that
/// its handshake signatures are sound.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::time::Instant;

    use super::*;

    /// A server that answers the ClientHello with a record header announcing 16 KiB and
    /// then one byte every 50 ms, for ever: the probe gives up at its deadline.
    #[test]
    fn a_server_trickling_its_handshake_is_given_up_at_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let trickler = std::thread::spawn(move || {
            let Ok((mut sock, _)) = listener.accept() else {
                return 0usize;
            };
            let mut hello = [0u8; 512];
            let _ = sock.read(&mut hello);
            let mut sent = 0;
            if sock.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
                return sent;
            }
            while sock.write_all(&[0x02]).is_ok() && sent < 400 {
                sent += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        });
        let started = Instant::now();
        let asked = handshake(
            &format!("127.0.0.1:{}", addr.port()),
            Duration::from_millis(500),
        );
        let took = started.elapsed();
        assert_eq!(asked, Some(false));
        assert!(
            took >= Duration::from_millis(900),
            "ended by the deadline: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "not read by read: {took:?}");
        let sent = trickler.join().expect("trickler");
        assert!(
            sent < 400,
            "the probe hung up on the trickler ({sent} bytes)"
        );
    }
}
