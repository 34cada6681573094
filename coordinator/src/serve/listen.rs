//! The service's front: how it is reached ([`Access`]: address, tokens, TLS, connection
//! limits) and its start-up ([`run`]): the job bucket, resumed jobs, schedules, the router
//! and the listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, kv};
use axum::Router;
use axum::routing::get;

use super::routes::{authenticate, cancel, list, metrics, results, status, submit};
use super::{JOB_BUCKET, JobRequest, Server, auth};
use crate::cli::MirrorArgs;
use crate::console::Console;
use crate::engine::job;

/// How the API is reached and who may use it.
pub struct Access {
    pub listen: SocketAddr,
    /// `--api-tokens`; without it only loopback is served, unless `insecure_no_auth`.
    pub tokens: Option<auth::Tokens>,
    pub insecure_no_auth: bool,
    /// `--tls-cert`, `--tls-key` (PEM).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `--max-connections` (see [`hangar_shared::connections`]).
    pub max_connections: usize,
    /// `--keep-jobs`: finished jobs remembered, the newest.
    pub keep_jobs: usize,
    /// `--results-memory`: bytes every job's held outcomes may weigh together.
    pub results_memory: usize,
}

impl Access {
    /// Refuses to expose an unauthenticated API beyond this machine by accident.
    pub fn check(&self) -> Result<()> {
        if self.tokens.is_none() && !self.listen.ip().is_loopback() && !self.insecure_no_auth {
            anyhow::bail!(
                "refusing to serve the API on {} without authentication: give --api-tokens FILE \
                 (or --listen on a loopback address; --insecure-no-auth if you really mean it)",
                self.listen
            );
        }
        Ok(())
    }
}

pub async fn run(
    access: Access,
    nats: async_nats::Client,
    defaults: MirrorArgs,
    schedules: Vec<crate::schedule::Schedule>,
    archive_roots: Option<hangar_worker::context::policy::ArchiveRoots>,
    console: Arc<Console>,
) -> Result<()> {
    access.check()?;
    let listen = access.listen;
    let js = jetstream::new(nats.clone());
    hangar_shared::queue::jetstream::ensure_streams(&js).await?;
    let kv = match js.get_key_value(JOB_BUCKET).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: JOB_BUCKET.into(),
                history: 1,
                ..Default::default()
            })
            .await
            .context("creating the job bucket")?,
    };
    let gate = crate::commands::rate_gate(&defaults.rate, Some(&nats)).await?;
    let server = Server {
        gate,
        nats,
        kv,
        jobs: Arc::new(Mutex::new(HashMap::new())),
        admitting: Arc::new(Mutex::new(HashMap::new())),
        keep_jobs: access.keep_jobs,
        results_budget: super::held::Budget::new(access.results_memory),
        defaults: Arc::new(defaults),
        console: console.clone(),
        run: Arc::new(format!("r{}", job::new_job_id())),
        tokens: access.tokens.map(Arc::new),
        metrics: Arc::new(crate::metrics::Metrics::new().context("registering metrics")?),
        archive_roots: archive_roots.map(Arc::new),
    };
    let resumed = server.resume().await?;
    if !schedules.is_empty() {
        let s = server.clone();
        tokio::spawn(crate::schedule::run(
            schedules,
            s.console.clone(),
            move |name| {
                let s = s.clone();
                async move { s.busy(&name) }
            },
            {
                let s = server.clone();
                move |request: JobRequest| {
                    let s = s.clone();
                    async move {
                        let id = job::new_job_id();
                        s.start(id.clone(), request, None)
                            .await
                            .map(|()| id)
                            .map_err(|e| e.to_string())
                    }
                }
            },
        ));
    }
    if server.tokens.is_none() && !listen.ip().is_loopback() {
        // Said at start and every hour, so it is in whatever window of logs someone reads.
        let console = console.clone();
        tokio::spawn(async move {
            loop {
                console.warn(
                    None,
                    format!(
                        "The API on {listen} has no authentication (--insecure-no-auth): \
                         anyone who reaches it can run jobs with the fleet's credentials"
                    ),
                );
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            }
        });
    }
    // Bodies are bounded in size and time (`routes::submit`).
    let jobs = Router::new()
        .route("/jobs", get(list).post(submit))
        .route("/jobs/{id}", get(status).delete(cancel))
        .route("/jobs/{id}/results", get(results))
        .layer(axum::extract::DefaultBodyLimit::max(
            super::routes::BODY_LIMIT,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            server.clone(),
            authenticate,
        ));
    let app = Router::new()
        .merge(jobs)
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(server);
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    match access.tls {
        Some((cert, key)) => {
            let pem = |p: &std::path::Path| {
                hangar_shared::local_file::read(p, hangar_shared::local_file::CONFIG)
            };
            let config = async {
                axum_server::tls_rustls::RustlsConfig::from_pem(pem(&cert)?, pem(&key)?).await
            }
            .await
            .with_context(|| {
                format!(
                    "reading the API's TLS certificate {} and key {}",
                    cert.display(),
                    key.display()
                )
            })?;
            // HTTP/1.1 only, as the server speaks (see hangar_shared::connections).
            let mut tls = (*config.get_inner()).clone();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            console.info(
                None,
                format!("Serving on https://{bound} ({resumed} jobs resumed)"),
            );
            hangar_shared::connections::bound(
                axum_server::from_tcp_rustls(listener, config)?,
                access.max_connections,
            )
            .serve(app.into_make_service())
            .await?;
        }
        None => {
            console.info(
                None,
                format!("Serving on http://{bound} ({resumed} jobs resumed)"),
            );
            hangar_shared::connections::bound(
                axum_server::from_tcp(listener)?,
                access.max_connections,
            )
            .serve(app.into_make_service())
            .await?;
        }
    }
    Ok(())
}
