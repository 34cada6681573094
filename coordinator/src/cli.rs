//! The command line: Hangar's command names, flags and defaults, plus a few of our own
//! (marked "beyond Hangar" in their help).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "hangar-coord",
    about = "Mirror, save and load container images (Hangar-compatible)",
    disable_version_flag = true
)]
pub struct Cli {
    /// Debug log level (also forces --jobs 1, as in Hangar).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for Hangar compatibility; signature policies are not evaluated.
    #[arg(long, global = true)]
    pub insecure_policy: bool,
    /// Print `-` instead of timestamps.
    #[arg(long, global = true, hide = true)]
    pub hide_log_time: bool,
    /// Print the version.
    #[arg(short = 'v', long = "version")]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy the images of a list from one registry to another.
    #[command(visible_alias = "m", args_conflicts_with_subcommands = true)]
    Mirror(Box<MirrorCmd>),
    /// Save the images of a list into a zip archive (Hangar's format).
    #[command(visible_alias = "s", args_conflicts_with_subcommands = true)]
    Save(Box<SaveCmd>),
    /// Append the images of a list to an existing archive (crash-safe).
    #[command(args_conflicts_with_subcommands = true)]
    Sync(Box<SyncCmd>),
    /// Load the images of an archive into a registry.
    #[command(visible_alias = "l", args_conflicts_with_subcommands = true)]
    Load(Box<LoadCmd>),
    /// Create, list, merge, export and verify archives.
    #[command(visible_alias = "a", subcommand)]
    Archive(ArchiveCmd),
    /// Create a cosign key pair (ECDSA P-256, encrypted private key).
    GenerateSigstoreKey(GenerateKeyArgs),
    /// Sign the images of a list with a cosign key.
    #[command(args_conflicts_with_subcommands = true)]
    Sign(Box<SignCmd>),
    /// Scan the images of a list for vulnerabilities (offline, OSV data).
    Scan(Box<ScanArgs>),
    /// Print a manifest, a config or a summary of an image.
    #[command(visible_alias = "i")]
    Inspect(InspectArgs),
    /// List the tags of a repository as JSON.
    ListTags(RepoArgs),
    /// Delete an image manifest from a registry.
    Delete(DeleteArgs),
    /// Build a manifest index from images in one repository and push it.
    MergeManifest(MergeManifestArgs),
    /// Convert a default-format list into mirror format.
    ConvertList(ConvertListArgs),
    /// Store registry credentials.
    Login(LoginArgs),
    /// Remove stored registry credentials.
    Logout(LogoutArgs),
    /// Send a mirror job to a coordinator (`--server`) or the fleet (`--nats`), or run it here.
    Submit(Box<SubmitArgs>),
    /// Run the fleet's coordinator service (HTTP API, job state in JetStream KV).
    Serve(Box<ServeArgs>),
    /// Show one job, or all, of a running coordinator.
    Status(StatusArgs),
    /// Cancel a job on a running coordinator.
    Cancel(CancelArgs),
    /// Print the version.
    Version,
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

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
    /// Images handled at once (1-20); transfers default to three per job.
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
    /// Verify TLS certificates; `--tls-verify=false` also allows plain HTTP.
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
    /// Blob and manifest transfers at once (beyond Hangar; default 3 x jobs).
    #[arg(long = "transfers")]
    pub transfers: Option<usize>,
    /// Sign every image as it lands (beyond Hangar): here, a cosign key file; on the fleet,
    /// the name of a key the workers hold (`hangar-worker --sign-key NAME=PATH`).
    #[arg(long = "sign-key")]
    pub sign_key: Option<String>,
    /// The key's passphrase (trimmed), when signing here; else COSIGN_PASSWORD.
    #[arg(long = "sign-passphrase-file")]
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

/// Hangar's `--arch` / `--os` selection of platforms.
#[derive(Args, Debug, Clone)]
pub struct PlatformArgs {
    /// Architectures (comma separated or repeated).
    #[arg(
        short = 'a',
        long = "arch",
        value_delimiter = ',',
        default_value = "amd64,arm64"
    )]
    pub arch: Vec<String>,
    /// Operating systems.
    #[arg(long = "os", value_delimiter = ',', default_value = "linux")]
    pub os: Vec<String>,
}

impl Default for PlatformArgs {
    /// Hangar's defaults, as on the command line (what a job request leaves out).
    fn default() -> Self {
        Self {
            arch: vec!["amd64".into(), "arm64".into()],
            os: vec!["linux".into()],
        }
    }
}

