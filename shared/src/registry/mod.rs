//! A registry, spoken to by our own HTTP requests (reqwest): anonymous, Basic or
//! bearer-token auth, plain HTTP or TLS with or without verification, CA certificates and a
//! client certificate from `certs.d`, streamed blobs, bounded manifests and tag pages.
//! Every request about a repository goes under the fleet's gate; every request is bounded
//! in time (a blob's body between chunks instead) and classified by its status first
//! ([`classify`]); [`crate::retry`] retries on the classes it assigns. oci-client did this before; it cannot present a
//! client certificate, reads any answer whole and keeps response headers to itself.

mod asks_cert;
mod blobs;
mod certs;
mod challenge;
mod classify;
mod conf;
pub use conf::RegistriesConf;
mod fetch;
mod manifests;
#[cfg(test)]
mod tests;
mod token;
mod upload_end;
pub(crate) use upload_end::UploadEnd;
pub use upload_end::uploads_ended;

use classify::status_error;

use std::time::Duration;

use crate::auth::Credentials;
use crate::error::{Error, FailureClass, Result};
use crate::ratelimit::Permit;
use crate::retry::RetryPolicy;

pub const USER_AGENT: &str = concat!("hangar-fleet/", env!("CARGO_PKG_VERSION"));

/// The largest manifest accepted (distribution's own limit), checked while it streams.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// How much of an error answer's body is read, for its message.
const MAX_ERROR_BODY: usize = 64 << 10;
/// The bound on one request (not a blob's body) when the command gives none.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a blob's body may go without a byte arriving.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `--tls-verify`: `Some(false)` skips certificate checks and allows plain HTTP.
    pub tls_verify: Option<bool>,
    pub retry: RetryPolicy,
    /// Fleet-wide rate control: asked before each request, told about each 429.
    pub gate: Option<std::sync::Arc<dyn crate::ratelimit::Gate>>,
    /// Bound on one request with its answer's body (blob bodies excepted: their copy is
    /// bounded as a task). `None`: [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Option<Duration>,
    /// `--cert-dir`: the CA certificates to trust for every registry; else each host's
    /// `certs.d` directory ([`certs`]).
    pub cert_dir: Option<std::path::PathBuf>,
}

/// Which side of a copy an operation is on; decides how a 4xx is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

pub struct Registry {
    host: String,
    /// The user's credentials for it, if any.
    creds: Option<(String, String)>,
    retry: RetryPolicy,
    /// The client for the registry as `--tls-verify` or registries.conf says of its host.
    http: reqwest::Client,
    /// The other kind (checking certificates or not), for repositories whose prefix in
    /// registries.conf says otherwise than the host ([`Registry::client_for`]).
    other: Option<reqwest::Client>,
    /// Whether `http` skips certificate checks (and may speak plain HTTP).
    insecure: bool,
    scheme: &'static str,
    /// The registry asks for credentials (a `WWW-Authenticate` challenge on `/v2/`).
    challenged: bool,
    /// Where the API really lives (`index.docker.io` for `docker.io`).
    api_host: String,
    gate: Option<std::sync::Arc<dyn crate::ratelimit::Gate>>,
    request_timeout: Duration,
    /// The registry's bearer-token service, when it names one: every token comes from it.
    tokens: Option<token::TokenService>,
    /// Why the token realm is refused to the repositories whose certificates are checked:
    /// it is on another host and was named over a connection not checked.
    foreign_realm: Option<Error>,
    /// Why the registry did not answer `/v2/` at connect, if it did not.
    unreachable: Option<String>,
    /// Whether the registry has shown that it mounts (a 201), or that it does not (an
    /// upload for a cross-repository mount, or for a blob a HEAD finds): how a blob is
    /// looked for ([`Registry::look_or_open`]).
    mounts: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({}://{})", self.scheme, self.host)
    }
}

