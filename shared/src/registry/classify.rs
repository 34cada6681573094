//! Failure classes for registry answers. The HTTP status decides first: every 5xx and 429
//! is transient whatever error code its body carries (distribution answers `UNAVAILABLE` or
//! `UNKNOWN` when its storage fails); the body's code only refines a 4xx.

use std::time::Duration;

use super::Side;
use crate::error::{Error, FailureClass};

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3), relative to `now`.
/// At most [`MAX_RETRY_AFTER`]: a registry's answer must not hold the fleet back for a day.
pub(super) fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The longest `Retry-After` honoured (the retry policy's own longest wait).
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

pub(super) const TRANSIENT_REJECTION: &str =
    "rejected, perhaps while the same content was being written: ";

/// distribution answers `DIGEST_INVALID` / `MANIFEST_BLOB_UNKNOWN` to a manifest PUT that
/// races an identical write (its storage is not atomic there); such a rejection is worth
/// retrying. A truly missing blob still fails once the retries are spent.
/// Returns the error to retry with, and whether it is such a rejection.
pub(super) fn transient_rejection(e: Error) -> (Error, bool) {
    let racy = e.class == FailureClass::DestinationRejected
        && (e.message.contains("DIGEST_INVALID") || e.message.contains("MANIFEST_BLOB_UNKNOWN"));
    if racy {
        let retried = Error::new(
            FailureClass::Server,
            format!("{TRANSIENT_REJECTION}{}", e.message),
        );
        (retried, true)
    } else {
        (e, false)
    }
}

pub(super) fn status_error(code: u16, side: Side, what: &str) -> Error {
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
pub(super) fn request_error_text(re: &reqwest::Error) -> String {
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
    if let Some(hint) = tls_hint(&text) {
        text.push_str(" — ");
        text.push_str(hint);
    }
    text
}

/// What to do about a TLS failure, for the three a user meets first: TLS spoken to a
/// plain-HTTP registry, a registry asking for a client certificate, and a certificate
/// nobody here trusts.
fn tls_hint(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    if t.contains("invalidcontenttype")
        || t.contains("corrupt message")
        || t.contains("wrong version number")
    {
        Some(
            "the registry does not speak TLS (plain HTTP?): use --tls-verify=false or mark it insecure in registries.conf (on the fleet, the workers' own: hangar-worker --tls-verify=false)",
        )
    } else if t.contains("certificaterequired") || t.contains("badcertificate") {
        Some(
            "the registry asks for a client certificate: put NAME.cert and NAME.key in its certs.d directory or --cert-dir",
        )
    } else if t.contains("invalid peer certificate")
        || t.contains("unknownissuer")
        || t.contains("certificate verify failed")
    {
        Some(
            "its certificate is not trusted here: put its CA in certs.d or --cert-dir, or use --tls-verify=false (on the fleet, the workers' own: hangar-worker --tls-verify=false)",
        )
    } else {
        None
    }
}

/// The class an error envelope's first code gives a 4xx answer; `None` for an empty one.
fn envelope_class(envelope: &Envelope, side: Side) -> Option<FailureClass> {
    envelope
        .errors
        .first()
        .map(|e| match e.code.to_ascii_uppercase().as_str() {
            "BLOB_UNKNOWN"
            | "MANIFEST_UNKNOWN"
            | "NAME_UNKNOWN"
            | "NOT_FOUND"
            | "BLOB_UPLOAD_UNKNOWN" => FailureClass::NotFound,
            "UNAUTHORIZED" | "DENIED" => FailureClass::Auth,
            "TOOMANYREQUESTS" => FailureClass::RateLimited,
            "DIGEST_INVALID" if side == Side::Source => FailureClass::DigestMismatch,
            // distribution's codes for its own failures, should a proxy relay them with a 4xx.
            "UNAVAILABLE" | "UNKNOWN" => FailureClass::Server,
            _ if side == Side::Destination => FailureClass::DestinationRejected,
            _ => FailureClass::InvalidInput,
        })
}

/// The error envelope of the distribution spec: `{"errors":[{"code":…,"message":…}]}`.
#[derive(serde::Deserialize)]
struct Envelope {
    errors: Vec<EnvelopeError>,
}

#[derive(serde::Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn envelope_text(envelope: &Envelope) -> String {
    let msgs: Vec<String> = envelope
        .errors
        .iter()
        .take(4)
        .map(|e| format!("{}: {}", cut(&e.code, 40), cut(&e.message, 200)))
        .collect();
    msgs.join("; ")
}

/// At most `n` characters of a server's text, cut on a character boundary.
pub(super) fn cut(text: &str, n: usize) -> &str {
    let text = text.trim();
    match text.char_indices().nth(n) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Classifies a non-success answer to one of our own requests from its status and (a
/// bounded prefix of) its body.
pub(super) fn classify_answer(status: u16, body: &[u8], side: Side, what: &str) -> Error {
    let by_status = status_error(status, side, what);
    let envelope = serde_json::from_slice::<Envelope>(body).ok();
    let detail = match &envelope {
        Some(env) => envelope_text(env),
        None => cut(&String::from_utf8_lossy(body), 200).to_owned(),
    };
    let class = match (status, &envelope) {
        (429 | 500..=599, _) => by_status.class,
        (400..=499, Some(env)) => envelope_class(env, side).unwrap_or(by_status.class),
        _ => by_status.class,
    };
    let message = if detail.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}: {detail}")
    };
    Error::new(class, message)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::{Side, classify_answer, parse_retry_after};
    use crate::error::FailureClass;

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
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(super::MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn tls_failures_say_what_to_do() {
        let plain =
            super::tls_hint("cannot connect: received corrupt message of type InvalidContentType");
        assert!(
            plain.is_some_and(|h| h.contains("--tls-verify=false") && h.contains("hangar-worker"))
        );
        let untrusted = super::tls_hint("invalid peer certificate: UnknownIssuer");
        assert!(untrusted.is_some_and(|h| h.contains("--cert-dir")));
        let client = super::tls_hint("received fatal alert: CertificateRequired");
        assert!(client.is_some_and(|h| h.contains("NAME.cert")));
        assert!(super::tls_hint("connection refused").is_none());
    }

    #[test]
    fn the_status_decides_before_the_error_code() {
        let body = |code: &str| format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#);
        let class = |status, code: &str, side| {
            classify_answer(status, body(code).as_bytes(), side, "x").class
        };
        for side in [Side::Source, Side::Destination] {
            assert_eq!(class(500, "UNKNOWN", side), FailureClass::Server);
            assert_eq!(class(503, "UNAVAILABLE", side), FailureClass::Server);
            assert_eq!(class(503, "MANIFEST_UNKNOWN", side), FailureClass::Server);
            assert_eq!(class(500, "DENIED", side), FailureClass::Server);
            assert_eq!(class(429, "UNAVAILABLE", side), FailureClass::RateLimited);
            assert_eq!(
                class(429, "TOOMANYREQUESTS", side),
                FailureClass::RateLimited
            );
            assert_eq!(class(404, "MANIFEST_UNKNOWN", side), FailureClass::NotFound);
            assert_eq!(class(403, "DENIED", side), FailureClass::Auth);
            assert_eq!(class(400, "UNAVAILABLE", side), FailureClass::Server);
        }
        assert_eq!(
            class(400, "MANIFEST_INVALID", Side::Source),
            FailureClass::InvalidInput
        );
        assert_eq!(
            class(400, "MANIFEST_INVALID", Side::Destination),
            FailureClass::DestinationRejected
        );
        let e = classify_answer(502, b"<html>bad gateway</html>", Side::Source, "reg/x:1");
        assert_eq!(e.class, FailureClass::Server);
        assert!(e.message.contains("HTTP 502") && e.message.contains("bad gateway"));
        assert!(FailureClass::Server.is_retryable() && FailureClass::RateLimited.is_retryable());
    }
}
