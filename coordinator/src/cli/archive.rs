//! Archives: `save`, `sync`, `load` (each with `validate`) and `archive …`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{FleetArgs, PlatformArgs, RateArgs, RegistryArgs};

/// What `save` and `sync` share: a default-format list copied into an archive.
#[derive(Args, Debug, Clone)]
pub struct ArchiveListArgs {
    /// Image list (default format; mirror-format lines are skipped).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub platforms: PlatformArgs,
    /// Override the source registry of every line.
    #[arg(short = 's', long = "source", default_value = "")]
    pub source: String,
    /// File that receives the lines that failed (default: save-failed.txt / sync-failed.txt).
    #[arg(short = 'o', long = "failed")]
    pub failed: Option<PathBuf>,
    /// Images handled at once (1-20).
    #[arg(
        short = 'j',
        long = "jobs",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub jobs: i64,
    /// Bound on one transfer attempt.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
    /// Also copy buildx provenance attestations.
    #[arg(long = "provenance", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub provenance: bool,
    #[command(flatten)]
    pub access: RegistryArgs,
    /// Blob cache to gather blobs in (beyond Hangar; default: a temporary directory next to
    /// the archive, removed afterwards).
    #[arg(long = "cache", env = "HANGAR_CACHE")]
    pub cache: Option<String>,
    /// Blob transfers at once (beyond Hangar; default: jobs for save and sync, 2 x jobs for load).
    #[arg(long = "transfers")]
    pub transfers: Option<usize>,
    /// Scan every saved image against this OSV database (see `scan --db`), reading each
    /// layer from the cache it was just gathered into (beyond Hangar).
    #[arg(long = "scan-db")]
    pub scan_db: Option<String>,
    /// The scan report (json), with --scan-db.
    #[arg(long = "scan-report", default_value = "scan-report.json")]
    pub scan_report: PathBuf,
    /// With --nats, workers fetch the blobs into the shared --cache and one of them writes
    /// the archive (give an s3:// destination, or a path the workers share).
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub rate: RateArgs,
}

#[derive(Args, Debug)]
pub struct SaveCmd {
    #[command(subcommand)]
    pub validate: Option<SaveSub>,
    #[command(flatten)]
    pub args: SaveArgs,
}

