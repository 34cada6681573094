//! `hangar-worker`: a stateless fleet worker. It pulls tasks from JetStream, runs the same
//! handlers as the embedded mode with registry credentials from its own auth file (never
//! from the bus), and reports events. On SIGTERM or Ctrl-C it stops pulling, lets what it
//! holds finish for a grace period, hands back what is still unfinished, and exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use hangar_shared::queue::TaskQueue;
use hangar_shared::queue::jetstream::{JetStreamQueue, JetStreamSink, NatsOptions, connect};
use hangar_shared::ratelimit::Limits;
use hangar_shared::registry::RegistryOptions;
use hangar_shared::retry::RetryPolicy;
use hangar_shared::store::{RegistryPool, Stores};
use hangar_shared::task::TaskKind;
use hangar_worker::Context;
use hangar_worker::context::policy::{ArchiveRoots, Confined, Policy, SignScopes};

#[derive(Parser, Debug)]
#[command(
    name = "hangar-worker",
    version,
    about = "Hangar fleet worker: copies blobs and manifests from a JetStream queue"
)]
struct Args {
    /// NATS server URL (`nats://host:4222`; `tls://host:4222` requires TLS).
    #[arg(long, env = "HANGAR_NATS")]
    nats: String,
    /// NATS user name (with --nats-password): the identity the server's permissions name.
    #[arg(long, env = "HANGAR_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password of --nats-user.
    #[arg(long, env = "HANGAR_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// NATS authentication token (instead of a user and password).
    #[arg(long, env = "HANGAR_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// NATS credentials file (nkey/JWT).
    #[arg(long, env = "HANGAR_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// Require TLS to NATS (implied by --nats-ca and --nats-tls-cert).
    #[arg(long)]
    nats_tls: bool,
    /// PEM file of the CA that signed the NATS server's certificate; trusted instead of the
    /// system's roots. Implies --nats-tls.
    #[arg(long, env = "HANGAR_NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// PEM client certificate presented to NATS (for a server that verifies clients);
    /// needs --nats-tls-key. Implies --nats-tls.
    #[arg(long, env = "HANGAR_NATS_TLS_CERT", requires = "nats_tls_key")]
    nats_tls_cert: Option<PathBuf>,
    /// PEM private key of --nats-tls-cert.
    #[arg(long, env = "HANGAR_NATS_TLS_KEY", requires = "nats_tls_cert")]
    nats_tls_key: Option<PathBuf>,
    /// Blob copies at once. More than the worker's link needs only strands work at a job's
    /// end: the copies a worker holds when the queue runs dry share its link while other
    /// workers idle (BENCHMARKS.md: 4 workers on 15 MB/s links 3.47× one worker with 16,
    /// 3.68× with 8, 3.78× with 6).
    #[arg(long, default_value_t = 8)]
    blob_concurrency: usize,
    /// Manifest pushes at once.
    #[arg(long, default_value_t = 4)]
    manifest_concurrency: usize,
    /// Index writes at once.
    #[arg(long, default_value_t = 2)]
    index_concurrency: usize,
    /// Archives written at once (needs --cache).
    #[arg(long, default_value_t = 1)]
    assemble_concurrency: usize,
    /// A signing key, by the name jobs use: `--sign-key NAME=PATH` (cosign's encrypted
    /// PEM; repeatable). Only workers with keys take sign tasks.
    #[arg(long = "sign-key")]
    sign_keys: Vec<String>,
    /// Where a key may sign: `--sign-scope NAME=GLOB` over `registry/repository` (`*`
    /// within one path segment, `**` across segments; repeatable, any match will do). A
    /// sign task outside its key's scope fails for good. A key with no scope signs
    /// anything (a warning says so at start).
    #[arg(long = "sign-scope")]
    sign_scopes: Vec<String>,
    /// The keys' passphrase (trimmed); else COSIGN_PASSWORD.
    #[arg(long)]
    sign_passphrase_file: Option<PathBuf>,
    /// Signatures at once.
    #[arg(long, default_value_t = 4)]
    sign_concurrency: usize,
    /// A fleet-wide request budget for one registry: `--rate-limit HOST=REQUESTS_PER_SECOND`
    /// (repeatable; all workers together, kept in NATS KV).
    #[arg(long = "rate-limit")]
    rate_limits: Vec<String>,
    /// A fleet-wide cap on requests in flight to one registry, a blob's body included:
    /// `--max-in-flight HOST=N` (repeatable; all workers together, kept in NATS KV).
    #[arg(long = "max-in-flight")]
    max_in_flight: Vec<String>,
    /// Image inventories read at once (scanning).
    #[arg(long, default_value_t = 2)]
    scan_concurrency: usize,
    /// Take package inventories the shared cache holds instead of reading the layers
    /// again. Off by default: anyone holding the bucket's credentials (any worker) could
    /// leave an empty inventory that hides an image's packages from every later scan.
    #[arg(long)]
    reuse_inventories: bool,
    /// Read-only checks run at once (mirror validate, sign validate).
    #[arg(long, default_value_t = 8)]
    check_concurrency: usize,
    /// CA certificates (*.crt) to trust for every registry; without it each registry's
    /// certs.d directory (~/.config/containers/certs.d/HOST, /etc/containers/certs.d/HOST,
    /// /etc/docker/certs.d/HOST) is read.
    #[arg(long = "cert-dir", env = "HANGAR_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    /// Registry credentials (this worker's own file).
    #[arg(long, env = "REGISTRY_AUTH_FILE")]
    authfile: Option<PathBuf>,
    /// `--tls-verify=false` skips certificate checks and allows plain HTTP to registries
    /// (left out: verified).
    #[arg(long = "tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    tls_verify: Option<bool>,
    /// Not a flag: refused, with `--tls-verify=false` as the tip (clap would otherwise offer
    /// a look-alike, `--index-concurrency`).
    #[arg(
        long = "insecure",
        hide = true,
        num_args = 0,
        default_missing_value = "",
        value_parser = clap::builder::UnknownArgumentValueParser::suggest(
            "to skip certificate checks and allow plain HTTP, use '--tls-verify=false'"
        )
    )]
    #[allow(dead_code)]
    insecure: Option<String>,
    /// Bound on one task attempt.
    #[arg(long, default_value = "10m")]
    timeout: String,
    /// A blob copy that moves no byte for this long, while waiting on no other worker's
    /// lease, is given up so another delivery (perhaps on another worker) can try; 0 turns
    /// it off.
    #[arg(long, default_value = "2m")]
    stall_timeout: String,
    /// JetStream `ack_wait` for the task consumers, applied when this worker creates them:
    /// how soon a task held by a dead worker is handed to another.
    #[arg(long, default_value = "60s")]
    ack_wait: String,
    /// Where archives may be written (and `sync` bases read): a directory or
    /// `s3://bucket/prefix` (repeatable; an s3 root without `?endpoint=` is on the cache's S3
    /// service). An assemble task for anywhere else fails for good. With none, only inside
    /// the --cache (not over its own folders).
    #[arg(long = "archive-root")]
    archive_roots: Vec<String>,
    /// Blob cache shared by the fleet: a directory, `file:///dir` or
    /// `s3://bucket?endpoint=…&region=…` (credentials from `AWS_*`).
    #[arg(long, env = "HANGAR_CACHE")]
    cache: Option<String>,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9464", env = "HANGAR_WORKER_LISTEN")]
    listen: std::net::SocketAddr,
    /// How long in-flight tasks may run on after SIGTERM; then they are handed back to the
    /// queue, for another worker at once, and the worker exits.
    #[arg(long, default_value = "30s")]
    grace: String,
}

