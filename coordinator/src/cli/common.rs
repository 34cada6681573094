//! Flag groups several commands flatten: platforms, registry access, request limits.

use std::path::PathBuf;

use clap::Args;

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

    /// Hangar's two lines naming the selection before a run.
    pub fn log(&self, console: &crate::console::Console) {
        console.info(None, format!("Arch List: [{}]", self.arch.join(",")));
        console.info(None, format!("OS List: [{}]", self.os.join(",")));
    }
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

/// How a command reaches registries: `--tls-verify` (left out: verify) and `--authfile`, as
/// save, sync, load, sign, scan and login take them. (`mirror` and `serve` declare their
/// own, with their own help: the job specification and the server set those by field.)
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Verify TLS certificates (the default when left out); `--tls-verify=false` also allows
    /// plain HTTP.
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// Auth file to read registry credentials from first (`login` writes there).
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
}

/// [`RegistryArgs`] as Hangar's skopeo-style commands take them (inspect, list-tags,
/// delete, merge-manifest), with skopeo's help: true unless told, as skopeo does, and then
/// `registries.conf` may mark a registry insecure.
#[derive(Args, Debug, Clone)]
pub struct VerifyingRegistryArgs {
    /// Verify TLS certificates; `--tls-verify=false` also allows plain HTTP [default: true;
    /// left out, a registry registries.conf marks `insecure` is not verified].
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: Option<bool>,
    /// Auth file to read registry credentials from first (`login` writes there).
    #[arg(long = "authfile")]
    pub authfile: Option<PathBuf>,
}
