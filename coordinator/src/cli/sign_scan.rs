//! Commands over the images of a list where they are: `sign` (and `sign validate`),
//! `generate-sigstore-key`, `scan`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{ApiClientArgs, BusArgs, PlatformArgs, RateArgs, RegistryArgs, ServerArgs};

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
    /// Images handled at once (1-20).
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
    #[command(flatten)]
    pub access: RegistryArgs,
    /// Accepted for Hangar compatibility.
    #[arg(long = "skip-login")]
    pub skip_login: bool,
    /// Accepted for Hangar compatibility (these commands ask nothing).
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
    #[command(flatten)]
    pub rate: RateArgs,
    #[command(flatten)]
    pub bus: BusArgs,
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
    #[command(flatten)]
    pub remote: ServerArgs,
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
    /// Transparency log (Rekor) URL, for --tlog-upload (not supported here).
    #[arg(long = "rekor-url", default_value = "https://rekor.sigstore.dev")]
    pub rekor_url: String,
    /// Fulcio URL, for keyless signing (not supported here).
    #[arg(long = "fulcio-url", default_value = "https://fulcio.sigstore.dev")]
    pub fulcio_url: String,
    /// OIDC issuer, for keyless signing (not supported here; accepted beside a key).
    #[arg(
        long = "oidc-issuer",
        default_value = "https://oauth2.sigstore.dev/auth"
    )]
    pub oidc_issuer: String,
    /// OIDC client id, for keyless signing (not supported here; accepted beside a key).
    #[arg(long = "oidc-client-id", default_value = "sigstore")]
    pub oidc_client_id: String,
    /// Also sign the index (manifest list) digest.
    #[arg(long = "sign-manifest-index", hide = true, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub sign_manifest_index: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SignValidateArgs {
    #[command(flatten)]
    pub list: ListArgs,
    #[command(flatten)]
    pub remote: ServerArgs,
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
    /// Keyless verification: the certificate's OIDC issuer (not supported here).
    #[arg(long = "certificate-oidc-issuer")]
    pub certificate_oidc_issuer: Option<String>,
    /// Transparency log (Rekor) URL (accepted; no transparency log is consulted here).
    #[arg(long = "rekor-url", default_value = "https://rekor.sigstore.dev")]
    pub rekor_url: String,
    /// Accepted: transparency-log entries are never required here.
    #[arg(long = "insecure-ignore-tlog")]
    pub insecure_ignore_tlog: bool,
    /// Accepted: verification is always offline here (no transparency log is fetched).
    #[arg(long = "offline", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub offline: Option<bool>,
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
    /// A coordinator started with `hangar-coord serve`: the scan's tasks run on its fleet
    /// and the report is written here. Not `--server`: that is Hangar's Trivy server.
    #[arg(long = "coordinator", env = "HANGAR_SERVER")]
    pub coordinator: Option<String>,
    #[command(flatten)]
    pub api: ApiClientArgs,
    /// Report format: csv, json, yaml, spdx-json, spdx-csv, cyclonedx-json.
    #[arg(long = "format", default_value = "csv")]
    pub format: String,
    /// Report file (default: scan-report.FORMAT).
    #[arg(short = 'r', long = "report")]
    pub report: Option<PathBuf>,
    /// The OSV database: a directory (JSON records, osv.dev's layout of
    /// `<Ecosystem>/all.zip`, or both), a zip (osv.dev's all.zip), an http(s) URL,
    /// s3://bucket/key?…, or oci://registry/repo:tag (an artifact whose layer is one).
    /// Given more than once, the databases are merged.
    #[arg(long = "db", env = "HANGAR_SCAN_DB")]
    pub db: Vec<String>,
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
    #[command(flatten)]
    pub trivy: TrivyArgs,
}

/// Hangar's Trivy flags. This scanner is offline by construction (its database is `--db`,
/// never fetched behind the user's back): the flags that only tune Trivy's online updates
/// are accepted and said to be ignored; those naming something it cannot use are refused,
/// saying what to use instead.
#[derive(Args, Debug, Clone, Default)]
pub struct TrivyArgs {
    /// Hangar (Trivy): do not update the vulnerability database. Ignored: the database is
    /// --db, never updated online.
    #[arg(long = "skip-db-update")]
    pub skip_db_update: bool,
    /// Hangar (Trivy): do not update the Java database. Ignored (no Java database is used).
    #[arg(long = "skip-java-db-update")]
    pub skip_java_db_update: bool,
    /// Hangar (Trivy): no online lookups while scanning. Ignored: scanning is always offline.
    #[arg(long = "offline-scan")]
    pub offline_scan: bool,
    /// Hangar (Trivy): Trivy's own log output. Ignored (there is no Trivy).
    #[arg(long = "trivy-log-output")]
    pub trivy_log_output: bool,
    /// Hangar (Trivy): a Trivy server. Refused: give the database with --db.
    #[arg(short = 's', long = "server")]
    pub server: Option<String>,
    /// Hangar (Trivy): the Trivy DB repository. Refused: mirror an OSV database artifact
    /// and give it as --db oci://REGISTRY/REPO:TAG.
    #[arg(long = "trivy-db-repo")]
    pub trivy_db_repo: Vec<String>,
    /// Hangar (Trivy): the Trivy Java DB repository. Refused (no Java database is used).
    #[arg(long = "trivy-java-db-repo")]
    pub trivy_java_db_repo: Vec<String>,
}

impl TrivyArgs {
    /// The flags accepted and ignored, for one warning; an error for those refused.
    pub fn check(&self) -> Result<Vec<&'static str>, String> {
        if let Some(server) = &self.server {
            return Err(format!(
                "-s/--server {server:?} (a Trivy server) is not supported: this scanner reads an OSV database itself; give it with --db"
            ));
        }
        if !self.trivy_db_repo.is_empty() || !self.trivy_java_db_repo.is_empty() {
            return Err("--trivy-db-repo/--trivy-java-db-repo name Trivy databases, which this scanner does not read: mirror an OSV database artifact and give it as --db oci://REGISTRY/REPO:TAG (or a zip, a directory, a URL)".into());
        }
        Ok([
            (self.skip_db_update, "--skip-db-update"),
            (self.skip_java_db_update, "--skip-java-db-update"),
            (self.offline_scan, "--offline-scan"),
            (self.trivy_log_output, "--trivy-log-output"),
        ]
        .into_iter()
        .filter(|(given, _)| *given)
        .map(|(_, flag)| flag)
        .collect())
    }
}
