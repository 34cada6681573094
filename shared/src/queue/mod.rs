//! The task queue and the event sink, as traits with the in-process backend.
//!
//! The semantics are JetStream's, so the JetStream backend ([`jetstream`]) implements the
//! same trait:
//! at-least-once delivery, explicit `ack`, `nak` with a delay (redelivery with the attempt
//! counted), `in_progress` to hold a long task, and `max_deliver` after which the worker
//! reports the task failed instead of handing it back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};

mod exhausted;
pub mod jetstream;

use crate::error::Result;
use crate::task::{Event, TaskEnvelope};

/// A delivered task; exactly one of `ack` or `nak` should be called.
pub struct Delivery {
    pub task: TaskEnvelope,
    /// 1 on first delivery.
    pub attempt: u32,
    handle: Box<dyn DeliveryHandle>,
}

impl Delivery {
    pub fn new(task: TaskEnvelope, attempt: u32, handle: Box<dyn DeliveryHandle>) -> Self {
        Self {
            task,
            attempt,
            handle,
        }
    }

    pub async fn ack(self) -> Result<()> {
        self.handle.ack().await
    }

    pub async fn nak(self, delay: Duration) -> Result<()> {
        self.handle.nak(self.task, self.attempt, delay).await
    }

    pub async fn in_progress(&self) -> Result<()> {
        self.handle.in_progress().await
    }
}

#[async_trait]
pub trait DeliveryHandle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<()>;
    async fn nak(self: Box<Self>, task: TaskEnvelope, attempt: u32, delay: Duration) -> Result<()>;
    async fn in_progress(&self) -> Result<()>;
}

#[async_trait]
pub trait TaskQueue: Send + Sync {
    async fn publish(&self, task: TaskEnvelope) -> Result<()>;
    /// The next task, or `None` once the queue is closed and drained.
    async fn next(&self) -> Option<Delivery>;
    /// No more tasks will be published; waiting consumers get `None`.
    async fn close(&self);
    /// Deliveries after which a failing task is reported failed for good.
    fn max_deliver(&self) -> u32;
    /// How often a handler still busy with a delivery must call `in_progress` so the
    /// queue does not hand the task to someone else.
    fn heartbeat(&self) -> Duration {
        Duration::from_secs(15)
    }
}

/// Where task outcomes go. A delivery is acked only after its event is stored, so an
/// outcome is never lost between the two.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Stores an outcome; a task is acknowledged only once this returned `Ok`.
    async fn emit(&self, event: Event) -> Result<()>;

    /// Says something worth knowing but not worth waiting for (a task started, what it
    /// waits on): nothing depends on it arriving.
    async fn notify(&self, event: Event) {
        let _ = self.emit(event).await;
    }
}

/// Tokio channels in one process: the embedded backend.
pub struct MemoryQueue {
    inner: Arc<Shared>,
    max_deliver: u32,
}

struct Shared {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    tasks: Lanes,
    /// naked tasks waiting out their delay; the queue is not drained until they are back.
    delayed: usize,
    closed: bool,
}

/// Queued tasks in two lanes: quick ones ([`crate::task::Task::is_quick`]: manifests,
/// indexes, mounts, signatures — what finishes an image) are served before copies, each
/// lane in order. A run's images then finish as their blobs land, not all after the last
/// copy: measured on the mirror bench at 25 ms, every image's mount of the shared base
/// layers waited behind the whole list's copies.
#[derive(Default)]
struct Lanes {
    quick: VecDeque<(TaskEnvelope, u32)>,
    copies: VecDeque<(TaskEnvelope, u32)>,
}

impl Lanes {
    fn push(&mut self, task: TaskEnvelope, attempt: u32) {
        match task.task.is_quick() {
            true => self.quick.push_back((task, attempt)),
            false => self.copies.push_back((task, attempt)),
        }
    }

    fn pop(&mut self) -> Option<(TaskEnvelope, u32)> {
        self.quick.pop_front().or_else(|| self.copies.pop_front())
    }

    fn is_empty(&self) -> bool {
        self.quick.is_empty() && self.copies.is_empty()
    }
}

impl MemoryQueue {
    pub fn new(max_deliver: u32) -> Self {
        Self {
            inner: Arc::new(Shared {
                state: Mutex::new(State::default()),
                ready: Notify::new(),
            }),
            max_deliver: max_deliver.max(1),
        }
    }
}

impl Shared {
    fn push(&self, task: TaskEnvelope, attempt: u32) {
        if let Ok(mut st) = self.state.lock() {
            st.tasks.push(task, attempt);
        }
        self.ready.notify_one();
    }
}

struct MemoryHandle {
    shared: Arc<Shared>,
}