#[derive(Subcommand, Debug)]
pub enum SaveSub {
    /// Check that every selected source platform is in the archive.
    Validate(SaveArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SaveArgs {
    #[command(flatten)]
    pub list: ArchiveListArgs,
    /// The archive to write: a path, or s3://bucket/key.zip?endpoint=…&region=….
    #[arg(short = 'd', long = "destination", default_value = "saved-images.zip")]
    pub destination: String,
    /// Overwrite an existing archive without asking.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
    /// Split into volumes of at most SIZE (e.g. 4G, 700M), each a complete archive with
    /// its own index.json (beyond Hangar).
    #[arg(long = "part-size")]
    pub part_size: Option<String>,
    /// Plan only (beyond Hangar): images, unique blobs and bytes, an estimated time, the
    /// archive's size and volume count; nothing is written.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct SyncCmd {
    #[command(subcommand)]
    pub validate: Option<SyncSub>,
    #[command(flatten)]
    pub args: SyncArgs,
}

#[derive(Subcommand, Debug)]
pub enum SyncSub {
    /// Check that every selected source platform is in the archive.
    Validate(SyncArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    #[command(flatten)]
    pub list: ArchiveListArgs,
    /// The existing archive to append to (a path or an s3:// location).
    #[arg(short = 'd', long = "destination")]
    pub destination: Option<String>,
}

#[derive(Args, Debug)]
pub struct LoadCmd {
    #[command(subcommand)]
    pub validate: Option<LoadSub>,
    #[command(flatten)]
    pub args: LoadArgs,
}

#[derive(Subcommand, Debug)]
pub enum LoadSub {
    /// Check that every archived platform is in the destination registry.
    Validate(LoadArgs),
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// The archive: a path, or s3://bucket/key.zip?endpoint=…&region=….
    #[arg(short = 's', long = "source")]
    pub source: Option<String>,
    /// Destination registry.
    #[arg(short = 'd', long = "destination")]
    pub destination: Option<String>,
    /// Only the images of this list (default format); default: every image in the archive.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Registry of the list's lines when matching them against the archive.
    #[arg(long = "source-registry", default_value = "")]
    pub source_registry: String,
    /// Override every destination project.
    #[arg(long = "project", default_value = "")]
    pub project: String,
    #[command(flatten)]
    pub platforms: PlatformArgs,
    /// File that receives the lines that failed.
    #[arg(short = 'o', long = "failed", default_value = "load-failed.txt")]
    pub failed: PathBuf,
    /// Images handled at once (1-20).
    #[arg(
        short = 'j',
        long = "jobs",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub jobs: i64,
    /// Bound on one transfer attempt (Hangar ignores it for load; honoured here).
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
    /// Also copy buildx provenance attestations.
    #[arg(long = "provenance", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub provenance: bool,
    /// Replace the destination index instead of merging into it.
    #[arg(long = "overwrite")]
    pub overwrite: bool,
    #[command(flatten)]
    pub access: RegistryArgs,
    /// Accepted for Hangar compatibility.
    #[arg(long = "skip-login")]
    pub skip_login: bool,
    /// Blob transfers at once (beyond Hangar; default: jobs for save and sync, 2 x jobs for load).
    #[arg(long = "transfers")]
    pub transfers: Option<usize>,
    /// Sign every image as it lands: here, a cosign key file; on the fleet, the name of a
    /// key the workers hold. (Hangar's hidden `--sigstore-private-key` is the same flag.)
    #[arg(long = "sign-key", alias = "sigstore-private-key")]
    pub sign_key: Option<String>,
    /// The key's passphrase (trimmed), when signing here; else COSIGN_PASSWORD. (Hangar's
    /// hidden `--sigstore-passphrase-file` is the same flag.)
    #[arg(long = "sign-passphrase-file", alias = "sigstore-passphrase-file")]
    pub sign_passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    pub rate: RateArgs,
    /// On the fleet (beyond Hangar): `--nats URL`, the workers read the archive themselves.
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Subcommand, Debug)]
pub enum ArchiveCmd {
    /// Create empty archives.
    #[command(visible_alias = "i")]
    Init {
        /// The archive files to create (they must not exist yet).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the images of an archive.
    #[command(name = "ls", visible_alias = "list")]
    Ls(ArchiveLsArgs),
    /// Merge archives into a new one.
    #[command(visible_alias = "m")]
    Merge(ArchiveMergeArgs),
    /// Copy the images of a list from one archive into a new one.
    #[command(visible_alias = "e")]
    Export(ArchiveExportArgs),
    /// Store Helm charts or custom files in an archive.
    #[command(visible_alias = "s")]
    Store {
        #[command(subcommand)]
        what: StoreCmd,
    },
    /// Re-hash every blob and check the index against the entries (beyond Hangar).
    Verify {
        /// The archives (paths or s3:// locations).
        #[arg(required = true)]
        files: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Add local files or http(s) URLs, each as `docker.io/hangar-file/<name>:latest`.
    #[command(visible_aliases = ["files", "f"])]
    File(StoreFileArgs),
    /// Add Helm charts — a packaged `.tgz` (a path or an http(s) URL), a chart directory, a
    /// Helm repository (a directory or URL with `index.yaml`) with `-n NAME [-v VERSION]`,
    /// or `oci://REGISTRY/REPO[/NAME]` — each as `docker.io/hangar-helm/<chart>:<version>`
    /// (an `oci://` chart under its own repository, its digest kept).
    #[command(visible_aliases = ["charts", "c"])]
    Chart(StoreChartArgs),
}

#[derive(Args, Debug)]
pub struct StoreChartArgs {
    /// The archive (it must exist: `archive init` makes an empty one).
    #[arg(short = 'f', long = "file")]
    pub file: String,
    /// Chart name, to check against each chart's Chart.yaml.
    #[arg(short = 'n', long = "name")]
    pub name: Option<String>,
    /// Chart version, to check against each chart's Chart.yaml.
    #[arg(short = 'v', long = "version")]
    pub version: Option<String>,
    /// Verify certificates of https URLs.
    #[arg(long = "tls-verify", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Chart `.tgz` files, chart directories or http(s) `.tgz` URLs.
    #[arg(required = true)]
    pub urls: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StoreFileArgs {
    /// The archive (it must exist: `archive init` makes an empty one).
    #[arg(short = 'f', long = "file")]
    pub file: String,
    /// Verify certificates of https URLs.
    #[arg(long = "tls-verify", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// The largest file taken from a URL (e.g. 16G, 700M); a larger one is refused as it
    /// comes, and the archive left as it was.
    #[arg(long = "max-size", default_value = "16G")]
    pub max_size: String,
    /// Bound on each URL's download as a whole, e.g. 6h, 90s (16 GiB in 6 hours needs
    /// about 6.5 Mbit/s).
    #[arg(long = "timeout", default_value = "6h")]
    pub timeout: String,
    /// Local files or http(s) URLs.
    #[arg(required = true)]
    pub urls: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ExportSub {
    /// Extract a stored custom file to `./NAME`.
    #[command(visible_alias = "f")]
    File(ExportFileArgs),
}

#[derive(Args, Debug)]
pub struct ExportFileArgs {
    /// The archive.
    #[arg(short = 'f', long = "file")]
    pub file: String,
    /// The stored file's name.
    #[arg(short = 'n', long = "name")]
    pub name: String,
    /// Overwrite an existing `./NAME` without asking.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct ArchiveLsArgs {
    /// The archive (or give it as the argument).
    #[arg(short = 'f', long = "file")]
    pub file: Option<String>,
    /// The archive (instead of -f/--file).
    pub archive: Option<String>,
    /// The index as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only `source:tag`, one per line.
    #[arg(long = "image-only")]
    pub image_only: bool,
}

#[derive(Args, Debug)]
pub struct ArchiveMergeArgs {
    /// Input archives (two or more).
    #[arg(short = 'f', long = "file", value_delimiter = ',')]
    pub files: Vec<String>,
    /// The merged archive to write (required).
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
    /// Overwrite an existing output archive without asking.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct ArchiveExportArgs {
    /// Image list (default format).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// The archive to export from.
    #[arg(short = 's', long = "source")]
    pub source: Option<String>,
    /// The new archive.
    #[arg(short = 'd', long = "destination")]
    pub destination: Option<String>,
    /// Registry of the list's lines when matching them against the archive.
    #[arg(long = "source-registry", default_value = "")]
    pub source_registry: String,
    /// File that receives the lines that failed.
    #[arg(long = "failed", default_value = "export-failed.txt")]
    pub failed: PathBuf,
    /// Overwrite an existing destination archive without asking.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
    #[command(subcommand)]
    pub sub: Option<ExportSub>,
}
