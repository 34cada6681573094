//! "What is this task waiting on?", answered from wherever the wait happens — a blob lease
//! held by another worker, a registry's in-flight slots or request budget, a fleet-wide
//! hold — to whoever runs the task (the worker, which tells the job). A task-local, so the
//! code that waits needs no handle to pass around; outside a task's scope it is a no-op.

use std::sync::Arc;

/// Receives what the current task waits on.
pub type Listener = Arc<dyn Fn(String) + Send + Sync>;

tokio::task_local! {
    static LISTENER: Listener;
}

/// Says what the current task now waits on.
pub fn on(what: impl Into<String>) {
    let what = what.into();
    let _ = LISTENER.try_with(|l| l(what));
}

/// Runs `work` with `listener` told of its waits.
pub async fn scope<F: std::future::Future>(listener: Listener, work: F) -> F::Output {
    LISTENER.scope(listener, work).await
}
