//! A registry, over oci-client: anonymous, basic or bearer-token auth (oci-client answers
//! the `WWW-Authenticate` challenge), plain HTTP or TLS with or without verification,
//! streamed blobs, raw manifests. oci-client does not retry; [`crate::retry`] does, on the
//! failure classes this module assigns.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::manifest::{ACCEPTED, Descriptor, RawManifest};
use crate::ratelimit::Permit;
use crate::retry::RetryPolicy;
use crate::verify::{ByteStream, verified};

pub const USER_AGENT: &str = concat!("hangar-fleet/", env!("CARGO_PKG_VERSION"));

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `--tls-verify`: `Some(false)` skips certificate checks and allows plain HTTP.
    pub tls_verify: Option<bool>,
    pub retry: RetryPolicy,
    /// Fleet-wide rate control: asked before each request, told about each 429.
    pub gate: Option<std::sync::Arc<dyn crate::ratelimit::Gate>>,
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
        let insecure = opts.tls_verify == Some(false);
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .tls_danger_accept_invalid_certs(insecure)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::internal(format!("http client: {e}")))?;
        let scheme = if insecure {
            probe_scheme(&http, host).await
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
        let challenged = challenges(&http, scheme, &api_host).await;
        // Credentials are always handed over: a registry may read anonymously at `/v2/`
        // and still want them for pushes.
        if challenged || matches!(auth, RegistryAuth::Basic(..)) {
            client.store_auth_if_needed(&api_host, &auth).await;
        }
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
        let permit = self.admit(call.requests).await;
        let started = Instant::now();
        let answer = request.await;
        // Timed to the answer, not to the Retry-After probe or_fail may add.
        let elapsed = started.elapsed();
        let result = self
            .or_fail(answer, call.side, call.what, call.r, call.access)
            .await;
        self.observe(call.op, elapsed, result.as_ref().err().map(|e| e.class))
            .await;
        result.map(|v| (v, permit))
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
                self.client
                    .auth(&probe, &self.auth, RegistryOperation::Pull)
                    .await
                    .map(drop)
                    .map_err(|e| classify(e, Side::Destination, &self.host))
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
            req = match (self.client.auth(r, &self.auth, op).await, &self.auth) {
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

    /// The manifest at `reference` (tag or digest), verified when asked for by digest.
    pub async fn manifest(&self, repo: &str, reference: &str, side: Side) -> Result<RawManifest> {
        let r = self.reference(repo, reference);
        let expected: Option<Digest> = reference.parse().ok();
        let what = format!("{}/{repo}:{reference}", self.host);
        self.retry
            .run(&format!("get manifest {what}"), || async {
                let ((bytes, _), _) = self
                    .send(
                        Call::pull("manifest-get", side, &what, &r),
                        self.client.pull_manifest_raw(&r, &self.auth, ACCEPTED),
                    )
                    .await?;
                RawManifest::from_bytes(bytes, expected.as_ref()).map_err(|e| e.context(&what))
            })
            .await
    }

    /// Like [`Self::manifest`], with "not found" as `None`.
    pub async fn manifest_opt(
        &self,
        repo: &str,
        reference: &str,
        side: Side,
    ) -> Result<Option<RawManifest>> {
        match self.manifest(repo, reference, side).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.class == FailureClass::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &RawManifest,
    ) -> Result<()> {
        let r = self.reference(repo, reference);
        let what = format!("{}/{repo}:{reference}", self.host);
        let content_type: reqwest::header::HeaderValue =
            manifest.media_type.parse().map_err(|_| {
                Error::invalid(format!(
                    "media type {:?} is not a valid header",
                    manifest.media_type
                ))
            })?;
        self.retry
            .run(&format!("put manifest {what}"), || async {
                self.send(
                    Call::push("manifest-put", &what, &r),
                    self.client
                        .push_manifest_raw(&r, manifest.bytes.clone(), content_type.clone()),
                )
                .await
                .map(drop)
                .map_err(transient_rejection)
            })
            .await
            .map_err(|mut e| {
                if e.message.starts_with(TRANSIENT_REJECTION) {
                    e.class = FailureClass::DestinationRejected;
                }
                e
            })
    }

    pub async fn blob_exists(&self, repo: &str, digest: &Digest, side: Side) -> Result<bool> {
        let r = self.repo_ref(repo);
        let what = format!("{}/{repo}@{digest}", self.host);
        self.retry
            .run(&format!("head blob {what}"), || async {
                self.send(
                    Call::pull("blob-head", side, &what, &r),
                    self.client.blob_exists(&r, &digest.to_string()),
                )
                .await
                .map(|(found, _)| found)
            })
            .await
    }

    /// Opens a blob as a stream verified against `desc` (size and digest). One attempt:
    /// the caller retries the whole copy, since a consumed stream cannot be replayed.
    pub async fn blob_stream(
        &self,
        repo: &str,
        desc: &Descriptor,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<ByteStream> {
        let r = self.repo_ref(repo);
        let what = format!("{}/{repo}@{}", self.host, desc.digest);
        let digest = desc.digest.to_string();
        // A whole-blob range request: oci-client does not re-hash a 206 answer, and
        // `verified` below hashes every byte once. A registry that ignores Range answers
        // 200, which oci-client verifies as well.
        let request = async {
            if desc.size == 0 {
                self.client.pull_blob_stream(&r, digest.as_str()).await
            } else {
                match self
                    .client
                    .pull_blob_stream_partial(&r, digest.as_str(), 0, Some(desc.size))
                    .await
                {
                    Ok(BlobResponse::Full(s) | BlobResponse::Partial(s)) => Ok(s),
                    Err(e) => Err(e),
                }
            }
        };
        let (sized, permit) = self
            .send(Call::pull("blob-get", Side::Source, &what, &r), request)
            .await?;
        let what_stream = what.clone();
        let raw = sized
            .stream
            // The request holds its concurrency slot until its body is read or dropped.
            .inspect(move |_| {
                let _held = &permit;
            })
            .map_err(move |e| {
                // oci-client checks the digest at the end of the stream too.
                let class = match e
                    .get_ref()
                    .map(|inner| inner.is::<oci_client::errors::DigestError>())
                {
                    Some(true) => FailureClass::DigestMismatch,
                    _ => FailureClass::Network,
                };
                Error::new(class, format!("reading {what_stream}: {e}"))
            })
            .boxed();
        Ok(verified(raw, desc.digest.clone(), desc.size, progress))
    }

    /// Uploads a blob from a stream in one PUT with a known length. If the stream fails
    /// (including a digest mismatch on its last chunk) the upload is abandoned unfinished.
    pub async fn push_blob(&self, repo: &str, desc: &Descriptor, stream: ByteStream) -> Result<()> {
        let r = self.repo_ref(repo);
        let what = format!("{}/{repo}@{}", self.host, desc.digest);
        let failure = Arc::new(std::sync::Mutex::new(None::<Error>));
        let seen = failure.clone();
        let body = stream.map_err(move |e: Error| {
            let msg = e.message.clone();
            if let Ok(mut slot) = seen.lock() {
                *slot = Some(e);
            }
            OciDistributionError::GenericError(Some(msg))
        });
        // An upload is a POST and a PUT.
        let res = self
            .send(
                Call {
                    requests: 2,
                    ..Call::push("blob-put", &what, &r)
                },
                self.client
                    .push_blob_stream(&r, body, &desc.digest.to_string(), Some(desc.size)),
            )
            .await;
        if let Some(e) = failure.lock().ok().and_then(|mut s| s.take()) {
            return Err(e);
        }
        res.map(drop)
    }

    /// Cross-repository mount. `Ok(false)` when the registry declined (it then expects an
    /// ordinary upload).
    pub async fn mount_blob(&self, repo: &str, from_repo: &str, digest: &Digest) -> Result<bool> {
        let r = self.repo_ref(repo);
        let from = self.repo_ref(from_repo);
        let _permit = self.admit(1).await;
        let started = Instant::now();
        let mounted = self.client.mount_blob(&r, &from, &digest.to_string()).await;
        let result = match mounted {
            Ok(()) => Ok(true),
            Err(
                OciDistributionError::SpecViolationError(_)
                | OciDistributionError::RegistryNoLocationError,
            ) => Ok(false),
            Err(e) => {
                let e = classify(
                    e,
                    Side::Destination,
                    &format!("{}/{repo} mount {digest} from {from_repo}", self.host),
                );
                // Any other refusal is a decline: the caller uploads instead.
                if e.class.is_retryable() || e.class == FailureClass::Auth {
                    Err(e)
                } else {
                    Ok(false)
                }
            }
        };
        let class = result.as_ref().err().map(|e| e.class);
        self.observe("blob-mount", started.elapsed(), class).await;
        if class == Some(FailureClass::RateLimited)
            && let Some(g) = &self.gate
        {
            g.back_off(&self.host, Duration::from_secs(1)).await;
        }
        result
    }

    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let r = self.repo_ref(repo);
        let what = format!("{}/{repo}", self.host);
        let mut tags = self
            .retry
            .run(&format!("list tags {what}"), || async {
                self.send(
                    Call::pull("tags", Side::Source, &what, &r),
                    self.client.list_tags(&r, &self.auth, None, None),
                )
                .await
                .map(|(t, _)| t.tags)
            })
            .await?;
        tags.sort();
        Ok(tags)
    }

    /// Deletes a manifest by digest (oci-client has no DELETE; the token comes from it).
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<()> {
        let r = self.reference(repo, &digest.to_string());
        let what = format!("{}/{repo}@{digest}", self.host);
        let token = self
            .client
            .auth(&r, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| classify(e, Side::Destination, &what))?;
        let url = format!(
            "{}://{}/v2/{repo}/manifests/{digest}",
            self.scheme, self.api_host
        );
        let mut req = self.http.delete(&url);
        req = match (&token, &self.auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
            _ => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| Error::new(FailureClass::Network, format!("delete {what}: {e}")))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            code => Err(status_error(
                code,
                Side::Destination,
                &format!("delete {what}"),
            )),
        }
    }
}

