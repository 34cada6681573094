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
use crate::process_group::ProcessGroup;

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
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::invalid(format!(
            "credential helper {program}: not a helper name"
        )));
    }
    ask(&program, registry, TIME_LIMIT)
}

/// Runs `program get` for `registry`, all of it — its answer read to the end included —
/// within `limit`. The helper runs in a process group of its own, killed whole when the
/// time is up: a helper that leaves a background child holding its output (a script
/// starting an agent) is not waited for past the limit.
fn ask(program: &str, registry: &str, limit: Duration) -> Result<Option<Credentials>> {
    use std::io::IsTerminal as _;
    use std::os::unix::process::CommandExt as _;
    let fail = |why: String| Error::invalid(format!("credential helper {program}: {why}"));
    let mut command = Command::new(program);
    command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // At a terminal the helper stays in its group: one that asks there (a one-time code)
    // must not be stopped as a background job; the limit then kills it alone.
    let grouped = !std::io::stdin().is_terminal();
    if grouped {
        command.process_group(0);
    }
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            fail("not found on PATH (install it, or remove it from the auth file)".into())
        }
        _ => fail(format!("cannot run it: {e}")),
    })?;
    let group = grouped.then(|| ProcessGroup::led_by(child.id())).flatten();
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = (&mut out).take(MAX_ANSWER + 1).read_to_end(&mut answer);
        let mut message = Vec::new();
        let _ = (&mut err).take(4096).read_to_end(&mut message);
        let _ = tx.send((answer, message));
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > limit => {
                if let Some(g) = &group {
                    g.kill();
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {}s", limit.as_secs_f32())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(fail(format!("waiting for it: {e}"))),
        }
    };
    let left = limit.saturating_sub(started.elapsed());
    let (answer, message) = match rx.recv_timeout(left.max(Duration::from_millis(100))) {
        Ok(read) => read,
        Err(_) => {
            if let Some(g) = &group {
                g.kill();
            }
            return Err(fail(format!(
                "it exited, but its output stayed open past {}s (a process it started holds it)",
                limit.as_secs_f32()
            )));
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &std::path::Path, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("docker-credential-test");
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path.display().to_string()
    }

    /// A helper that answers, exits, and leaves a child holding its output is given up at
    /// the limit (its child killed with it), not waited for until the child ends.
    #[test]
    fn a_helper_whose_child_holds_its_output_is_given_up_at_the_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let pidfile = dir.path().join("child.pid");
        let helper = script(
            dir.path(),
            &format!(
                "echo '{{\"Username\":\"u\",\"Secret\":\"s\"}}'\nsh -c 'echo $$ > {}; exec sleep 30' &\nsleep 0.2\nexit 0\n",
                pidfile.display()
            ),
        );
        let started = Instant::now();
        let e = ask(&helper, "r.example", Duration::from_secs(1)).expect_err("given up");
        assert!(e.message.contains("output stayed open"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid = std::fs::read_to_string(&pidfile).expect("the child started");
        std::thread::sleep(Duration::from_millis(300));
        // Gone, or a zombie waiting to be reaped: not running.
        let alive = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "the helper's child was killed with its group");
    }

    /// A helper that floods its output and never exits ends at the limit; one that answers
    /// in time is read.
    #[test]
    fn a_flooding_helper_ends_at_the_limit_and_an_answer_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        let flood = script(dir.path(), "yes\n");
        let started = Instant::now();
        let e = ask(&flood, "r.example", Duration::from_secs(1)).expect_err("given up");
        assert!(e.message.contains("no answer within"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let dir = tempfile::tempdir().expect("dir");
        let good = script(
            dir.path(),
            "cat >/dev/null\necho '{\"Username\":\"u\",\"Secret\":\"s\"}'\n",
        );
        let creds = ask(&good, "r.example", Duration::from_secs(5))
            .expect("answer")
            .expect("credentials");
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("u", "s")
        );
    }
}