impl PlatformArgs {
    pub fn filter(&self) -> hangar_shared::manifest::PlatformFilter {
        hangar_shared::manifest::PlatformFilter::from_flags(&self.arch, &self.os)
    }
}

/// Run on the fleet instead of in this process (beyond Hangar).
#[derive(Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// A coordinator started with `hangar-coord serve`: the job runs there.
    #[arg(long = "server", env = "HANGAR_SERVER")]
    pub server: Option<String>,
    #[command(flatten)]
    pub api: ApiClientArgs,
    /// NATS server of the fleet; tasks go to `hangar-worker` processes (`nats://host:4222`;
    /// `tls://host:4222` requires TLS).
    #[arg(long = "nats", env = "HANGAR_NATS")]
    pub nats: Option<String>,
    /// NATS user name (with --nats-password): the identity the server's permissions name.
    #[arg(long = "nats-user", env = "HANGAR_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password of --nats-user.
    #[arg(
        long = "nats-password",
        env = "HANGAR_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// NATS authentication token (instead of a user and password).
    #[arg(long = "nats-token", env = "HANGAR_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS credentials file (nkey/JWT).
    #[arg(long = "nats-creds", env = "HANGAR_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Require TLS to NATS (implied by --nats-ca and --nats-tls-cert).
    #[arg(long = "nats-tls")]
    pub nats_tls: bool,
    /// PEM file of the CA that signed the NATS server's certificate; trusted instead of the
    /// system's roots. Implies --nats-tls.
    #[arg(long = "nats-ca", env = "HANGAR_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// PEM client certificate presented to NATS (for a server that verifies clients);
    /// needs --nats-tls-key. Implies --nats-tls.
    #[arg(
        long = "nats-tls-cert",
        env = "HANGAR_NATS_TLS_CERT",
        requires = "nats_tls_key"
    )]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of --nats-tls-cert.
    #[arg(
        long = "nats-tls-key",
        env = "HANGAR_NATS_TLS_KEY",
        requires = "nats_tls_cert"
    )]
    pub nats_tls_key: Option<PathBuf>,
}