/// One request, as the gate, the metrics and the error messages name it.
struct Call<'a> {
    op: &'static str,
    /// How many requests it makes (an upload is two).
    requests: u32,
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
            side: Side::Destination,
            what,
            r,
            access: RegistryOperation::Push,
        }
    }
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3), relative to `now`.
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

const TRANSIENT_REJECTION: &str = "rejected, perhaps while the same content was being written: ";

/// distribution answers `DIGEST_INVALID` / `MANIFEST_BLOB_UNKNOWN` to a manifest PUT that
/// races an identical write (its storage is not atomic there); such a rejection is worth
/// retrying. A truly missing blob still fails once the retries are spent.
fn transient_rejection(e: Error) -> Error {
    let racy = e.class == FailureClass::DestinationRejected
        && (e.message.contains("DIGEST_INVALID") || e.message.contains("MANIFEST_BLOB_UNKNOWN"));
    if racy {
        Error::new(
            FailureClass::Server,
            format!("{TRANSIENT_REJECTION}{}", e.message),
        )
    } else {
        e
    }
}

/// Whether the registry answers `/v2/` with an auth challenge (or cannot be asked).
async fn challenges(http: &reqwest::Client, scheme: &str, host: &str) -> bool {
    let url = format!("{scheme}://{host}/v2/");
    match tokio::time::timeout(Duration::from_secs(10), http.get(&url).send()).await {
        Ok(Ok(resp)) => {
            resp.status() == reqwest::StatusCode::UNAUTHORIZED
                || resp
                    .headers()
                    .contains_key(reqwest::header::WWW_AUTHENTICATE)
        }
        _ => true,
    }
}

