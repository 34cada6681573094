//! `view provenance IMAGE` and `view sbom IMAGE`: print an image's buildx (or cosign
//! `.att`) attestation.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::VerifyingRegistryArgs;

#[derive(Subcommand, Debug)]
pub enum ViewCmd {
    /// Print the SLSA provenance attestation of an image as JSON.
    Provenance(ViewArgs),
    /// Print the SBOM (SPDX or CycloneDX) attestation of an image as JSON.
    Sbom(ViewArgs),
}

/// Hangar's `view provenance|sbom` flags and defaults.
#[derive(Args, Debug)]
pub struct ViewArgs {
    /// Image reference (`docker://` is assumed when no transport is given).
    pub reference: String,
    /// File to write the JSON to (default: stdout).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Architecture of the image to choose from an index (empty: this machine's).
    #[arg(long = "override-arch", default_value = "")]
    pub override_arch: String,
    /// Operating system of the image to choose from an index (empty: linux).
    #[arg(long = "override-os", default_value = "")]
    pub override_os: String,
    #[command(flatten)]
    pub access: VerifyingRegistryArgs,
    /// Overwrite an existing output file without asking.
    #[arg(short = 'y', long = "auto-yes")]
    pub yes: bool,
    /// Bound on the whole command, every request and body included (beyond Hangar), e.g.
    /// 10m, 90s.
    #[arg(long = "timeout", default_value = "10m")]
    pub timeout: String,
}
