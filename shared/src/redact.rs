//! Credentials kept out of what is shown: a URL's `user:password@` (or `token@`) part,
//! which reqwest and async-nats accept as credentials, must not reach an error, a log line
//! or an archive's annotation.

/// `url` with the user information of its authority replaced by `<redacted>`; the rest as
/// written. Only the authority is looked at (up to the first `/`, `?` or `#` after the
/// scheme), so an `@` in a path (`repo@sha256:…`) is left alone.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // In a URL that parses, the user information cannot hold a `/`, `?` or `#`, so the
    // authority ends at the first of them. One that does not parse may be a password
    // written with them unencoded (`u:ab/cd@h`): everything up to its last `@` goes.
    let well_formed = scheme.is_some() && reqwest::Url::parse(url).is_ok();
    let end = if well_formed {
        rest.find(['/', '?', '#']).unwrap_or(rest.len())
    } else {
        rest.len()
    };
    let (authority, tail) = rest.split_at(end);
    let Some((_, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match scheme {
        Some(scheme) => format!("{scheme}://<redacted>@{host}{tail}"),
        None => format!("<redacted>@{host}{tail}"),
    }
}

/// A location as given on a command line (a URL, or a local path whose first component may
/// hold an `@`): a URL's credentials redacted, a path as written.
pub fn redact_location(location: &str) -> String {
    if location.contains("://") {
        redact_url(location)
    } else {
        location.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_location, redact_url};

    #[test]
    fn credentials_leave_and_the_rest_stays() {
        for (url, shown) in [
            (
                "nats://user:pw@10.0.0.1:4222",
                "nats://<redacted>@10.0.0.1:4222",
            ),
            ("tls://s3cr3t@nats:4222", "tls://<redacted>@nats:4222"),
            (
                "https://u:p@w@h.example/f.bin?x=1",
                "https://<redacted>@h.example/f.bin?x=1",
            ),
            ("user:pw@10.0.0.1:4222", "<redacted>@10.0.0.1:4222"),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("https://h.example/a@b/c", "https://h.example/a@b/c"),
            (
                "oci://reg.io/charts/app@sha256:00",
                "oci://reg.io/charts/app@sha256:00",
            ),
            (
                "https://u:ab/cd@h.example/f",
                "https://<redacted>@h.example/f",
            ),
            (
                "https://u:a?b#c@h.example/f",
                "https://<redacted>@h.example/f",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(redact_location("a@b/db.zip"), "a@b/db.zip");
        assert_eq!(redact_location("./local/file@1.bin"), "./local/file@1.bin");
        assert_eq!(
            redact_location("https://t@h/db.zip"),
            "https://<redacted>@h/db.zip"
        );
    }
}