async fn probe_scheme(http: &reqwest::Client, host: &str) -> &'static str {
    let url = format!("https://{host}/v2/");
    match tokio::time::timeout(Duration::from_secs(10), http.get(&url).send()).await {
        Ok(Ok(_)) => "https",
        _ => {
            tracing::debug!(host, "registry does not answer over TLS; using plain HTTP");
            "http"
        }
    }
}

fn status_error(code: u16, side: Side, what: &str) -> Error {
    let class = match code {
        401 | 403 => FailureClass::Auth,
        404 => FailureClass::NotFound,
        429 => FailureClass::RateLimited,
        500..=599 => FailureClass::Server,
        415 => FailureClass::UnsupportedMediaType,
        _ if side == Side::Destination => FailureClass::DestinationRejected,
        _ => FailureClass::InvalidInput,
    };
    Error::new(class, format!("{what}: HTTP {code}"))
}

/// A request error's text without its URL: a redirected blob URL may be pre-signed, and
/// its signature must not reach logs or events.
fn request_error_text(re: &reqwest::Error) -> String {
    let mut text = match re.status() {
        Some(status) => format!("HTTP {status}"),
        None if re.is_timeout() => "timed out".to_owned(),
        None if re.is_connect() => "cannot connect".to_owned(),
        None => "request failed".to_owned(),
    };
    let mut source = std::error::Error::source(re);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Assigns a [`FailureClass`] to an oci-client error.
pub fn classify(err: OciDistributionError, side: Side, what: &str) -> Error {
    use OciDistributionError as E;
    let (class, detail) = match &err {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
            (FailureClass::Auth, err.to_string())
        }
        E::ImageManifestNotFoundError(_) => (FailureClass::NotFound, err.to_string()),
        E::RegistryError { envelope, .. } => {
            let class = envelope
                .errors
                .first()
                .map(|e| match &e.code {
                    OciErrorCode::BlobUnknown
                    | OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUploadUnknown => FailureClass::NotFound,
                    OciErrorCode::Unauthorized | OciErrorCode::Denied => FailureClass::Auth,
                    OciErrorCode::Toomanyrequests => FailureClass::RateLimited,
                    OciErrorCode::DigestInvalid if side == Side::Source => {
                        FailureClass::DigestMismatch
                    }
                    _ if side == Side::Destination => FailureClass::DestinationRejected,
                    _ => FailureClass::InvalidInput,
                })
                .unwrap_or(FailureClass::Internal);
            let msgs: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            (class, msgs.join("; "))
        }
        E::ServerError { code, message, .. } => {
            let e = status_error(*code, side, what);
            let msg = message.trim();
            // The body is the server's: cut it on a character boundary.
            let msg = match msg.char_indices().nth(200) {
                Some((end, _)) => &msg[..end],
                None => msg,
            };
            (e.class, format!("HTTP {code} {msg}"))
        }
        E::RequestError(re) => {
            let class = if re.is_connect()
                || re.is_timeout()
                || re.is_request()
                || re.is_body()
                || re.is_decode()
            {
                FailureClass::Network
            } else {
                match re.status() {
                    Some(s) => status_error(s.as_u16(), side, what).class,
                    None => FailureClass::Network,
                }
            };
            (class, request_error_text(re))
        }
        E::IoError(_) => (FailureClass::Network, err.to_string()),
        E::DigestError(_) => (FailureClass::DigestMismatch, err.to_string()),
        E::UnsupportedMediaTypeError(_) | E::IncompatibleLayerMediaTypeError(_) => {
            (FailureClass::UnsupportedMediaType, err.to_string())
        }
        E::SpecViolationError(_) | E::RegistryNoLocationError | E::RegistryNoDigestError
            if side == Side::Destination =>
        {
            (FailureClass::DestinationRejected, err.to_string())
        }
        _ => (FailureClass::Internal, err.to_string()),
    };
    Error::new(class, format!("{what}: {detail}"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::parse_retry_after;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_784_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", SystemTime::now()), None);
    }
}
