//! The command line: Hangar's command names, flags and defaults, plus a few of our own
//! (marked "beyond Hangar" in their help).

mod archive;
mod cobra_order;
mod common;
mod fleet;
mod generate_list;
mod mirror;
mod registry;
mod sign_scan;
mod view;

pub use archive::*;
pub use cobra_order::subcommand_first;
pub use common::*;
pub use fleet::*;
pub use generate_list::*;
pub use mirror::*;
pub use registry::*;
pub use sign_scan::*;
pub use view::*;

use clap::{Parser, Subcommand};

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
    /// Do not evaluate the signature policy (policy.json): accept every image, as
    /// Hangar's in-memory "insecureAcceptAnything" policy.
    #[arg(long, global = true)]
    pub insecure_policy: bool,
    /// Print `-` instead of the time in log lines.
    #[arg(long, global = true)]
    pub hide_log_time: bool,
    /// Not a flag: refused, pointing at `--tls-verify=false` (see [`RefuseInsecure`]).
    #[arg(
        long,
        global = true,
        hide = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "",
        value_parser = RefuseInsecure
    )]
    pub insecure: Option<String>,
    /// CA certificates (*.crt) to trust for every registry, as containers/image's
    /// `--cert-dir`; without it each registry's certs.d directory is read
    /// (~/.config/containers/certs.d/HOST, /etc/containers/certs.d/HOST, /etc/docker/certs.d/HOST).
    #[arg(long = "cert-dir", global = true, env = "HANGAR_CERT_DIR")]
    pub cert_dir: Option<std::path::PathBuf>,
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
    /// Hangar's deprecated sign v1 (sigstore attachments through registries.d): refused,
    /// with what to use instead.
    #[command(hide = true, disable_help_flag = true)]
    Signv1 {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
    /// Scan the images of a list for vulnerabilities (offline, OSV data).
    Scan(Box<ScanArgs>),
    /// Print a manifest, a config or a summary of an image; `inspect list` reports on a list.
    #[command(
        visible_alias = "i",
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true
    )]
    Inspect(InspectArgs),
    /// Print the provenance or SBOM attestation of an image.
    #[command(subcommand)]
    View(ViewCmd),
    /// List the tags of a repository as JSON.
    ListTags(RepoArgs),
    /// Delete an image manifest from a registry.
    Delete(DeleteArgs),
    /// Build a manifest index from images in one repository and push it.
    MergeManifest(MergeManifestArgs),
    /// Convert a default-format list into mirror format.
    ConvertList(ConvertListArgs),
    /// Generate a Rancher version's image lists from KDM data and chart repositories.
    GenerateList(GenerateListArgs),
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
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        /// Leave commands' and flags' descriptions out of the script.
        #[arg(long)]
        no_descriptions: bool,
    },
}

/// `--insecure`, which skopeo and podman spell `--tls-verify=false`: without this, clap
/// would offer `--insecure-policy` (signature policies, not TLS) as the flag meant. Given,
/// it is an unknown argument whose tip is `--tls-verify=false` where the command has that
/// flag, and a plain "no such flag" where it has not.
#[derive(Clone, Debug)]
pub struct RefuseInsecure;

impl clap::builder::TypedValueParser for RefuseInsecure {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let has_tls_verify = cmd
            .get_arguments()
            .any(|a| a.get_long() == Some("tls-verify"));
        let tip = if has_tls_verify {
            "to skip certificate checks and allow plain HTTP, use '--tls-verify=false'"
        } else {
            "the commands that reach registries take '--tls-verify=false' instead (this one does not)"
        };
        // Named as typed, without the optional value it takes so that `--insecure=…` is
        // refused the same way.
        let named = arg.map(|a| a.clone().num_args(0));
        clap::builder::UnknownArgumentValueParser::suggest(tip).parse_ref(
            cmd,
            named.as_ref(),
            value,
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Command {
        let argv = std::iter::once("hangar-coord").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().command.unwrap()
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tls_verify_left_out_is_none_where_it_is_optional() {
        let tls = |args: &[&str]| match parse(args) {
            Command::Scan(a) => a.list.access.tls_verify,
            Command::Login(a) => a.access.tls_verify,
            Command::Load(a) => a.args.access.tls_verify,
            Command::Save(a) => a.args.list.access.tls_verify,
            other => panic!("{other:?}"),
        };
        for cmd in [&["scan"][..], &["login", "r.example"], &["load"], &["save"]] {
            assert_eq!(tls(cmd), None, "{cmd:?}");
            let bare = [cmd, &["--tls-verify"]].concat();
            assert_eq!(tls(&bare), Some(true), "{bare:?}");
            let off = [cmd, &["--tls-verify=false"]].concat();
            assert_eq!(tls(&off), Some(false), "{off:?}");
        }
    }

    /// Left out, skopeo-style commands verify unless registries.conf marks the registry
    /// insecure (as skopeo does); given, the flag decides.
    #[test]
    fn tls_verify_left_out_lets_registries_conf_decide() {
        let tls = |args: &[&str]| match parse(args) {
            Command::Inspect(a) => a.access.tls_verify,
            Command::ListTags(a) => a.access.tls_verify,
            Command::Delete(a) => a.access.tls_verify,
            Command::MergeManifest(a) => a.access.tls_verify,
            other => panic!("{other:?}"),
        };
        let merge = ["merge-manifest", "r/a:t", "r/a:1", "r/a:2"];
        for cmd in [
            &["inspect", "r/a:t"][..],
            &["list-tags", "r/a"],
            &["delete", "r/a:t"],
            &merge,
        ] {
            assert_eq!(tls(cmd), None, "{cmd:?}");
            assert_eq!(
                tls(&[cmd, &["--tls-verify"]].concat()),
                Some(true),
                "{cmd:?}"
            );
            assert_eq!(
                tls(&[cmd, &["--tls-verify=false"]].concat()),
                Some(false),
                "{cmd:?}"
            );
        }
    }

    #[test]
    fn authfile_reaches_the_command() {
        let Command::Sign(a) = parse(&["sign", "--authfile", "auth.json"]) else {
            panic!()
        };
        assert_eq!(a.args.list.access.authfile, Some("auth.json".into()));
        let Command::Inspect(a) = parse(&["inspect", "r/a:t", "--authfile=auth.json"]) else {
            panic!()
        };
        assert_eq!(a.access.authfile, Some("auth.json".into()));
    }
}