/// Limits on the requests this process sends to a registry. With a fleet they are kept in
/// NATS KV and shared with every worker given the same, 429 and slowdown holds included.
#[derive(Args, Debug, Clone, Default)]
pub struct RateArgs {
    /// Requests per second to one registry: `HOST=N` (repeatable).
    #[arg(long = "rate-limit")]
    pub rate_limits: Vec<String>,
    /// Requests in flight to one registry, a blob's body included: `HOST=N` (repeatable).
    #[arg(long = "max-in-flight")]
    pub max_in_flight: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The image list.
    pub list: PathBuf,
    #[command(flatten)]
    pub mirror: MirrorArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address for the HTTP API, /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Registry TLS for planning (manifest reads); `--tls-verify=false` allows plain HTTP.
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// The coordinator's own registry credentials (it reads manifests while planning).
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// The fleet's blob cache, for the configs read while planning.
    #[arg(long = "cache", env = "HANGAR_CACHE")]
    pub cache: Option<String>,
    /// Scheduled bulk runs: a YAML list of {name, cron, list, args} (see docs).
    #[arg(long = "schedule")]
    pub schedule: Option<PathBuf>,
    /// The API's callers: a YAML file of tokens (name, SHA-256 of the token, role
    /// read|submit|admin, policy). Without it the API answers only on loopback.
    #[arg(long = "api-tokens", env = "HANGAR_API_TOKENS")]
    pub api_tokens: Option<PathBuf>,
    /// Serve the API without authentication on a non-loopback --listen (anyone who
    /// reaches it can run jobs with the fleet's credentials; warned about every hour).
    #[arg(long = "insecure-no-auth")]
    pub insecure_no_auth: bool,
    /// Serve the API over TLS with this certificate chain (PEM; needs --tls-key).
    #[arg(long = "tls-cert", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long = "tls-key", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub rate: RateArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The job (all jobs when left out).
    pub job: Option<String>,
    /// The coordinator (`hangar-coord serve`), e.g. http://coord:8080.
    #[arg(long = "server", env = "HANGAR_SERVER")]
    pub server: String,
    #[command(flatten)]
    pub api: ApiClientArgs,
    /// Follow the job until it ends, through coordinator restarts and short outages.
    #[arg(long = "watch", requires = "job")]
    pub watch: bool,
    /// With --watch: how long the coordinator may stay unreachable before giving up.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The job to cancel (yours, or any with an admin token).
    pub job: String,
    /// The coordinator (`hangar-coord serve`), e.g. http://coord:8080.
    #[arg(long = "server", env = "HANGAR_SERVER")]
    pub server: String,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

/// How a client proves itself to `serve`.
#[derive(Args, Debug, Clone, Default)]
pub struct ApiClientArgs {
    /// File holding the API bearer token (its first line); see `serve --api-tokens`.
    #[arg(long = "token-file", env = "HANGAR_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The API bearer token itself (prefer --token-file: the environment is visible to
    /// other processes of the same user).
    #[arg(long = "token", env = "HANGAR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for a coordinator serving TLS with its own CA.
    #[arg(long = "server-ca")]
    pub server_ca: Option<PathBuf>,
}

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
    #[arg(long = "tls-verify", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct RepoArgs {
    /// Repository (`docker://` is assumed when no transport is given).
    pub repository: String,
    #[arg(long = "tls-verify", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    pub reference: String,
    #[arg(long = "tls-verify", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
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
    #[arg(long = "tls-verify", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct ConvertListArgs {
    #[arg(short = 'i', long = "input")]
    pub input: PathBuf,
    /// Output file (default: INPUT.converted).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    #[arg(short = 's', long = "source", default_value = "")]
    pub source: String,
    #[arg(short = 'd', long = "destination", default_value = "")]
    pub destination: String,
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
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
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// Print the stored username for the registry.
    #[arg(long = "get-login")]
    pub get_login: bool,
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
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
    #[arg(long = "provenance", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub provenance: bool,
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// Blob cache to gather blobs in (beyond Hangar; default: a temporary directory next to
    /// the archive, removed afterwards).
    #[arg(long = "cache", env = "HANGAR_CACHE")]
    pub cache: Option<String>,
    /// Blob transfers at once (beyond Hangar; default 3 x jobs).
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
    #[arg(short = 'o', long = "failed", default_value = "load-failed.txt")]
    pub failed: PathBuf,
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
    #[arg(long = "provenance", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub provenance: bool,
    /// Replace the destination index instead of merging into it.
    #[arg(long = "overwrite")]
    pub overwrite: bool,
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// Accepted for Hangar compatibility.
    #[arg(long = "skip-login")]
    pub skip_login: bool,
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    /// Blob transfers at once (beyond Hangar; default 3 x jobs).
    #[arg(long = "transfers")]
    pub transfers: Option<usize>,
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
    /// Store custom files in an archive.
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
    /// Add local files or http(s) URLs, each as `docker.io/hangar-file/<name>:latest`
    /// (Helm charts, `store chart`, are not built).
    #[command(visible_aliases = ["files", "f"])]
    File(StoreFileArgs),
}

#[derive(Args, Debug)]
pub struct StoreFileArgs {
    /// The archive (it must exist: `archive init` makes an empty one).
    #[arg(short = 'f', long = "file")]
    pub file: String,
    /// Verify certificates of https URLs.
    #[arg(long = "tls-verify", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
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
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct ArchiveLsArgs {
    /// The archive (or give it as the argument).
    #[arg(short = 'f', long = "file")]
    pub file: Option<String>,
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
    #[arg(short = 'f', long = "file")]
    pub files: Vec<String>,
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
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
    #[arg(long = "source-registry", default_value = "")]
    pub source_registry: String,
    #[arg(long = "failed", default_value = "export-failed.txt")]
    pub failed: PathBuf,
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
    #[command(subcommand)]
    pub sub: Option<ExportSub>,
}

#[derive(Args, Debug)]
pub struct GenerateKeyArgs {
    /// Writes PREFIX.key and PREFIX.pub.
    #[arg(short = 'p', long = "prefix", default_value = "sigstore")]
    pub prefix: String,
    /// Read the passphrase from this file (trimmed) instead of asking twice.
    #[arg(long = "passphrase-file")]
    pub passphrase_file: Option<PathBuf>,
    /// Overwrite existing key files.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
}

/// Which images of a list, and where (sign, sign validate, scan).
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// Image list (default format).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub platforms: PlatformArgs,
    /// Override the registry of every line.
    #[arg(long = "registry", default_value = "")]
    pub registry: String,
    /// Override the project of every line.
    #[arg(long = "project", default_value = "")]
    pub project: String,
    /// File that receives the lines that failed (default: sign-failed.txt, scan-failed.txt).
    #[arg(short = 'o', long = "failed")]
    pub failed: Option<PathBuf>,
    #[arg(
        short = 'j',
        long = "jobs",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub jobs: i64,
    /// Bound on one image.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// Accepted for Hangar compatibility.
    #[arg(long = "skip-login")]
    pub skip_login: bool,
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
    #[command(flatten)]
    pub rate: RateArgs,
}