fn main() -> Result<()> {
    // Before the runtime's threads exist: arenas are made per thread as it first allocates.
    hangar_shared::memory::cap_arenas();
    hangar_shared::memory::trim_now_and_then();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let ran = run().await;
            // A task dropped at its timeout or at the grace's end may have an upload's DELETE
            // still on its way.
            hangar_shared::registry::uploads_ended(UPLOADS_ENDED_WAIT).await;
            ran
        })
}

/// How long an exiting process waits for the DELETEs of uploads dropped unfinished.
const UPLOADS_ENDED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn run() -> Result<()> {
    let _telemetry = hangar_shared::telemetry::init("hangar-worker", "info")?;
    let args = Args::parse();
    let timeout = humantime::parse_duration(&args.timeout)
        .with_context(|| format!("invalid --timeout {:?}", args.timeout))?;
    let ack_wait = humantime::parse_duration(&args.ack_wait)
        .with_context(|| format!("invalid --ack-wait {:?}", args.ack_wait))?;
    let stall = match args.stall_timeout.trim() {
        "0" => Ok(Duration::ZERO),
        t => humantime::parse_duration(t),
    }
    .with_context(|| format!("invalid --stall-timeout {:?}", args.stall_timeout))?;
    let grace = humantime::parse_duration(&args.grace)
        .with_context(|| format!("invalid --grace {:?}", args.grace))?;
    let metrics = Arc::new(hangar_worker::metrics::Metrics::new());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bound = hangar_worker::http::serve(
        args.listen,
        hangar_worker::http::Probe {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    // The limits come first: a worker that would run unconfined because of a typo in
    // them must not start.
    let sign_keys = load_sign_keys(&args.sign_keys, args.sign_passphrase_file.as_deref())?;
    let policy = Policy {
        archives: ArchiveRoots::new(&args.archive_roots, args.cache.as_deref())?,
        signing: SignScopes::new(&args.sign_scopes, sign_keys.keys().map(String::as_str))?,
    };
    if args.cache.is_some() {
        tracing::info!(roots = %policy.archives.describe(), "archives only under these roots");
    }
    let mut names: Vec<&String> = sign_keys.keys().collect();
    names.sort();
    for name in names {
        if !policy.signing.is_scoped(name) {
            tracing::warn!(
                key = %name,
                "signing key {name:?} is unscoped: it signs any repository a task names \
                 (give it --sign-scope {name}=GLOB)"
            );
        }
    }
    let policy = Arc::new(policy);
    let client = connect(&NatsOptions {
        url: args.nats.clone(),
        user: args.nats_user.clone(),
        password: args.nats_password.clone(),
        token: args.nats_token.clone(),
        creds: args.nats_creds.clone(),
        require_tls: args.nats_tls,
        ca: args.nats_ca.clone(),
        tls_cert: args.nats_tls_cert.clone(),
        tls_key: args.nats_tls_key.clone(),
    })
    .await?;
    let concurrency = [
        (
            TaskKind::Sign,
            if sign_keys.is_empty() {
                0
            } else {
                args.sign_concurrency
            },
        ),
        (TaskKind::Scan, args.scan_concurrency),
        (TaskKind::Check, args.check_concurrency),
        (TaskKind::Blob, args.blob_concurrency),
        (TaskKind::Manifest, args.manifest_concurrency),
        (TaskKind::Index, args.index_concurrency),
        // Only a worker with the shared cache can write archives from it.
        (
            TaskKind::Assemble,
            if args.cache.is_some() {
                args.assemble_concurrency
            } else {
                0
            },
        ),
    ];
    // On a locked-down bus only the coordinator may create the streams: a worker that
    // starts first waits for them (not ready meanwhile) rather than exiting.
    let setup = async {
        let mut delay = Duration::from_secs(1);
        loop {
            match JetStreamQueue::consumer(client.clone(), &concurrency, ack_wait).await {
                Ok(q) => return q,
                Err(e) => {
                    tracing::warn!(
                        "setting up the task consumers: {e}; retrying in {delay:?} (the \
                         coordinator creates the streams on a locked-down bus)"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    };
    let js_queue = tokio::select! {
        q = setup => Arc::new(q),
        _ = shutdown_signal() => return Ok(()),
    };
    let queue: Arc<dyn TaskQueue> = js_queue.clone();
    // Queue depth for /metrics, refreshed in the background.
    let gauges = metrics.clone();
    let depth = js_queue.clone();
    tokio::spawn(async move {
        loop {
            if let Ok(kinds) = depth.pending().await {
                for (kind, pending, unacked) in kinds {
                    gauges.set_queue(kind, pending, unacked);
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    // The consumers wait for the streams and buckets (the coordinator makes them on a
    // locked-down bus), so they exist before the rest; once they exist they pull: a step
    // failing now hands back what they pulled before the worker exits.
    let prepared = async {
        let events = Arc::new(JetStreamSink::new(client.clone()));
        // Every retry, in the registry client and in the handlers, is counted by class.
        let retry = RetryPolicy {
            observer: Some(metrics.clone()),
            ..Default::default()
        };
        // Rate control is shared through NATS: budgets and in-flight caps where given, and a
        // 429 or a sharp slowdown seen by any worker holds every worker's requests to that
        // registry.
        let mut limits = Limits::default();
        for spec in &args.rate_limits {
            let (host, n) = Limits::parse_entry("--rate-limit", spec)?;
            limits.budgets.insert(host, n);
        }
        for spec in &args.max_in_flight {
            let (host, n) = Limits::parse_entry("--max-in-flight", spec)?;
            limits.concurrency.insert(host, n);
        }
        let holder = format!("worker-{}-{:016x}", std::process::id(), rand_id());
        let gate =
            hangar_shared::ratelimit::RateGate::fleet(client.clone(), limits, &holder).await?;
        let pool = RegistryPool::new(
            RegistryOptions {
                tls_verify: args.tls_verify,
                retry: retry.clone(),
                gate: Some(Arc::new(hangar_worker::metrics::MeteredGate {
                    inner: gate,
                    metrics: metrics.clone(),
                })),
                request_timeout: None,
                cert_dir: args.cert_dir.clone(),
            },
            args.authfile.clone(),
        );
        let cache = match &args.cache {
            Some(url) => Some(Arc::new(hangar_shared::cache::BlobCache::open(url)?)),
            None => None,
        };
        let ctx = Arc::new(Context {
            name: holder.clone(),
            stores: Arc::new(Confined {
                inner: Arc::new(Stores::new(Arc::new(pool), cache.clone())),
                roots: policy.clone(),
            }),
            retry,
            bytes_moved: Arc::new(AtomicU64::new(0)),
            task_timeout: (!timeout.is_zero()).then_some(timeout),
            stall_after: (!stall.is_zero()).then_some(stall),
            metrics: Some(metrics.clone()),
            cache,
            leases: match &args.cache {
                Some(_) => Some(Arc::new(
                    hangar_shared::lease::BlobLeases::open(client.clone(), &holder).await?,
                )),
                None => None,
            },
            sign_keys,
            policy: Some(policy),
            looks: Default::default(),
            copy_slots: Some(Arc::new(tokio::sync::Semaphore::new(
                args.blob_concurrency.max(1),
            ))),
            reuse_inventories: args.reuse_inventories,
        });
        Ok::<_, anyhow::Error>((events, ctx))
    };
    let (events, ctx) = match prepared.await {
        Ok(ready) => ready,
        Err(e) => {
            js_queue.leave().await;
            return Err(e);
        }
    };
    let total = hangar_shared::queue::jetstream::Lane::for_worker(&concurrency)
        .iter()
        .map(|(_, n)| n)
        .sum();
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(nats = %hangar_shared::queue::jetstream::redact_url(&args.nats), slots = total, "worker ready");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut running = tokio::spawn(hangar_worker::run(
        queue.clone(),
        events,
        ctx,
        total,
        stopped,
    ));
    let signalled = tokio::select! {
        _ = &mut running => false,
        _ = shutdown_signal() => true,
    };
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
    js_queue.close().await;
    if signalled {
        tracing::info!("stopping: no new tasks; {grace:?} for the ones in hand");
        if tokio::time::timeout(grace, &mut running).await.is_err() {
            tracing::warn!("grace period over; handing back the tasks still in hand");
            let _ = stop.send(());
            let _ = running.await;
        }
    }
    js_queue.leave().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Unique enough to tell lease holders apart (every container's pid may be 1).
fn rand_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Decrypts every `NAME=PATH` key once, at start: a wrong passphrase stops the worker
/// here rather than failing every sign task later.
fn load_sign_keys(
    specs: &[String],
    passphrase_file: Option<&std::path::Path>,
) -> Result<std::collections::HashMap<String, Arc<hangar_shared::sign::KeyPair>>> {
    let mut keys = std::collections::HashMap::new();
    if specs.is_empty() {
        return Ok(keys);
    }
    let pass = match passphrase_file {
        Some(f) => hangar_shared::local_file::read_text(f, hangar_shared::local_file::CONFIG)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("COSIGN_PASSWORD").map_err(|_| {
            anyhow::anyhow!("--sign-key needs --sign-passphrase-file or COSIGN_PASSWORD")
        })?,
    };
    for spec in specs {
        let Some((name, path)) = spec.split_once('=') else {
            anyhow::bail!("--sign-key {spec:?}: expected NAME=PATH");
        };
        let pem = hangar_shared::local_file::read_text(path, hangar_shared::local_file::CONFIG)
            .with_context(|| format!("reading key {name:?}"))?;
        let key = hangar_shared::sign::KeyPair::from_encrypted_pem(
            &pem,
            pass.as_bytes(),
            &format!("signing key {name:?}"),
        )?;
        keys.insert(name.to_owned(), Arc::new(key));
    }
    Ok(keys)
}
