//! Single-registry commands: `inspect`, `list-tags`, `delete`, `merge-manifest`, `login`,
//! `logout`.

use std::path::PathBuf;

use clap::Args;

use super::{RegistryArgs, VerifyingRegistryArgs};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Image reference (`docker://` is assumed when no transport is given).
    pub reference: String,
    /// Print the raw manifest as served.
    #[arg(long)]
    pub raw: bool,
    /// Print the raw config blob.
    #[arg(long)]
    pub config: bool,
    #[arg(long = "override-arch", default_value = "")]
    pub override_arch: String,
    #[arg(long = "override-os", default_value = "")]
    pub override_os: String,
    #[arg(long = "override-variant", default_value = "")]
    pub override_variant: String,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct RepoArgs {
    /// Repository (`docker://` is assumed when no transport is given).
    pub repository: String,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    pub reference: String,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct MergeManifestArgs {
    /// TARGET SRC1 SRC2 [...]
    #[arg(num_args = 3.., required = true)]
    pub refs: Vec<String>,
    /// Print the index instead of pushing it.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    pub registry: String,
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    #[arg(short = 'p', long = "password")]
    pub password: Option<String>,
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    /// Print the stored username for the registry.
    #[arg(long = "get-login")]
    pub get_login: bool,
    #[command(flatten)]
    pub access: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    pub registry: Option<String>,
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// Remove every stored credential.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
}
