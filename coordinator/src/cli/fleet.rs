//! The fleet: `submit`, `serve`, `status`, `cancel`, and the flags that send a command to a
//! coordinator or the workers.

use std::path::PathBuf;

use clap::Args;

use super::{MirrorArgs, RateArgs};

/// Run on the fleet instead of in this process (beyond Hangar).
#[derive(Args, Debug, Clone, Default)]
pub struct FleetArgs {
    #[command(flatten)]
    pub remote: ServerArgs,
    #[command(flatten)]
    pub bus: BusArgs,
}

/// A coordinator started with `hangar-coord serve`, and how to prove oneself to it.
#[derive(Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// A coordinator started with `hangar-coord serve`: the job runs there.
    #[arg(long = "server", env = "HANGAR_SERVER")]
    pub server: Option<String>,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

/// The fleet's NATS: the tasks of a command go to `hangar-worker` processes through it.
#[derive(Args, Debug, Clone, Default)]
pub struct BusArgs {
    /// NATS server of the fleet; tasks go to `hangar-worker` processes (`nats://host:4222`;
    /// `tls://host:4222` requires TLS).
    #[arg(long = "nats", env = "HANGAR_NATS")]
    pub nats: Option<String>,
    /// How long a run's tasks of a kind may wait with no worker taking that kind before the
    /// run fails, naming the worker flag that takes it (`0`: wait for ever).
    #[arg(
        long = "unserved-timeout",
        env = "HANGAR_UNSERVED_TIMEOUT",
        default_value = "30s"
    )]
    pub unserved_timeout: String,
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
pub struct SubmitArgs {
    /// The image list.
    #[arg(required_unless_present = "spec")]
    pub list: Option<PathBuf>,
    /// A job specification of any kind (JSON, docs/API.md) to send to --server as it is,
    /// instead of a list (beyond Hangar).
    #[arg(long = "spec", conflicts_with = "list")]
    pub spec: Option<PathBuf>,
    #[command(flatten)]
    pub mirror: MirrorArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address for the HTTP API, /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Registry TLS for planning (manifest reads): verified when left out;
    /// `--tls-verify=false` skips the checks and allows plain HTTP.
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
    /// Where save, sync and load jobs may name archives (a directory, or
    /// s3://bucket/prefix; repeatable): the coordinator opens and names archives only
    /// inside these. Without it, those jobs are refused.
    #[arg(long = "archive-root")]
    pub archive_root: Vec<String>,
    /// Connections the API holds open at once; one more is closed as it arrives. Each must
    /// send a request's head within 10 s.
    #[arg(long = "max-connections", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Finished jobs the service remembers (in memory and in its bucket), the newest;
    /// older ones are forgotten.
    #[arg(long = "keep-jobs", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_jobs: u32,
    /// Memory for the per-image outcomes held for clients (scan inventories, signatures),
    /// every job's together, e.g. 1G or 512M. A job whose outcomes would pass it has them
    /// dropped (the job runs on; its client is told).
    #[arg(long = "results-memory", default_value = "1G")]
    pub results_memory: String,
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
    /// Print the coordinator's JSON instead of a table.
    #[arg(long = "json")]
    pub json: bool,
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
