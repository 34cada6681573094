//! The engine every list command runs on: a job's images are planned (`planner`, through
//! `pull_source`'s mirrors and policy), turned into tasks and followed to their end
//! (`tracker`) on either backend (`job`); per-image work that copies nothing — signing,
//! scanning, validating — is planned by its command and followed by `tasks`. Commands call
//! in here as leaves; nothing here knows a command's flags.

pub mod in_flight;
pub mod job;
pub mod per_image;
pub mod planner;
pub mod pull_source;
pub mod snapshot;
pub mod tasks;
pub mod tracker;
pub mod work;

/// Ctrl-C, listened for from `on`'s start when a command runs the job (a service's jobs
/// leave signals to the service). A `ctrl_c()` future registers only once polled: a
/// SIGINT before a select first polled it would be lost, or, once another listener had
/// registered, ignored.
pub(crate) fn listen_for_ctrl_c(on: bool) -> Option<tokio::signal::unix::Signal> {
    on.then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok())
        .flatten()
}

/// Forgets the Ctrl-C `sigint` heard so far: one a job has already acted on.
pub(crate) fn forget_ctrl_c(sigint: &mut Option<tokio::signal::unix::Signal>) {
    use futures_util::FutureExt;
    if let Some(s) = sigint {
        while let Some(Some(())) = s.recv().now_or_never() {}
    }
}

/// Resolves at the next Ctrl-C `sigint` hears; never without a listener.
pub(crate) async fn ctrl_c(sigint: &mut Option<tokio::signal::unix::Signal>) {
    let heard = match sigint {
        Some(s) => s.recv().await.is_some(),
        None => false,
    };
    if !heard {
        std::future::pending::<()>().await;
    }
}