impl Registry {
    /// Connects to `host`, deciding the scheme once: TLS, or plain HTTP when the registry
    /// does not speak TLS and may be reached insecurely (`--tls-verify=false`, or
    /// registries.conf for the host as a whole).
    pub async fn connect(
        host: &str,
        opts: &RegistryOptions,
        creds: Option<Credentials>,
    ) -> Result<Self> {
        let (insecure, varies) = match opts.tls_verify {
            Some(verify) => (!verify, false),
            // Left out: registries.conf decides, as containers/image does.
            None => {
                let conf = conf::RegistriesConf::global()?;
                (conf.insecure(host), conf.insecure_varies(host))
            }
        };
        let trust = match certs::dir_for(host, opts.cert_dir.as_deref()) {
            Some(dir) => {
                tracing::debug!(host, dir = %dir.display(), "reading the certificates there");
                certs::read(&dir)?
            }
            None => certs::Trust::default(),
        };
        let http = http_client(host, &trust, insecure)?;
        // A repository prefix that says otherwise than its registry gets a client of its
        // own kind.
        let other = match varies {
            true => Some(http_client(host, &trust, !insecure)?),
            false => None,
        };
        // A secure host is reached over TLS whatever its prefixes say: plain HTTP is tried
        // only for a host that may be reached insecurely as a whole.
        let api_host = api_host(host);
        let (scheme, asked) = match insecure {
            true => {
                let (scheme, answer) = challenge::probe_insecure(&http, &api_host).await;
                (scheme, Some(answer))
            }
            false => ("https", None),
        };
        // `/v2/` is asked with the client that checks certificates where there is one: what
        // it says (the token realm) then stands for every repository.
        let checking = if insecure {
            other.as_ref()
        } else {
            Some(&http)
        };
        let lax = if insecure {
            Some(&http)
        } else {
            other.as_ref()
        };
        let (mut probed, mut unverified) = match checking.filter(|_| scheme == "https") {
            Some(client) => (challenge::probe(client, scheme, &api_host).await, false),
            // The insecure probe asked `/v2/` with this very client and scheme.
            None => match asked {
                Some(answer) => (answer, insecure),
                None => (challenge::probe(&http, scheme, &api_host).await, insecure),
            },
        };
        if !unverified
            && probed
                .unreachable
                .as_deref()
                .is_some_and(|why| !why.contains(" within ") && !why.contains("timed out"))
            && let Some(lax) = lax
        {
            // A certificate nobody trusts: the repositories that may skip the check are
            // still read (the probe itself sends no credentials).
            let again = challenge::probe(lax, scheme, &api_host).await;
            if again.unreachable.is_none() {
                probed = again;
                unverified = true;
            }
        }
        let creds = creds.map(|c| (c.username, c.password));
        let mut foreign_realm = None;
        let tokens = match probed.realm {
            Some(realm) => {
                challenge::check_realm(&realm, scheme, &api_host)?;
                if unverified && varies {
                    // Heard where anyone on the path could have named it: the repositories
                    // whose certificates are checked send no credentials to a realm on
                    // another host.
                    foreign_realm = challenge::check_realm_is_own(&realm, &api_host).err();
                }
                Some(token::TokenService::new(
                    realm,
                    probed.service,
                    creds.clone(),
                ))
            }
            None => None,
        };
        let mut unreachable = probed.unreachable;
        // Not after a timeout: a host that does not answer would cost the wait again.
        if let Some(why) = &mut unreachable
            && scheme == "https"
            && trust.client.is_none()
            && !why.contains(" within ")
            && !why.contains("timed out")
            && asks_cert::asks_for_client_cert(&api_host).await
        {
            why.push_str(
                " — the registry asks for a client certificate: put NAME.cert and NAME.key in its certs.d directory or --cert-dir",
            );
        }
        Ok(Self {
            host: host.to_owned(),
            creds,
            retry: opts.retry.clone(),
            http,
            other,
            insecure,
            scheme,
            challenged: probed.challenged,
            api_host,
            gate: opts.gate.clone(),
            request_timeout: opts.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            tokens,
            foreign_realm,
            unreachable,
            mounts: std::sync::atomic::AtomicU8::new(blobs::MOUNTS_UNKNOWN),
        })
    }

    /// Waits for the fleet's permission to send `requests` requests to this registry.
    async fn admit(&self, requests: u32) -> Permit {
        match &self.gate {
            Some(g) => g.admit(&self.host, requests).await,
            None => Permit::default(),
        }
    }

    async fn observe(&self, op: &'static str, elapsed: Duration, failure: Option<FailureClass>) {
        if let Some(g) = &self.gate {
            g.observe(
                &self.host,
                crate::ratelimit::Request {
                    op,
                    elapsed,
                    failure,
                },
            )
            .await;
        }
    }

