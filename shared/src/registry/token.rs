//! Bearer tokens: from the realm checked at connect ([`super::challenge::check_realm`]),
//! under the request timeout, the answer read up to 4 MiB, reused for a while per
//! repository and access.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::classify::{classify_answer, request_error_text};
use super::fetch::read_capped;
use super::{MAX_MANIFEST_BYTES, Side};
use crate::error::{Error, FailureClass, Result};

/// How long a token is reused. Registries issue them for at least 60 s (the token spec's
/// default).
pub(super) const TOKEN_REUSE: Duration = Duration::from_secs(45);

/// A registry's token service: where to ask, with what, and what it gave.
pub(super) struct TokenService {
    realm: String,
    service: Option<String>,
    creds: Option<(String, String)>,
    /// By (repository, push): the token and when it was issued, behind a lock of its own
    /// that a fetch holds, so that requests asking at once share one fetch.
    cache: std::sync::Mutex<HashMap<(String, bool), Arc<Slot>>>,
}

type Slot = tokio::sync::Mutex<Option<(String, Instant)>>;

impl TokenService {
    pub(super) fn new(
        realm: String,
        service: Option<String>,
        creds: Option<(String, String)>,
    ) -> Self {
        Self {
            realm,
            service,
            creds,
            cache: Default::default(),
        }
    }

    /// A token for `repo` (pull, or pull and push).
    pub(super) async fn token(
        &self,
        http: &reqwest::Client,
        host: &str,
        repo: &str,
        push: bool,
        timeout: Duration,
    ) -> Result<String> {
        let key = (repo.to_owned(), push);
        let slot = match self.cache.lock() {
            Ok(mut cache) => cache.entry(key).or_default().clone(),
            Err(_) => return Err(Error::internal("token cache poisoned")),
        };
        let mut held = slot.lock().await;
        if let Some((token, at)) = held.as_ref()
            && at.elapsed() < TOKEN_REUSE
        {
            return Ok(token.clone());
        }
        let what = format!("{host}/{repo}: token from {}", self.realm_host());
        let token = tokio::time::timeout(timeout, self.fetch(http, repo, push, &what))
            .await
            .map_err(|_| {
                Error::new(
                    FailureClass::Network,
                    format!("{what}: no complete answer within {}s", timeout.as_secs()),
                )
            })??;
        *held = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Forgets `repo`'s tokens (the registry refused one).
    pub(super) async fn forget(&self, repo: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|(r, _), _| r != repo);
        }
    }

    fn realm_host(&self) -> String {
        reqwest::Url::parse(&self.realm)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        repo: &str,
        push: bool,
        what: &str,
    ) -> Result<String> {
        let scope = if push {
            format!("repository:{repo}:pull,push")
        } else {
            format!("repository:{repo}:pull")
        };
        let mut url = reqwest::Url::parse(&self.realm)
            .map_err(|e| Error::new(FailureClass::Auth, format!("{what}: {e}")))?;
        url.query_pairs_mut().append_pair("scope", &scope);
        if let Some(s) = &self.service {
            url.query_pairs_mut().append_pair("service", s);
        }
        let mut req = http.get(url);
        if let Some((user, pass)) = &self.creds {
            req = req.basic_auth(user, Some(pass));
        }
        let resp = req.send().await.map_err(|e| {
            Error::new(
                FailureClass::Network,
                format!("{what}: {}", request_error_text(&e)),
            )
        })?;
        let status = resp.status().as_u16();
        let body = read_capped(resp, MAX_MANIFEST_BYTES, what).await?;
        if !(200..300).contains(&status) {
            let mut e = classify_answer(status, &body, Side::Source, what);
            // The realm refusing the credentials is the credentials' fault, whatever the
            // status it chose for it.
            if matches!(status, 400 | 401 | 403) {
                e.class = FailureClass::Auth;
            }
            return Err(e);
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            Error::new(
                FailureClass::Auth,
                format!("{what}: not a token answer: {e}"),
            )
        })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::new(
                    FailureClass::Auth,
                    format!("{what}: the answer holds no token"),
                )
            })
    }
}
