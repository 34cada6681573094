//! `login` / `logout`: credentials in containers' `auth.json` (docker-style `auths`),
//! checked against the registry before they are stored.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context as _, Result, bail};
use hangar_shared::auth::{self, AuthFile, Credentials};
use hangar_shared::registry::{Registry, RegistryOptions};

use crate::cli::{LoginArgs, LogoutArgs};

fn read_line(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut s = String::new();
    std::io::stdin().lock().read_line(&mut s)?;
    Ok(s.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn login(args: &LoginArgs) -> Result<()> {
    let registry = args
        .registry
        .trim_start_matches("docker://")
        .trim_end_matches('/');
    if args.get_login {
        let file = args
            .compat_auth_file
            .as_deref()
            .or(args.access.authfile.as_deref());
        match auth::lookup(file, registry, None)? {
            Some(c) => crate::stdout::outln!("{}", c.username)?,
            None => bail!("not logged into {registry}"),
        }
        return Ok(());
    }
    let username = match &args.username {
        Some(u) => u.clone(),
        None if std::io::stdin().is_terminal() => read_line("Username: ")?,
        None => bail!("--username is required when stdin is not a terminal"),
    };
    let password = if args.password_stdin {
        let mut s = String::new();
        std::io::stdin().lock().read_line(&mut s)?;
        s.trim_end_matches(['\r', '\n']).to_owned()
    } else if let Some(p) = &args.password {
        p.clone()
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Password: ").context("reading the password")?
    } else {
        bail!("--password or --password-stdin is required when stdin is not a terminal");
    };
    let creds = Credentials { username, password };
    let timeout = match args.timeout.trim() {
        "0" => None,
        t => Some(
            humantime::parse_duration(t)
                .map_err(|e| anyhow::anyhow!("invalid --timeout {t:?}: {e}"))?,
        ),
    };
    let retry = hangar_shared::retry::RetryPolicy {
        attempts: args.retry_times.saturating_add(1),
        ..Default::default()
    };
    let options = RegistryOptions {
        tls_verify: args.access.tls_verify,
        cert_dir: super::cert_dir(),
        request_timeout: timeout,
        ..Default::default()
    };
    // Each try connects afresh: a registry that did not answer its first look is tried
    // again (not held for the login request's own 300 s), as a 5xx is.
    let check = retry.run("login", || async {
        let reg = Registry::connect(registry, &options, Some(creds.clone())).await?;
        reg.reachable()?;
        reg.verify_login().await
    });
    match timeout {
        Some(t) => tokio::time::timeout(t, check)
            .await
            .map_err(|_| anyhow::anyhow!("login failed: no answer from {registry} within {t:?}"))?,
        None => check.await,
    }
    .context("login failed")?;
    let path = written_file(
        args.compat_auth_file.as_deref(),
        args.access.authfile.as_deref(),
    );
    let mut file = AuthFile::load(&path)?;
    file.set(registry, &creds);
    file.save(&path)?;
    if args.verbose {
        crate::stdout::outln!("Used: {}", path.display())?;
    }
    // containers/common's words, bare on stdout: scripts match the line exactly.
    crate::stdout::outln!("Login Succeeded!")?;
    Ok(())
}

/// Where login writes and logout removes: `--compat-auth-file` (the auth file's format is
/// Docker's `auths` already), else the auth file.
fn written_file(
    compat: Option<&std::path::Path>,
    authfile: Option<&std::path::Path>,
) -> std::path::PathBuf {
    match compat {
        Some(p) => p.to_path_buf(),
        None => auth::write_location(authfile),
    }
}

pub fn logout(args: &LogoutArgs) -> Result<()> {
    let path = written_file(args.compat_auth_file.as_deref(), args.authfile.as_deref());
    let mut file = AuthFile::load(&path)?;
    if args.all {
        file.clear();
        file.save(&path)?;
        crate::stdout::outln!("Removed login credentials for all registries")?;
        return Ok(());
    }
    let Some(registry) = &args.registry else {
        bail!("a registry or --all is required");
    };
    let registry = registry
        .trim_start_matches("docker://")
        .trim_end_matches('/');
    if !file.remove(registry) {
        bail!("not logged into {registry}");
    }
    file.save(&path)?;
    crate::stdout::outln!("Removed login credentials for {registry}")?;
    Ok(())
}
