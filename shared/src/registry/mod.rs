//! A registry, over oci-client: anonymous, basic or bearer-token auth (oci-client answers
//! the `WWW-Authenticate` challenge), plain HTTP or TLS with or without verification,
//! streamed blobs, raw manifests. oci-client does not retry; [`crate::retry`] does, on the
//! failure classes this module assigns ([`classify`]). Manifests are read by our own
//! bounded request ([`Registry::manifest`]): at most 4 MiB, under the request timeout,
//! classified by status first.

mod blobs;
mod certs;
mod challenge;
mod classify;
mod conf;
pub use conf::RegistriesConf;
mod fetch;
mod manifests;
mod token;

pub use classify::classify;
use classify::{parse_retry_after, status_error};

use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

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
    client: Client,
    auth: RegistryAuth,
    retry: RetryPolicy,
    /// Also used for the few calls oci-client lacks (manifest DELETE).
    http: reqwest::Client,
    scheme: &'static str,
    /// The registry asks for credentials (a `WWW-Authenticate` challenge on `/v2/`).
    challenged: bool,
    /// Where the API really lives (`index.docker.io` for `docker.io`).
    api_host: String,
    gate: Option<std::sync::Arc<dyn crate::ratelimit::Gate>>,
    request_timeout: Duration,
    /// The registry's bearer-token service, when it names one: every token comes from it.
    tokens: Option<token::TokenService>,
    /// Why the registry did not answer `/v2/` at connect, if it did not.
    unreachable: Option<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({}://{})", self.scheme, self.host)
    }
}

