//! What a registry's `/v2/` says before any credentials are sent: which scheme it speaks,
//! whether it challenges, and where its bearer tokens come from. A token realm is where
//! the user's Basic credentials are sent, so it is checked before they go there.

use std::time::Duration;

use super::classify::cut;
use crate::error::{Error, FailureClass};

/// The answer of `/v2/`.
#[derive(Debug, Default)]
pub(super) struct Challenge {
    /// The registry asks for credentials (401, or a `WWW-Authenticate` header).
    pub challenged: bool,
    /// The `realm` of a `Bearer` challenge.
    pub realm: Option<String>,
    /// Its `service`, sent back with every token request.
    pub service: Option<String>,
    /// Why `/v2/` could not be asked at all (connection refused, no such host, TLS spoken
    /// to plain HTTP, …); `None` when the registry answered anything.
    pub unreachable: Option<String>,
}

/// Asks `/v2/`. A registry that cannot be asked counts as challenging (its requests then
/// carry the user's credentials, if any).
pub(super) async fn probe(http: &reqwest::Client, scheme: &str, host: &str) -> Challenge {
    let url = format!("{scheme}://{host}/v2/");
    match tokio::time::timeout(Duration::from_secs(10), http.get(&url).send()).await {
        Ok(Ok(resp)) => {
            let header = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok());
            let params = header.and_then(bearer_params).unwrap_or_default();
            Challenge {
                challenged: resp.status() == reqwest::StatusCode::UNAUTHORIZED || header.is_some(),
                realm: params.get("realm").cloned(),
                service: params.get("service").cloned(),
                unreachable: None,
            }
        }
        Ok(Err(e)) => Challenge {
            challenged: true,
            unreachable: Some(super::classify::request_error_text(&e)),
            ..Default::default()
        },
        Err(_) => Challenge {
            challenged: true,
            unreachable: Some("no answer to /v2/ within 10s".into()),
            ..Default::default()
        },
    }
}

/// Which scheme a registry that may be reached insecurely (`--tls-verify=false`) speaks, and
/// its `/v2/` answer in that scheme: TLS when it answers over TLS, else plain HTTP. Both are
/// asked at once, so connecting costs one round trip, not two (neither sends credentials).
pub(super) async fn probe_insecure(
    http: &reqwest::Client,
    host: &str,
) -> (&'static str, Challenge) {
    let (scheme, answer) = tls_first(probe(http, "https", host), probe(http, "http", host)).await;
    if scheme == "http" {
        tracing::debug!(host, "registry does not answer over TLS; using plain HTTP");
    }
    (scheme, answer)
}

/// TLS's answer as soon as it comes, without waiting for plain HTTP's (a host's port 80
/// may drop what it is sent: its probe would take its whole timeout); plain HTTP's only
/// when TLS got none.
async fn tls_first(
    tls: impl std::future::Future<Output = Challenge>,
    plain: impl std::future::Future<Output = Challenge>,
) -> (&'static str, Challenge) {
    tokio::pin!(tls, plain);
    let mut plain_answer = None;
    let tls_answer = loop {
        tokio::select! {
            answer = &mut tls => break answer,
            answer = &mut plain, if plain_answer.is_none() => plain_answer = Some(answer),
        }
    };
    if tls_answer.unreachable.is_none() {
        return ("https", tls_answer);
    }
    let plain_answer = match plain_answer {
        Some(answer) => answer,
        None => plain.await,
    };
    ("http", plain_answer)
}

/// The parameters of a `Bearer` challenge (RFC 6750 §3; values quoted or bare), names
/// lower-cased.
pub(super) fn bearer_params(header: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let rest = header.trim();
    let (scheme, params) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = std::collections::BTreeMap::new();
    let mut chars = params.trim_start().chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if name.is_empty() {
            return Some(out);
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => v.extend(chars.next()),
                    '"' => break,
                    c => v.push(c),
                }
            }
            v
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        out.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
}

