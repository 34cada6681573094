//! Manifests, tag pages and blob sizes read by our own request rather than oci-client's
//! (which reads any body whole, drops the `Link` header of a tag page, and does not say a
//! blob's size):
//! authorised as oci-client would (a bearer token from the registry's token service, Basic
//! credentials, or nothing), the answer read up to [`MAX_MANIFEST_BYTES`] as it streams, an
//! error answer's body up to 64 KiB for its message, a stale token renewed once.

use oci_client::RegistryOperation;
use oci_client::secrets::RegistryAuth;

use super::classify::{self, classify_answer, parse_retry_after};
use super::{MAX_ERROR_BODY, MAX_MANIFEST_BYTES, Registry, Side};
use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::manifest::ACCEPTED;

impl Registry {
    /// One manifest GET of our own (oci-client reads any body whole): the answer's body is
    /// read up to [`MAX_MANIFEST_BYTES`].
    pub(super) async fn fetch_manifest(
        &self,
        repo: &str,
        reference: &str,
        side: Side,
        what: &str,
    ) -> Result<bytes::Bytes> {
        let url = format!(
            "{}://{}/v2/{repo}/manifests/{reference}",
            self.scheme, self.api_host
        );
        let accept = ACCEPTED.join(", ");
        let resp = self
            .pull_send(reqwest::Method::GET, &url, Some(&accept), repo, side, what)
            .await?;
        read_capped(resp, MAX_MANIFEST_BYTES, what).await
    }