#[derive(Args, Debug)]
pub struct SignCmd {
    #[command(subcommand)]
    pub validate: Option<SignSub>,
    #[command(flatten)]
    pub args: SignArgs,
}

#[derive(Subcommand, Debug)]
pub enum SignSub {
    /// Verify the images' signatures with a public key and write a report.
    Validate(SignValidateArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SignArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// The private key (cosign's encrypted PEM).
    #[arg(short = 'p', long = "key")]
    pub key: Option<PathBuf>,
    /// Read the key's passphrase from this file (else COSIGN_PASSWORD, else a prompt).
    #[arg(long = "passphrase-file")]
    pub passphrase_file: Option<PathBuf>,
    /// Keyless signing (not supported here: it needs an OIDC provider and Fulcio).
    #[arg(long = "oidc-provider", default_value = "")]
    pub oidc_provider: String,
    /// Upload to a transparency log (not supported here; off by default for air gaps).
    #[arg(long = "tlog-upload", default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tlog_upload: bool,
    #[arg(long = "rekor-url", default_value = "https://rekor.sigstore.dev")]
    pub rekor_url: String,
    #[arg(long = "fulcio-url", default_value = "https://fulcio.sigstore.dev")]
    pub fulcio_url: String,
    /// Also sign the index (manifest list) digest.
    #[arg(long = "sign-manifest-index", hide = true, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub sign_manifest_index: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SignValidateArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// The public key (PEM).
    #[arg(short = 'k', long = "key")]
    pub key: Option<PathBuf>,
    /// Accept only signatures whose identity is this repository (e.g. where the images
    /// were signed before being mirrored: `docker.io/library/nginx`).
    #[arg(long = "exact-repository")]
    pub exact_repository: Option<String>,
    /// Keyless verification (not supported here).
    #[arg(long = "certificate-identity")]
    pub certificate_identity: Option<String>,
    #[arg(long = "certificate-oidc-issuer")]
    pub certificate_oidc_issuer: Option<String>,
    #[arg(long = "rekor-url", default_value = "https://rekor.sigstore.dev")]
    pub rekor_url: String,
    /// Accepted: transparency-log entries are never required here.
    #[arg(long = "insecure-ignore-tlog")]
    pub insecure_ignore_tlog: bool,
    /// Also verify the index (manifest list) digest.
    #[arg(long = "validate-manifest-index", hide = true, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub validate_manifest_index: bool,
    /// Report format: json, yaml or csv.
    #[arg(long = "format", default_value = "json")]
    pub format: String,
    /// Report file (default: sign-validate-report.FORMAT).
    #[arg(short = 'r', long = "report")]
    pub report: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ScanArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// Report format: csv, json, yaml, spdx-json, spdx-csv, cyclonedx-json.
    #[arg(long = "format", default_value = "csv")]
    pub format: String,
    /// Report file (default: scan-report.FORMAT).
    #[arg(short = 'r', long = "report")]
    pub report: Option<PathBuf>,
    /// The OSV database: a directory of records, a zip (osv.dev's all.zip), an http(s)
    /// URL, s3://bucket/key?…, or oci://registry/repo:tag (an artifact whose layer is one).
    #[arg(long = "db", env = "HANGAR_SCAN_DB")]
    pub db: Option<String>,
    /// Refuse a database whose newest record is older than this.
    #[arg(long = "db-max-age", default_value = "30d")]
    pub db_max_age: String,
    /// Use the database however old it is.
    #[arg(long = "skip-db-age-check")]
    pub skip_db_age_check: bool,
    /// Only report these severities (comma separated: CRITICAL,HIGH,MEDIUM,LOW,UNKNOWN).
    #[arg(long = "severity", value_delimiter = ',')]
    pub severity: Vec<String>,
    /// Exit with this code when findings of the selected severities remain (CI gates).
    #[arg(long = "exit-code", default_value_t = 0)]
    pub exit_code: u8,
    /// Blob cache: layers there are read from it, and inventories are kept in it by digest.
    #[arg(long = "cache", env = "HANGAR_CACHE")]
    pub cache: Option<String>,
    /// Accepted for Hangar compatibility: only `vuln` scanning is done.
    #[arg(long = "scanner", default_value = "vuln")]
    pub scanner: String,
}
