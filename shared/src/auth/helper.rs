//! Docker credential helpers, run as Docker runs them: `docker-credential-NAME get`, the
//! registry's server URL on stdin, `{"ServerURL", "Username", "Secret"}` on stdout. A
//! helper that has nothing for the registry says so (exit 1, "credentials not found"); one
//! that is missing or fails otherwise is an error naming it. The helper's answer is bounded
//! (64 KiB, 30 s): it is another program, and a hung one must not hang a copy.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Credentials;
use crate::error::{Error, Result};

const MAX_ANSWER: u64 = 64 << 10;
const TIME_LIMIT: Duration = Duration::from_secs(30);

/// The server URL a helper is asked about: Docker names Docker Hub by its v1 index URL.
fn server_url(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".to_owned()
        }
        other => other.to_owned(),
    }
}

/// Asks helper `name` for `registry`'s credentials; `None` when it has none.
pub fn get(name: &str, registry: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{name}");
    let fail = |why: String| Error::invalid(format!("credential helper {program}: {why}"));
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(fail("not a helper name".into()));
    }
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                fail("not found on PATH (install it, or remove it from the auth file)".into())
            }
            _ => fail(format!("cannot run it: {e}")),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its exit status.
        let _ = stdin.write_all(server_url(registry).as_bytes());
    }
    let (mut out, mut err) = (
        child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?,
        child
            .stderr
            .take()
            .ok_or_else(|| fail("no stderr".into()))?,
    );
    let reader = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = (&mut out).take(MAX_ANSWER + 1).read_to_end(&mut answer);
        let mut message = Vec::new();
        let _ = (&mut err).take(4096).read_to_end(&mut message);
        (answer, message)
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > TIME_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {}s", TIME_LIMIT.as_secs())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(fail(format!("waiting for it: {e}"))),
        }
    };
    let (answer, message) = reader
        .join()
        .map_err(|_| fail("reading its answer failed".into()))?;
    let said = String::from_utf8_lossy(&answer).to_string() + &String::from_utf8_lossy(&message);
    if !status.success() {
        // Docker's helpers say this when they hold nothing for the server.
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        let said = said.trim();
        let said: String = said.chars().take(200).collect();
        return Err(fail(format!("failed ({status}): {said}")));
    }
    if answer.len() as u64 > MAX_ANSWER {
        return Err(fail(format!("its answer is over {} KiB", MAX_ANSWER >> 10)));
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        username: String,
        secret: String,
    }
    let a: Answer = serde_json::from_slice(&answer)
        .map_err(|e| fail(format!("its answer is not the helper protocol's JSON: {e}")))?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: a.username,
        password: a.secret,
    }))
}