/// Refuses a realm that would carry credentials meant for a TLS registry over plain HTTP;
/// a realm on another host is allowed (Docker Hub's is) but said once, at connect.
pub(super) fn check_realm(realm: &str, scheme: &str, host: &str) -> Result<(), Error> {
    let url = reqwest::Url::parse(realm).map_err(|_| {
        Error::new(
            FailureClass::Auth,
            format!("{host}: its token realm {:?} is not a URL", cut(realm, 100)),
        )
    })?;
    if scheme == "https" && url.scheme() != "https" {
        return Err(Error::new(
            FailureClass::Auth,
            format!(
                "{host}: the registry speaks TLS but names a plain-HTTP token realm ({}://{}); \
                 refusing to send credentials there",
                url.scheme(),
                url.host_str().unwrap_or("?")
            ),
        ));
    }
    let realm_host = url.host_str().unwrap_or_default();
    let registry_host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if !realm_host.eq_ignore_ascii_case(registry_host) {
        tracing::warn!(
            registry = host,
            realm = realm_host,
            "the registry's token realm is on another host; credentials for it go there"
        );
    }
    Ok(())
}

/// Refuses a realm that is not on the registry's own host (for a realm learned over a
/// connection whose certificate was not checked).
pub(super) fn check_realm_is_own(realm: &str, host: &str) -> Result<(), Error> {
    let realm_host = reqwest::Url::parse(realm)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let registry_host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if realm_host.eq_ignore_ascii_case(registry_host) {
        return Ok(());
    }
    Err(Error::new(
        FailureClass::Auth,
        format!(
            "{host}: its token realm is on another host ({}), named over a connection whose certificate was not checked; refusing to send credentials there",
            cut(&realm_host, 100)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> Challenge {
        Challenge {
            unreachable: Some("refused".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn tls_that_answers_does_not_wait_for_plain_http() {
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            tls_first(async { Challenge::default() }, std::future::pending()),
        )
        .await
        .expect("TLS's answer without plain HTTP's");
        assert_eq!(got.0, "https");
    }

    #[tokio::test]
    async fn plain_http_answers_when_tls_gets_none_whichever_comes_first() {
        let late_tls = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            unreachable()
        };
        let (scheme, answer) = tls_first(late_tls, async { Challenge::default() }).await;
        assert_eq!((scheme, answer.unreachable), ("http", None));
        let late_plain = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Challenge::default()
        };
        let (scheme, answer) = tls_first(async { unreachable() }, late_plain).await;
        assert_eq!((scheme, answer.unreachable), ("http", None));
    }

    fn bearer_realm(header: &str) -> Option<String> {
        bearer_params(header)?.remove("realm")
    }

    #[test]
    fn realm_is_read_from_a_bearer_challenge() {
        assert_eq!(
            bearer_realm(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#
            ),
            Some("https://auth.docker.io/token".into())
        );
        assert_eq!(
            bearer_realm(r#"Bearer service="s", realm="https://a/b\"c""#),
            Some("https://a/b\"c".into())
        );
        assert_eq!(
            bearer_realm("Bearer realm=https://a/t,service=x"),
            Some("https://a/t".into())
        );
        assert_eq!(bearer_realm(r#"Basic realm="x""#), None);
        assert_eq!(bearer_realm("Bearer"), None);
        assert_eq!(bearer_realm("Bearer ,,,"), None);
    }

    #[test]
    fn a_plain_http_realm_of_a_tls_registry_is_refused() {
        let e = check_realm("http://auth.example/token", "https", "reg.example").unwrap_err();
        assert_eq!(e.class, FailureClass::Auth);
        assert!(
            e.message.contains("plain-HTTP token realm"),
            "{}",
            e.message
        );
        assert!(check_realm("https://auth.example/token", "https", "reg.example").is_ok());
        // A plain-HTTP registry (--tls-verify=false) has nothing to protect by TLS.
        assert!(check_realm("http://reg.example:5000/token", "http", "reg.example:5000").is_ok());
        assert!(check_realm("not a url", "https", "reg.example").is_err());
        // Learned over an unchecked connection: the registry's own host only.
        assert!(check_realm_is_own("https://reg.example/service/token", "reg.example:443").is_ok());
        let e = check_realm_is_own("https://evil.example/token", "reg.example").unwrap_err();
        assert!(e.message.contains("evil.example"), "{}", e.message);
    }
}
