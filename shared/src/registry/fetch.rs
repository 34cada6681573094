//! The one way a request reaches a registry: authorised (a bearer token from the registry's
//! token service, Basic credentials, or nothing), admitted by the fleet's gate, bounded by
//! the request timeout up to its answer, a non-2xx answer classified from its status and
//! its body (read up to 64 KiB), a stale token renewed once, a 429 holding the fleet back.
//! Bodies are read up to a bound ([`read_capped`]) or streamed by the caller.

use reqwest::{Method, RequestBuilder, Response, Url};

use super::classify::{self, classify_answer, parse_retry_after};
use super::{MAX_ERROR_BODY, MAX_MANIFEST_BYTES, Registry, Side};
use crate::error::{Error, FailureClass, Result};
use crate::manifest::ACCEPTED;
use crate::ratelimit::Permit;

/// What a request is for: its repository and access (which token), the side of the copy
/// it is on (how a 4xx is classified), and its name in messages.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub repo: &'a str,
    pub push: bool,
    pub side: Side,
    pub what: &'a str,
}

impl<'a> Target<'a> {
    pub fn pull(repo: &'a str, side: Side, what: &'a str) -> Self {
        Self {
            repo,
            push: false,
            side,
            what,
        }
    }

    pub fn push(repo: &'a str, what: &'a str) -> Self {
        Self {
            repo,
            push: true,
            side: Side::Destination,
            what,
        }
    }
}

impl Registry {
    /// One manifest GET, its body read up to [`MAX_MANIFEST_BYTES`].
    pub(super) async fn fetch_manifest(
        &self,
        repo: &str,
        reference: &str,
        side: Side,
        what: &str,
    ) -> Result<bytes::Bytes> {
        let url = self.manifest_url(repo, reference)?;
        let accept = ACCEPTED.join(", ");
        let resp = self
            .send(Method::GET, &url, Target::pull(repo, side, what), |r| {
                r.header(reqwest::header::ACCEPT, &accept)
            })
            .await?;
        read_capped(resp, MAX_MANIFEST_BYTES, what).await
    }

    /// One page of tags at `url`: the tags, and the next page's address when the registry
    /// names one (a `Link` header, RFC 8288, as distribution sends it).
    pub(super) async fn fetch_tags_page(
        &self,
        repo: &str,
        url: &str,
        what: &str,
    ) -> Result<(Vec<String>, Option<String>)> {
        let resp = self
            .send(
                Method::GET,
                url,
                Target::pull(repo, Side::Source, what),
                |r| r,
            )
            .await?;
        let next = resp
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link)
            .and_then(|link| resp.url().join(&link).ok());
        // The next page is the registry's own: a hostile registry naming a page elsewhere
        // would have this process ask whatever its network reaches. Its own, not the
        // answer's: an answer redirected elsewhere would make that host its own.
        if let Some(link) = &next
            && !self.is_own(link)
        {
            return Err(Error::invalid(format!(
                "{what}: the registry names the next page of tags on another host ({}); \
                 refused",
                link.host_str().unwrap_or("none")
            )));
        }
        let next = next.map(String::from);
        let body = read_capped(resp, MAX_MANIFEST_BYTES, what).await?;
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let page: Page = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid(format!("{what}: not a tag list: {e}")))?;
        Ok((page.tags.unwrap_or_default(), next))
    }

    /// One request under the gate, bounded by the request timeout up to its answer (see
    /// [`Self::send_held`]).
    pub(super) async fn own_request<T>(
        &self,
        op: &'static str,
        what: &str,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.send_held(op, what, request).await.map(|(v, _)| v)
    }

    /// One request under the gate: admitted, bounded by the request timeout up to its
    /// answer, timed for the gate, a 429 holding the fleet back from the registry. The
    /// permit comes back with the answer, for a body still to be read.
    pub(super) async fn send_held<T>(
        &self,
        op: &'static str,
        what: &str,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> Result<(T, Permit)> {
        let permit = self.admit(1).await;
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.request_timeout, request)
            .await
            .unwrap_or_else(|_| Err(self.timed_out(what)));
        self.observe(
            op,
            started.elapsed(),
            answer.as_ref().err().map(|e| e.class),
        )
        .await;
        self.hold_back_on_429(&answer).await;
        answer.map(|v| (v, permit))
    }

    pub(super) async fn hold_back_on_429<T>(&self, answer: &Result<T>) {
        if let Err(e) = answer
            && e.class == FailureClass::RateLimited
            && let Some(g) = &self.gate
        {
            let wait = e.retry_after.unwrap_or(std::time::Duration::from_secs(1));
            g.back_off(&self.host, wait).await;
        }
    }

    /// Sends `method url` for `target`, built further by `build` (called again when a stale
    /// token is renewed): a 2xx answer, its body unread, or the error the answer means.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &str,
        target: Target<'_>,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let mut renewed = false;
        loop {
            let req = self
                .authorised(
                    self.client_for(target.repo)?.request(method.clone(), url),
                    url,
                    target,
                )
                .await?;
            let resp = build(req).send().await.map_err(|e| network(&e, target))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED
                && let Some(tokens) = &self.tokens
                && !renewed
            {
                tokens.forget(target.repo).await;
                renewed = true;
                continue;
            }
            return answer(resp, target).await;
        }
    }

    /// `req` with the credentials `target` needs, when `url` is the registry's own: a
    /// bearer token, or Basic credentials (for a pull only where the registry asked for
    /// them; a registry may read anonymously and still want them for a push).
    pub(super) async fn authorised(
        &self,
        req: RequestBuilder,
        url: &str,
        target: Target<'_>,
    ) -> Result<RequestBuilder> {
        if !Url::parse(url).is_ok_and(|u| self.is_own(&u)) {
            return Ok(req);
        }
        if let Some(token) = self.authorise(target.repo, target.push).await? {
            return Ok(req.bearer_auth(token));
        }
        Ok(match &self.creds {
            Some((u, p)) if self.challenged || target.push => req.basic_auth(u, Some(p)),
            _ => req,
        })
    }
}

/// A request that got no answer, as a network failure; its text without the URL (a
/// redirected blob URL may be pre-signed, and its signature must not reach logs).
pub(super) fn network(e: &reqwest::Error, target: Target<'_>) -> Error {
    Error::new(
        FailureClass::Network,
        format!("{}: {}", target.what, classify::request_error_text(e)),
    )
}

/// A 2xx answer as it is; any other as the error it means, from its status, its
/// `Retry-After` and the start of its body.
pub(super) async fn answer(resp: Response, target: Target<'_>) -> Result<Response> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let body = read_capped(resp, MAX_ERROR_BODY, target.what)
        .await
        .unwrap_or_default();
    let mut e = classify_answer(status, &body, target.side, target.what);
    e.retry_after = retry_after;
    Err(e)
}

/// The target of a `Link` header's `rel="next"`.
pub(super) fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let next = params.split(';').any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        next.then(|| target.to_owned())
    })
}

/// Reads a body of at most `cap` bytes; a longer one (by its `Content-Length`, or as it
/// streams) is refused without reading further.
pub(super) async fn read_capped(
    mut resp: Response,
    cap: usize,
    what: &str,
) -> Result<bytes::Bytes> {
    let too_big = || {
        Error::invalid(format!(
            "{what}: the answer is larger than {} KiB, the most accepted",
            cap >> 10
        ))
    };
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_big());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        Error::new(
            FailureClass::Network,
            format!("reading {what}: {}", classify::request_error_text(&e)),
        )
    })? {
        if body.len() + chunk.len() > cap {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