#[async_trait]
impl DeliveryHandle for MemoryHandle {
    async fn ack(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    async fn nak(self: Box<Self>, task: TaskEnvelope, attempt: u32, delay: Duration) -> Result<()> {
        if let Ok(mut st) = self.shared.state.lock() {
            st.delayed += 1;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(mut st) = shared.state.lock() {
                st.delayed -= 1;
                st.tasks.push(task, attempt + 1);
            }
            shared.ready.notify_one();
        });
        Ok(())
    }

    async fn in_progress(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    async fn publish(&self, task: TaskEnvelope) -> Result<()> {
        self.inner.push(task, 1);
        Ok(())
    }

    async fn next(&self) -> Option<Delivery> {
        loop {
            let notified = self.inner.ready.notified();
            {
                let mut st = self.inner.state.lock().ok()?;
                if let Some((task, attempt)) = st.tasks.pop() {
                    if !st.tasks.is_empty() {
                        // Wake another consumer for the rest.
                        self.inner.ready.notify_one();
                    }
                    let handle = Box::new(MemoryHandle {
                        shared: self.inner.clone(),
                    });
                    return Some(Delivery::new(task, attempt, handle));
                }
                if st.closed && st.delayed == 0 {
                    self.inner.ready.notify_one();
                    return None;
                }
            }
            notified.await;
        }
    }

    async fn close(&self) {
        if let Ok(mut st) = self.inner.state.lock() {
            st.closed = true;
        }
        self.inner.ready.notify_waiters();
        self.inner.ready.notify_one();
    }

    fn max_deliver(&self) -> u32 {
        self.max_deliver
    }
}

/// Events into an unbounded channel: handlers never block on a slow tracker.
pub struct ChannelSink(pub mpsc::UnboundedSender<Event>);

#[async_trait]
impl EventSink for ChannelSink {
    async fn emit(&self, event: Event) -> Result<()> {
        // A closed receiver means the job is over; late events have nowhere to go.
        let _ = self.0.send(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Index, OCI_INDEX};
    use crate::store::RepoRef;
    use crate::task::{IndexTask, Task};

    fn task(id: u64) -> TaskEnvelope {
        TaskEnvelope {
            job: "j".into(),
            id,
            nonce: id,
            key: format!("k{id}"),
            trace: None,
            task: Task::Index(IndexTask {
                dest: RepoRef::registry("r", "p/n"),
                tag: "t".into(),
                added: Index {
                    schema_version: 2,
                    media_type: Some(OCI_INDEX.into()),
                    manifests: vec![],
                }
                .manifests,
                source_index: None,
                overwrite: false,
                absent: false,
            }),
        }
    }

    /// A blob copy from another registry: what the queue serves after quick tasks.
    fn copy(id: u64, mount_from: Vec<RepoRef>) -> TaskEnvelope {
        let desc = crate::manifest::Descriptor {
            media_type: "application/octet-stream".into(),
            digest: crate::digest::Digest::of(id.to_string().as_bytes()),
            size: 1,
            urls: None,
            annotations: None,
            platform: None,
        };
        TaskEnvelope {
            task: Task::Blob(Box::new(crate::task::BlobTask {
                desc,
                source: RepoRef::registry("src", "p/n"),
                dest: RepoRef::registry("r", "p/n"),
                mount_from,
                inline: None,
            })),
            ..task(id)
        }
    }

    #[tokio::test]
    async fn quick_tasks_are_served_before_queued_copies_each_lane_in_order() {
        let q = MemoryQueue::new(3);
        q.publish(copy(1, vec![])).await.unwrap();
        q.publish(copy(2, vec![])).await.unwrap();
        q.publish(task(3)).await.unwrap();
        q.publish(copy(4, vec![RepoRef::registry("r", "p/other")]))
            .await
            .unwrap();
        q.publish(task(5)).await.unwrap();
        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(q.next().await.unwrap().task.id);
        }
        assert_eq!(order, [3, 4, 5, 1, 2]);
    }

    #[tokio::test]
    async fn redelivers_naked_tasks_with_attempt_counted_then_drains() {
        let q = Arc::new(MemoryQueue::new(3));
        q.publish(task(1)).await.unwrap();
        let d = q.next().await.unwrap();
        assert_eq!(d.attempt, 1);
        d.nak(Duration::from_millis(5)).await.unwrap();
        q.close().await;
        let d = q
            .next()
            .await
            .expect("naked task comes back even after close");
        assert_eq!((d.task.id, d.attempt), (1, 2));
        d.ack().await.unwrap();
        assert!(q.next().await.is_none());
    }

    #[tokio::test]
    async fn many_consumers_each_get_distinct_tasks() {
        let q = Arc::new(MemoryQueue::new(1));
        for i in 0..50 {
            q.publish(task(i)).await.unwrap();
        }
        q.close().await;
        let mut handles = Vec::new();
        for _ in 0..4 {
            let q = q.clone();
            handles.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(d) = q.next().await {
                    got.push(d.task.id);
                    d.ack().await.unwrap();
                }
                got
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }
}
