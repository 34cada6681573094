//! What a running task is doing, as its worker sees it: the bytes it moves (counted per
//! delivery, handed on to the process's total every 250 ms) and what it waits on. From
//! these the runner tells a stalled copy — no byte moved for `--stall-timeout`, and not
//! waiting on another worker's lease — from a slow one, and gives the stalled one up so
//! that another delivery, perhaps on another worker, can try.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Context;

/// One delivery's progress, shared with its handler through a task-local.
#[derive(Default)]
pub struct TaskProgress {
    bytes: Arc<AtomicU64>,
    waiting: AtomicBool,
    /// The last wait told, so a wait repeated request after request is told once.
    told: std::sync::Mutex<Option<String>>,
}

tokio::task_local! {
    static TASK: Arc<TaskProgress>;
}

/// The counter a handler's byte streams add to: its delivery's, else the process's.
pub fn counter(ctx: &Context) -> Arc<AtomicU64> {
    TASK.try_with(|t| t.bytes.clone())
        .unwrap_or_else(|_| ctx.bytes_moved.clone())
}

/// Runs `work` as one delivery: its byte streams count into `task`, and what it waits on
/// (`hangar_shared::waiting::on`, from the lease, the rate gate, …) marks it waiting and
/// goes to `tell` — once per change.
pub async fn scope<F: std::future::Future>(
    task: Arc<TaskProgress>,
    tell: impl Fn(String) + Send + Sync + 'static,
    work: F,
) -> F::Output {
    let marks = task.clone();
    let listener: hangar_shared::waiting::Listener = Arc::new(move |on: String| {
        marks.waiting.store(true, Ordering::Relaxed);
        let Ok(mut told) = marks.told.lock() else {
            return;
        };
        if told.as_deref() != Some(on.as_str()) {
            *told = Some(on.clone());
            tell(on);
        }
    });
    hangar_shared::waiting::scope(listener, TASK.scope(task, work)).await
}

/// The runner's side of one delivery.
pub struct Watch {
    task: Arc<TaskProgress>,
    last_progress: Instant,
}

impl Watch {
    pub fn new() -> (Self, Arc<TaskProgress>) {
        let task = Arc::new(TaskProgress::default());
        (
            Self {
                task: task.clone(),
                last_progress: Instant::now(),
            },
            task,
        )
    }

    /// Hands the bytes moved since the last call on to the process's total.
    pub fn drain(&mut self, ctx: &Context) {
        let n = self.task.bytes.swap(0, Ordering::Relaxed);
        if n > 0 {
            ctx.bytes_moved.fetch_add(n, Ordering::Relaxed);
            self.last_progress = Instant::now();
            // Bytes flow again: whatever it waited on is over.
            self.task.waiting.store(false, Ordering::Relaxed);
            if let Ok(mut told) = self.task.told.lock() {
                *told = None;
            }
        }
    }

    /// Whether the delivery moved nothing for `limit` while waiting on nothing.
    pub fn stalled(&self, limit: Duration) -> bool {
        !self.task.waiting.load(Ordering::Relaxed) && self.last_progress.elapsed() > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delivery_counts_its_own_bytes_and_is_stalled_only_when_idle_and_not_waiting() {
        let (mut watch, task) = Watch::new();
        let noticed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = noticed.clone();
        let tell = move |on| {
            if let Ok(mut s) = seen.lock() {
                s.push(on);
            }
        };
        let counter = scope(task, tell, async {
            hangar_shared::waiting::on("a lease");
            // The same wait again is told once.
            hangar_shared::waiting::on("a lease");
            TASK.try_with(|t| t.bytes.clone()).expect("in scope")
        })
        .await;
        assert_eq!(
            noticed.lock().map(|n| n.clone()).unwrap_or_default(),
            vec!["a lease".to_owned()]
        );
        std::thread::sleep(Duration::from_millis(30));
        // Waiting on a lease is not a stall, however long.
        assert!(!watch.stalled(Duration::from_millis(10)));
        counter.fetch_add(5, Ordering::Relaxed);
        let ctx_total = Arc::new(AtomicU64::new(0));
        let drained = counter.swap(0, Ordering::Relaxed);
        ctx_total.fetch_add(drained, Ordering::Relaxed);
        assert_eq!(ctx_total.load(Ordering::Relaxed), 5);
        watch.task.waiting.store(false, Ordering::Relaxed);
        watch.last_progress = Instant::now() - Duration::from_millis(50);
        assert!(watch.stalled(Duration::from_millis(10)));
    }
}