    /// A bearer token for `repo` (to pull, or to pull and push) from the registry's token
    /// service, fetched by us (bounded, from the realm checked at connect); `None` for a
    /// registry without one.
    async fn authorise(&self, repo: &str, push: bool) -> Result<Option<String>> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        if let Some(refusal) = &self.foreign_realm
            && self.checks_certificates(repo)?
        {
            return Err(refusal.clone());
        }
        tokens
            .token(
                self.client_for(repo)?,
                &self.host,
                repo,
                push,
                self.request_timeout,
            )
            .await
            .map(Some)
    }

    fn timed_out(&self, what: &str) -> Error {
        Error::new(
            FailureClass::Network,
            format!(
                "{what}: no complete answer within {}s",
                self.request_timeout.as_secs()
            ),
        )
    }

    /// Checks that the stored credentials are accepted (for `login`): the `/v2/` endpoint
    /// with Basic auth, or the token endpoint when the registry asks for a bearer token.
    pub async fn verify_login(&self) -> Result<()> {
        let Some((user, pass)) = &self.creds else {
            return Ok(());
        };
        let url = format!("{}://{}/v2/", self.scheme, self.api_host);
        let resp = self
            .http
            .get(&url)
            .basic_auth(user, Some(pass))
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| {
                Error::new(
                    FailureClass::Network,
                    format!("{url}: {}", classify::request_error_text(&e)),
                )
            })?;
        let status = resp.status().as_u16();
        let bearer = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer"));
        match status {
            200..=299 => Ok(()),
            401 if bearer => match self.authorise("library/hangar-login-probe", false).await? {
                Some(_) => Ok(()),
                None => Err(Error::new(
                    FailureClass::Auth,
                    format!("login to {}: the registry names no token realm", self.host),
                )),
            },
            code => Err(status_error(
                code,
                Side::Destination,
                &format!("login to {}", self.host),
            )),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Fails, at once and without retries, when the registry did not answer `/v2/` at
    /// connect (one probe per registry and process): a closed port or a misspelt host
    /// costs seconds, not a round of retries per request.
    pub fn reachable(&self) -> Result<()> {
        match &self.unreachable {
            None => Ok(()),
            Some(why) => Err(Error::new(
                FailureClass::Network,
                format!("registry {} cannot be reached: {why}", self.host),
            )),
        }
    }

    /// Whether requests about `repo` check the registry's certificate.
    fn checks_certificates(&self, repo: &str) -> Result<bool> {
        Ok(match &self.other {
            None => !self.insecure,
            Some(_) => !conf::RegistriesConf::global()?.insecure_repo(&self.host, repo),
        })
    }

    /// The client for requests about `repo`: the host's, or the other kind where a
    /// repository prefix in registries.conf says otherwise. A repository that must be
    /// reached securely is refused when the registry speaks only plain HTTP.
    pub(super) fn client_for(&self, repo: &str) -> Result<&reqwest::Client> {
        let Some(other) = &self.other else {
            return Ok(&self.http);
        };
        let lax = conf::RegistriesConf::global()?.insecure_repo(&self.host, repo);
        if !lax && self.scheme == "http" {
            return Err(Error::new(
                FailureClass::InvalidInput,
                format!(
                    "{}/{repo}: the registry speaks plain HTTP, and registries.conf marks only some of its repositories insecure, not this one",
                    self.host
                ),
            ));
        }
        Ok(if lax == self.insecure {
            &self.http
        } else {
            other
        })
    }

    /// The registry's address for `path` (starting with `/v2/`).
    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.api_host)
    }

    /// The address of `rest` under repository `repo` (`/v2/<repo>/<rest>`). Every request
    /// naming a repository is built here, and a repository outside distribution's grammar
    /// is refused: the URL would resolve a `..` or `.` segment away and reach another
    /// repository than the one a policy (the API's, a worker's sign scope) checked.
    fn repo_url(&self, repo: &str, rest: &str) -> Result<String> {
        crate::reference::validate_repository(repo)
            .map_err(|e| e.context(format!("{}: refused", self.host)))?;
        Ok(self.url(&format!("/v2/{repo}/{rest}")))
    }

    /// A manifest's address: `reference` is a digest or a tag in distribution's grammar
    /// (a tag a registry listed is not trusted to be one).
    fn manifest_url(&self, repo: &str, reference: &str) -> Result<String> {
        if reference.parse::<crate::digest::Digest>().is_err() {
            crate::reference::validate_tag(reference)
                .map_err(|e| e.context(format!("{}/{repo}: refused", self.host)))?;
        }
        self.repo_url(repo, &format!("manifests/{reference}"))
    }

    /// Whether `url` is the registry's own (same scheme, host and port): only there are
    /// credentials sent. An upload location or a tag page elsewhere gets none.
    fn is_own(&self, url: &reqwest::Url) -> bool {
        let own = reqwest::Url::parse(&self.url("/"));
        own.is_ok_and(|own| {
            url.scheme() == own.scheme()
                && url
                    .host_str()
                    .zip(own.host_str())
                    .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
                && url.port_or_known_default() == own.port_or_known_default()
        })
    }
}

/// An HTTP client for `host`: its CAs and client certificate, certificate checks on unless
/// `insecure`, connections bounded.
fn http_client(host: &str, trust: &certs::Trust, insecure: bool) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .tls_danger_accept_invalid_certs(insecure)
        // No read timeout here: reqwest's runs from the send to the answer's head, so it
        // would cut an upload whose body takes longer. Each request bounds its answer;
        // a blob's body is bounded between chunks (`blobs::idle_bounded`).
        .connect_timeout(Duration::from_secs(30));
    for pem in &trust.cas {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| Error::invalid(format!("{host}: a CA certificate: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    if let Some(client) = &trust.client {
        let identity = reqwest::Identity::from_pem(&client.pem).map_err(|e| {
            Error::invalid(format!(
                "{}: not a usable client certificate and key: {e}",
                client.cert.display()
            ))
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| Error::internal(format!("http client: {e}")))
}

/// Where a registry's API really lives: Docker Hub's is `index.docker.io`.
fn api_host(host: &str) -> String {
    match host {
        "docker.io" => "index.docker.io".to_owned(),
        other => other.to_owned(),
    }
}
