//! `mirror` (and `mirror validate`) and `convert-list`, which writes mirror-format lists.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::{FleetArgs, PlatformArgs, RateArgs};

#[derive(Args, Debug)]
pub struct MirrorCmd {
    #[command(subcommand)]
    pub validate: Option<MirrorSub>,
    #[command(flatten)]
    pub args: MirrorArgs,
}

#[derive(Subcommand, Debug)]
pub enum MirrorSub {
    /// Check that every selected source platform is in the destination.
    Validate(MirrorArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MirrorArgs {
    /// Image list (default or mirror format).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub platforms: PlatformArgs,
    /// Override the source registry of every line.
    #[arg(short = 's', long = "source", default_value = "")]
    pub source: String,
    /// Destination registry (empty: docker.io).
    #[arg(short = 'd', long = "destination", default_value = "")]
    pub destination: String,
    /// Override the source project of every line.
    #[arg(long = "source-project", default_value = "")]
    pub source_project: String,
    /// Override the destination project of every line.
    #[arg(long = "destination-project", default_value = "")]
    pub destination_project: String,
    /// File that receives the lines that failed.
    #[arg(short = 'o', long = "failed", default_value = "mirror-failed.txt")]
    pub failed: PathBuf,
    /// Images handled at once (1-20); transfers default to two per job.
    #[arg(
        short = 'j',
        long = "jobs",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub jobs: i64,
    /// Bound on one transfer attempt (a blob or manifest), e.g. 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
    /// Also copy buildx provenance attestations.
    #[arg(long = "provenance", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub provenance: bool,
    /// Replace the destination index instead of merging into it.
    #[arg(long = "overwrite")]
    pub overwrite: bool,
    /// Verify TLS certificates (the default when left out); `--tls-verify=false` also allows
    /// plain HTTP.
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// Accepted for Hangar compatibility (credentials are never prompted for).
    #[arg(long = "skip-login")]
    pub skip_login: bool,
    /// Do not copy cosign signatures and attestations (`sha256-<hex>.sig` / `.att`).
    #[arg(long = "remove-signatures")]
    pub remove_signatures: bool,
    /// Auth file to read credentials from first (beyond Hangar).
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// Blob cache (beyond Hangar): a directory, `file:///dir` or `s3://bucket?endpoint=…&region=…`.
    /// Blobs go through it, and what it holds is never fetched from the source again.
    #[arg(long = "cache", env = "HANGAR_CACHE")]
    pub cache: Option<String>,
    /// Blob and manifest transfers at once (beyond Hangar; default 2 x jobs).
    #[arg(long = "transfers")]
    pub transfers: Option<usize>,
    /// Sign every image as it lands (beyond Hangar): here, a cosign key file; on the fleet,
    /// the name of a key the workers hold (`hangar-worker --sign-key NAME=PATH`).
    /// (Hangar's hidden `--sigstore-private-key` is the same flag.)
    #[arg(long = "sign-key", alias = "sigstore-private-key")]
    pub sign_key: Option<String>,
    /// The key's passphrase (trimmed), when signing here; else COSIGN_PASSWORD. (Hangar's
    /// hidden `--sigstore-passphrase-file` is the same flag.)
    #[arg(long = "sign-passphrase-file", alias = "sigstore-passphrase-file")]
    pub sign_passphrase_file: Option<PathBuf>,
    /// Scan every image as it lands (beyond Hangar) against this OSV database (see `scan
    /// --db`); the workers read each image's layers once, from the cache when there.
    #[arg(long = "scan-db")]
    pub scan_db: Option<String>,
    /// The scan report (json), with --scan-db.
    #[arg(long = "scan-report", default_value = "scan-report.json")]
    pub scan_report: PathBuf,
    /// Plan only (beyond Hangar): images, platforms, unique blobs and bytes, what the
    /// destination holds, an estimated time; nothing is copied.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// This process's own business: a job sent to `serve` runs under the server's limits.
    #[command(flatten)]
    pub rate: RateArgs,
    /// Not a flag: the images go into an archive (save, sync), so no registry destination
    /// is missing.
    #[arg(skip)]
    pub into_archive: bool,
}

impl Default for MirrorArgs {
    /// The same defaults as the command line (what a job request leaves out).
    fn default() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            args: MirrorArgs,
        }
        Defaults::parse_from(["defaults"]).args
    }
}

#[derive(Args, Debug)]
pub struct ConvertListArgs {
    /// The default-format list to convert.
    #[arg(short = 'i', long = "input")]
    pub input: PathBuf,
    /// Output file (default: INPUT.converted).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Source registry put into every line (empty: each line's as written).
    #[arg(short = 's', long = "source", default_value = "")]
    pub source: String,
    /// Destination registry put into every line (empty: each line's own, else docker.io).
    #[arg(short = 'd', long = "destination", default_value = "")]
    pub destination: String,
    /// Overwrite an existing output file without asking.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
}