impl Registry {
    /// Connects to `host`, deciding the scheme once: TLS, or with `--tls-verify=false`
    /// plain HTTP when the registry does not speak TLS.
    pub async fn connect(
        host: &str,
        opts: &RegistryOptions,
        creds: Option<Credentials>,
    ) -> Result<Self> {
        let insecure = match opts.tls_verify {
            Some(verify) => !verify,
            // Left out: registries.conf decides, as containers/image does.
            None => conf::RegistriesConf::global()?.insecure(host),
        };
        let cas = match certs::dir_for(host, opts.cert_dir.as_deref()) {
            Some(dir) => {
                tracing::debug!(host, dir = %dir.display(), "trusting the CA certificates there");
                certs::cas(&dir)?
            }
            None => Vec::new(),
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .tls_danger_accept_invalid_certs(insecure)
            .connect_timeout(Duration::from_secs(30));
        for pem in &cas {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| Error::invalid(format!("{host}: a CA certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| Error::internal(format!("http client: {e}")))?;
        let scheme = if insecure {
            challenge::probe_scheme(&http, host).await
        } else {
            "https"
        };
        let config = ClientConfig {
            protocol: if scheme == "http" {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: insecure,
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            user_agent: USER_AGENT,
            platform_resolver: None,
            extra_root_certificates: cas
                .into_iter()
                .map(|data| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data,
                })
                .collect(),
            ..Default::default()
        };
        let client = Client::try_from(config).map_err(|e| classify(e, Side::Source, host))?;
        let auth = match creds {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        // oci-client asks `/v2/` for a challenge before every request of a registry it holds
        // auth for, and caches nothing when there is none. A registry that challenges
        // nobody therefore gets no auth at all: that saves a round trip per request.
        let probe = Reference::with_tag(host.to_owned(), "library/probe".into(), "latest".into());
        let api_host = probe.resolve_registry().to_owned();
        let probed = challenge::probe(&http, scheme, &api_host).await;
        let challenged = probed.challenged;
        let unreachable = probed.unreachable.clone();
        let creds = match &auth {
            RegistryAuth::Basic(u, p) => Some((u.clone(), p.clone())),
            _ => None,
        };
        let tokens = match probed.realm {
            Some(realm) => {
                challenge::check_realm(&realm, scheme, &api_host)?;
                // oci-client gets every token from us before the request that needs it
                // (`Registry::authorise`); what it stores for the registry is only ever
                // consulted if that token left its cache, and then fails rather than
                // sending the credentials anywhere.
                client
                    .store_auth_if_needed(&api_host, &RegistryAuth::Bearer(String::new()))
                    .await;
                Some(token::TokenService::new(realm, probed.service, creds))
            }
            None => {
                // Credentials are always handed over: a registry may read anonymously at
                // `/v2/` and still want them (Basic) for pushes.
                if challenged || creds.is_some() {
                    client.store_auth_if_needed(&api_host, &auth).await;
                }
                None
            }
        };
        Ok(Self {
            host: host.to_owned(),
            client,
            auth,
            retry: opts.retry.clone(),
            http,
            scheme,
            challenged,
            api_host,
            gate: opts.gate.clone(),
            request_timeout: opts.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            tokens,
            unreachable,
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

    /// Sends one request under the gate: waits to be admitted, times it to its answer,
    /// turns a failure into ours (holding the fleet back on a 429) and tells the gate how it
    /// went. The permit comes back with the answer, for a body still to be read.
    async fn send<T>(
        &self,
        call: Call<'_>,
        request: impl std::future::Future<Output = std::result::Result<T, OciDistributionError>>,
    ) -> Result<(T, Permit)> {
        self.authorise(call.r, call.access).await?;
        let permit = self.admit(call.requests).await;
        let started = Instant::now();
        let answer = match call.bounded {
            true => match tokio::time::timeout(self.request_timeout, request).await {
                Ok(answer) => answer,
                Err(_) => {
                    let e = self.timed_out(call.what);
                    self.observe(call.op, started.elapsed(), Some(e.class))
                        .await;
                    return Err(e);
                }
            },
            false => request.await,
        };
        // Timed to the answer, not to the Retry-After probe or_fail may add.
        let elapsed = started.elapsed();
        let result = self
            .or_fail(answer, call.side, call.what, call.r, call.access)
            .await;
        self.observe(call.op, elapsed, result.as_ref().err().map(|e| e.class))
            .await;
        result.map(|v| (v, permit))
    }

    /// Makes sure oci-client holds a bearer token for `r`'s repository and `op` before a
    /// request that needs one, fetching it ourselves (bounded, from the checked realm).
    /// Gives the token, for our own requests; `None` for a registry without a token service.
    async fn authorise(&self, r: &Reference, op: RegistryOperation) -> Result<Option<String>> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let push = matches!(op, RegistryOperation::Push);
        let (token, fresh) = tokens
            .token(
                &self.http,
                &self.host,
                r.repository(),
                push,
                self.request_timeout,
            )
            .await?;
        if fresh {
            // With a Bearer auth oci-client asks nobody: it only files the token under
            // (registry, repository, operation) for the requests that follow.
            let _ = self
                .client
                .auth(r, &RegistryAuth::Bearer(token.clone()), op)
                .await;
        }
        Ok(Some(token))
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
        let RegistryAuth::Basic(user, pass) = &self.auth else {
            return Ok(());
        };
        let url = format!("{}://{}/v2/", self.scheme, self.api_host);
        let resp = self
            .http
            .get(&url)
            .basic_auth(user, Some(pass))
            .send()
            .await
            .map_err(|e| Error::new(FailureClass::Network, format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let bearer = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer"));
        match status {
            200..=299 => Ok(()),
            401 if bearer => {
                let probe = self.repo_ref("library/hangar-login-probe");
                match self.authorise(&probe, RegistryOperation::Pull).await? {
                    Some(_) => Ok(()),
                    None => Err(Error::new(
                        FailureClass::Auth,
                        format!("login to {}: the registry names no token realm", self.host),
                    )),
                }
            }
            code => Err(status_error(
                code,
                Side::Destination,
                &format!("login to {}", self.host),
            )),
        }
    }

    /// Classifies an oci-client failure. oci-client keeps response headers to itself, so on
    /// a 429 the same URL is asked once more with HEAD, same credentials, for the server's
    /// `Retry-After`, which the retry policy then waits at least.
    async fn or_fail<T>(
        &self,
        res: std::result::Result<T, OciDistributionError>,
        side: Side,
        what: &str,
        r: &Reference,
        op: RegistryOperation,
    ) -> Result<T> {
        let e = match res {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let url = match &e {
            OciDistributionError::ServerError { url, .. }
            | OciDistributionError::RegistryError { url, .. } => Some(url.clone()),
            OciDistributionError::RequestError(re) => re.url().map(|u| u.to_string()),
            _ => None,
        };
        let mut err = classify(e, side, what);
        if err.class == FailureClass::RateLimited
            && let Some(url) = url
        {
            err.retry_after = self.ask_retry_after(&url, r, op).await;
        }
        if err.class == FailureClass::RateLimited
            && let Some(g) = &self.gate
        {
            g.back_off(
                &self.host,
                err.retry_after.unwrap_or(Duration::from_secs(1)),
            )
            .await;
        }
        Err(err)
    }

    async fn ask_retry_after(
        &self,
        url: &str,
        r: &Reference,
        op: RegistryOperation,
    ) -> Option<Duration> {
        let mut req = self.http.head(url);
        // Never hand credentials to another host (a redirect target such as a CDN).
        let same_host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_owned(),
                })
            })
            .is_some_and(|h| h == self.host || h == self.api_host);
        if self.challenged && same_host {
            req = match (self.authorise(r, op).await, &self.auth) {
                (Ok(Some(token)), _) => req.bearer_auth(token),
                (_, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
                _ => req,
            };
        }
        let resp = tokio::time::timeout(Duration::from_secs(5), req.send())
            .await
            .ok()?
            .ok()?;
        let value = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)?
            .to_str()
            .ok()?;
        parse_retry_after(value, std::time::SystemTime::now())
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

    fn reference(&self, repo: &str, reference: &str) -> Reference {
        let registry = self.host.clone();
        if reference.starts_with("sha256:") {
            Reference::with_digest(registry, repo.to_owned(), reference.to_owned())
        } else {
            Reference::with_tag(registry, repo.to_owned(), reference.to_owned())
        }
    }

    fn repo_ref(&self, repo: &str) -> Reference {
        self.reference(repo, "latest")
    }
}

/// One request, as the gate, the metrics and the error messages name it.
struct Call<'a> {
    op: &'static str,
    /// How many requests it makes (an upload is two).
    requests: u32,
    /// Whether the request timeout bounds it (all but an upload, whose body is the blob).
    bounded: bool,
    side: Side,
    what: &'a str,
    r: &'a Reference,
    access: RegistryOperation,
}

impl<'a> Call<'a> {
    fn pull(op: &'static str, side: Side, what: &'a str, r: &'a Reference) -> Self {
        Self {
            op,
            requests: 1,
            bounded: true,
            side,
            what,
            r,
            access: RegistryOperation::Pull,
        }
    }

    fn push(op: &'static str, what: &'a str, r: &'a Reference) -> Self {
        Self {
            op,
            requests: 1,
            bounded: true,
            side: Side::Destination,
            what,
            r,
            access: RegistryOperation::Push,
        }
    }
}
