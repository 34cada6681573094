//! `hangar-coord`: Hangar's commands on one pipeline (planner → queue → handlers →
//! tracker), run embedded in this process.

mod cli;
mod commands;
mod console;
mod engine;
mod metrics;
mod schedule;
mod serve;
mod spec;
mod stdout;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command, MirrorSub};
use tracing::Instrument;

pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

/// The name this program was started as: `hangar` (Hangar's own, for scripts written for
/// it; the install links it) or `hangar-coord`. Help, errors and completions use it.
fn invoked_name() -> &'static str {
    let hangar = std::env::args_os()
        .next()
        .is_some_and(|a| std::path::Path::new(&a).file_name() == Some("hangar".as_ref()));
    if hangar { "hangar" } else { "hangar-coord" }
}

fn version_line() -> String {
    format!(
        "{} version {VERSION} - {}",
        invoked_name(),
        env!("HANGAR_GIT_COMMIT")
    )
}

/// The command line as clap sees it, under the name the program was started as.
fn cli_command() -> clap::Command {
    let name = invoked_name();
    Cli::command().name(name).bin_name(name)
}

fn main() -> ExitCode {
    // Before the runtime's threads exist: arenas are made per thread as it first allocates.
    hangar_shared::memory::cap_arenas();
    hangar_shared::memory::trim_now_and_then();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(start()),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start() -> ExitCode {
    // Usage errors exit 1, as Hangar's (clap's own is 2); help and version exit 0.
    let command = cli_command();
    let args = cli::subcommand_first(&command, std::env::args_os().collect());
    let cli = match command
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(1),
            };
        }
    };
    let filter = if cli.debug { "debug" } else { "warn" };
    let _telemetry = match hangar_shared::telemetry::init("hangar-coord", filter) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let console = console::Console::new(cli.hide_log_time);
    // A command is one trace; `serve` is not a command's worth of work: each job it runs is
    // its own trace.
    let command = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let span = if matches!(cli.command, Some(Command::Serve(_))) {
        tracing::Span::none()
    } else {
        tracing::info_span!("command", otel.name = %format!("hangar-coord {command}"))
    };
    let ran = run(cli, console.clone()).instrument(span).await;
    // A copy dropped at its timeout may have its upload's DELETE still on its way.
    hangar_shared::registry::uploads_ended(std::time::Duration::from_secs(5)).await;
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<commands::scan::ExitWith>().is_some() => {
            let code = e
                .downcast_ref::<commands::scan::ExitWith>()
                .map_or(1, |x| x.code);
            console.log(console::Level::Error, None, format!("{e:#}"));
            ExitCode::from(code)
        }
        Err(e) => {
            console.log(console::Level::Fatal, None, format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli, console: std::sync::Arc<console::Console>) -> anyhow::Result<()> {
    commands::set_cert_dir(cli.cert_dir.clone());
    commands::set_policy(cli.insecure_policy);
    if cli.version {
        stdout::outln!("{}", version_line())?;
        return Ok(());
    }
    let Some(command) = cli.command else {
        cli_command().print_help()?;
        return Ok(());
    };
    match command {
        Command::Mirror(m) => match m.validate {
            Some(MirrorSub::Validate(args)) => {
                commands::validate::run(&args, cli.debug, console).await
            }
            None => commands::mirror::run(&m.args, cli.debug, console).await,
        },
        Command::Save(s) => match s.validate {
            Some(cli::SaveSub::Validate(a)) => {
                commands::save_validate::run(
                    &a.list,
                    &a.destination,
                    "save-failed.txt",
                    cli.debug,
                    console,
                )
                .await
            }
            None => commands::save::save(&s.args, cli.debug, console, None).await,
        },
        Command::Sync(s) => match s.validate {
            Some(cli::SyncSub::Validate(a)) => {
                let Some(dest) = &a.destination else {
                    anyhow::bail!("the archive is required: use -d/--destination");
                };
                commands::save_validate::run(&a.list, dest, "sync-failed.txt", cli.debug, console)
                    .await
            }
            None => commands::save::sync(&s.args, cli.debug, console, None).await,
        },
        Command::Load(l) => match l.validate {
            Some(cli::LoadSub::Validate(a)) => {
                commands::load::validate(&a, cli.debug, console).await
            }
            None => commands::load::load(&l.args, cli.debug, console, None).await,
        },
        Command::GenerateSigstoreKey(a) => commands::sign::generate_key(&a, &console),
        Command::Sign(s) => match s.validate {
            Some(cli::SignSub::Validate(a)) => {
                commands::sign::validate(&a, cli.debug, console).await
            }
            None => commands::sign::sign(&s.args, cli.debug, console).await,
        },
        Command::Scan(a) => commands::scan::run(&a, cli.debug, console).await,
        Command::Signv1 { .. } => Err(anyhow::anyhow!(
            "signv1 (Hangar's sign v1, deprecated since v1.9) is not supported: sign with `hangar sign -f LIST -p cosign.key`, check with `hangar sign validate -f LIST -k cosign.pub`; their signatures are the same cosign `sha256-<hex>.sig` attachments"
        )),
        Command::Archive(a) => commands::archive::run(a, &console).await,
        Command::Submit(mut a) => {
            if a.mirror.file.is_some() {
                anyhow::bail!("give the list as the argument of submit, not with -f");
            }
            if a.mirror.failed.as_os_str() == "mirror-failed.txt" {
                a.mirror.failed = "submit-failed.txt".into();
            }
            if let Some(spec) = &a.spec {
                let Some(server) = a.mirror.fleet.remote.server.clone() else {
                    anyhow::bail!(
                        "--spec sends a job to a coordinator: give --server (with --nats, use the command of the job's kind)"
                    );
                };
                return commands::submit_spec::submit_spec(&server, spec, &a.mirror, console).await;
            }
            a.mirror.file = a.list.clone();
            commands::mirror::run(&a.mirror, cli.debug, console).await
        }
        Command::Serve(a) => {
            let access = serve::Access {
                listen: a.listen,
                tokens: a
                    .api_tokens
                    .as_deref()
                    .map(serve::auth::Tokens::load)
                    .transpose()?,
                insecure_no_auth: a.insecure_no_auth,
                tls: a.tls_cert.clone().zip(a.tls_key.clone()),
                max_connections: a.max_connections as usize,
                keep_jobs: a.keep_jobs as usize,
                results_memory: usize::try_from(anyhow::Context::context(
                    commands::parse_size(&a.results_memory),
                    "--results-memory",
                )?)
                .unwrap_or(usize::MAX),
            };
            access.check()?;
            let nats = commands::mirror::fleet_client(&a.fleet.bus).await?;
            let defaults = cli::MirrorArgs {
                tls_verify: a.tls_verify,
                authfile: a.authfile.clone(),
                cache: a.cache.clone(),
                rate: a.rate.clone(),
                // Archive jobs run the commands' own code on the fleet, as this server (and
                // never through a server: HANGAR_SERVER in its environment is not theirs).
                fleet: cli::FleetArgs {
                    remote: Default::default(),
                    bus: a.fleet.bus.clone(),
                },
                ..Default::default()
            };
            let archive_roots = match a.archive_root.is_empty() {
                true => None,
                false => Some(
                    hangar_worker::context::policy::ArchiveRoots::new(&a.archive_root, None)?
                        .of_the_coordinator(),
                ),
            };
            let schedules = match &a.schedule {
                Some(path) => schedule::load(path)?,
                None => Vec::new(),
            };
            serve::run(access, nats, defaults, schedules, archive_roots, console).await
        }
        Command::Status(a) => commands::remote::status(&a, &console).await,
        Command::Cancel(a) => commands::remote::cancel(&a.server, &a.api, &a.job).await,
        Command::Inspect(a) => match &a.list {
            Some(cli::InspectSub::List(l)) => {
                commands::inspect_list::run(l, cli.debug, &console).await
            }
            None => commands::within(&a.timeout, commands::inspect::run(&a, &console)).await,
        },
        Command::View(v) => {
            let (a, kind) = match &v {
                cli::ViewCmd::Provenance(a) => (a, commands::view::Kind::Provenance),
                cli::ViewCmd::Sbom(a) => (a, commands::view::Kind::Sbom),
            };
            commands::within(&a.timeout, commands::view::run(a, kind, &console)).await
        }
        Command::ListTags(a) => commands::within(&a.timeout, commands::list_tags::run(&a)).await,
        Command::Delete(a) => {
            commands::within(&a.timeout, commands::delete::run(&a, &console)).await
        }
        Command::MergeManifest(a) => {
            commands::within(&a.timeout, commands::merge_manifest::run(&a, &console)).await
        }
        Command::ConvertList(a) => commands::convert_list::run(&a, &console),
        Command::GenerateList(a) => commands::generate_list::run(&a, &console).await,
        Command::Login(a) => commands::login::login(&a).await,
        Command::Logout(a) => commands::login::logout(&a),
        Command::Version => Ok(stdout::outln!("{}", version_line())?),
        Command::Completion {
            shell,
            no_descriptions,
        } => {
            let mut command = cli_command();
            if no_descriptions {
                // Built first, so that clap's own help flags and subcommands are there.
                command.build();
                command = without_descriptions(command);
            }
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, invoked_name(), &mut script);
            Ok(stdout::write(&script)?)
        }
    }
}

/// `command` with no description on it or any subcommand, flag or argument (cobra's
/// `completion --no-descriptions`).
fn without_descriptions(command: clap::Command) -> clap::Command {
    let command = command
        .about(None)
        .long_about(None)
        .mut_args(|a| a.help(None).long_help(None));
    command.mut_subcommands(without_descriptions)
}