    /// One page of `repo`'s tags by our own request (oci-client drops the `Link` header that
    /// says more follow): `None` when the registry says, or the count suggests, there are
    /// more than this page.
    pub(super) async fn fetch_tags_page(
        &self,
        repo: &str,
        n: usize,
        what: &str,
    ) -> Result<Option<Vec<String>>> {
        let url = format!(
            "{}://{}/v2/{repo}/tags/list?n={n}",
            self.scheme, self.api_host
        );
        let resp = self
            .pull_send(reqwest::Method::GET, &url, None, repo, Side::Source, what)
            .await?;
        let paged = resp.headers().contains_key(reqwest::header::LINK);
        let body = read_capped(resp, MAX_MANIFEST_BYTES, what).await?;
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let page: Page = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid(format!("{what}: not a tag list: {e}")))?;
        let tags = page.tags.unwrap_or_default();
        Ok((!paged && tags.len() < n).then_some(tags))
    }

    /// A blob's size by a HEAD request of our own (oci-client's says only whether it is
    /// there): `None` when the registry does not hold it. What a schema 1 manifest does not
    /// say, and a verified read needs.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let url = format!(
            "{}://{}/v2/{repo}/blobs/{digest}",
            self.scheme, self.api_host
        );
        let what = format!("{}/{repo}@{digest}", self.host);
        self.retry
            .run(&format!("head blob {what}"), || async {
                let head =
                    self.pull_send(reqwest::Method::HEAD, &url, None, repo, Side::Source, &what);
                match self.own_request("blob-head", &what, head).await {
                    // The header itself: reqwest's `content_length` is the body's, none
                    // for a HEAD.
                    Ok(resp) => resp
                        .headers()
                        .get(reqwest::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Some)
                        .ok_or_else(|| {
                            Error::invalid(format!(
                                "{what}: the registry did not say the blob's size"
                            ))
                        }),
                    Err(e) if e.class == FailureClass::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// One request of our own under the gate (oci-client's go through [`Registry::send`]):
    /// admitted, bounded by the request timeout, timed for the gate, and a 429 holding the
    /// fleet back from the registry.
    pub(super) async fn own_request<T>(
        &self,
        op: &'static str,
        what: &str,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let _permit = self.admit(1).await;
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
        if let Err(e) = &answer
            && e.class == FailureClass::RateLimited
            && let Some(g) = &self.gate
        {
            let wait = e.retry_after.unwrap_or(std::time::Duration::from_secs(1));
            g.back_off(&self.host, wait).await;
        }
        answer
    }

    /// A request of `url` authorised to pull `repo`: a 2xx answer, its body unread; an error
    /// answer classified from its status and body (read up to 64 KiB); a stale pull token
    /// renewed once.
    async fn pull_send(
        &self,
        method: reqwest::Method,
        url: &str,
        accept: Option<&str>,
        repo: &str,
        side: Side,
        what: &str,
    ) -> Result<reqwest::Response> {
        let mut renewed = false;
        loop {
            let mut req = self.http.request(method.clone(), url);
            if let Some(accept) = accept {
                req = req.header(reqwest::header::ACCEPT, accept);
            }
            req = match self.pull_auth(repo).await? {
                Some(PullAuth::Bearer(t)) => req.bearer_auth(t),
                Some(PullAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
                None => req,
            };
            let resp = req.send().await.map_err(|e| {
                Error::new(
                    FailureClass::Network,
                    format!("{what}: {}", classify::request_error_text(&e)),
                )
            })?;
            let status = resp.status().as_u16();
            if status == 401
                && let Some(tokens) = &self.tokens
                && !renewed
            {
                tokens.forget(repo).await;
                renewed = true;
                continue;
            }
            if !(200..300).contains(&status) {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                let body = read_capped(resp, MAX_ERROR_BODY, what)
                    .await
                    .unwrap_or_default();
                let mut e = classify_answer(status, &body, side, what);
                e.retry_after = retry_after;
                return Err(e);
            }
            return Ok(resp);
        }
    }

    /// How to authorise a pull of `repo`: a bearer token from the registry's token service,
    /// Basic credentials, or nothing for a registry that challenges nobody.
    async fn pull_auth(&self, repo: &str) -> Result<Option<PullAuth>> {
        let r = self.repo_ref(repo);
        if let Some(token) = self.authorise(&r, RegistryOperation::Pull).await? {
            return Ok(Some(PullAuth::Bearer(token)));
        }
        Ok(match &self.auth {
            RegistryAuth::Basic(u, p) if self.challenged => {
                Some(PullAuth::Basic(u.clone(), p.clone()))
            }
            _ => None,
        })
    }
}

/// How one manifest read is authorised.
enum PullAuth {
    Bearer(String),
    Basic(String, String),
}

/// Reads a body of at most `cap` bytes; a longer one (by its `Content-Length`, or as it
/// streams) is refused without reading further.
pub(super) async fn read_capped(
    mut resp: reqwest::Response,
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::{Registry, RegistryOptions};

    /// A registry of two repositories' tag lists: `paged` says more follow (a `Link`
    /// header), `whole` does not. Answers every request on a connection, kept alive.
    async fn registry() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // A TLS handshake (the client tries https first): not spoken here.
                        if buf.first() == Some(&0x16) {
                            return;
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                            let (link, body) = if path.starts_with("/v2/paged/tags/list") {
                                (
                                    "Link: </v2/paged/tags/list?n=1000&last=b>; rel=\"next\"\r\n",
                                    r#"{"name":"paged","tags":["a","b"]}"#,
                                )
                            } else if path.starts_with("/v2/whole/tags/list") {
                                ("", r#"{"name":"whole","tags":["a","b"]}"#)
                            } else {
                                ("", "{}")
                            };
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{link}Content-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if conn.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_tag_page_the_registry_says_continues_is_not_taken_for_the_whole_list() {
        let addr = registry().await;
        let opts = RegistryOptions {
            tls_verify: Some(false),
            ..Default::default()
        };
        let reg = Registry::connect(&addr, &opts, None)
            .await
            .expect("connect");
        assert_eq!(
            reg.tags_upto("whole", 1000).await.expect("whole"),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(reg.tags_upto("paged", 1000).await.expect("paged"), None);
        // A full page may be followed by more, whatever the registry says.
        assert_eq!(reg.tags_upto("whole", 2).await.expect("full page"), None);
    }
}
