//! [`per_image`]: the one follower of per-image work that copies nothing — signing,
//! scanning, checking. Its command plans each image into tasks; this publishes them on a
//! [`Bus`] and reports each image once, when all its tasks have ended or the first failed
//! for good.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use hangar_shared::error::{Error, FailureClass, Result};
use hangar_shared::task::{EventKind, Outcome, Task, TaskEnvelope, TaskId};

use super::tasks::{Bus, News};

/// An image's tasks as planned by its command, each with what the command needs to read
/// its outcome (`M`: the platform it is for, the digest it signs).
pub type Planned<M> = std::result::Result<Vec<(M, Task)>, Error>;

/// How [`per_image`] runs.
pub struct PerImage<'a> {
    pub job: &'a str,
    /// Images planned at once (`-j`).
    pub planners: usize,
    /// Bounds one image's planning (`--timeout`).
    pub timeout: Option<Duration>,
    pub trace: Option<String>,
    /// Ctrl-C stops the run; unfinished images are reported failed.
    pub interruptible: bool,
}

/// Plans images `0..count` (`plan(i)`, `planners` at once), publishes each image's tasks
/// and tells `finished` of each image once: its outcomes in the order planned, or the
/// first of its tasks that failed for good (or its planning error). An image planned
/// with no task is finished at once with no outcome (nothing to do: a skip).
pub async fn per_image<M, Fut>(
    mut bus: Bus,
    run: PerImage<'_>,
    count: usize,
    plan: impl Fn(usize) -> Fut,
    mut finished: impl FnMut(usize, std::result::Result<Vec<(M, Outcome)>, Error>),
) -> Result<()>
where
    Fut: Future<Output = Planned<M>>,
{
    struct Open<M> {
        outcomes: Vec<(M, Option<Outcome>)>,
        left: usize,
    }
    let bound = run.timeout;
    let mut planning = futures_util::stream::iter(0..count)
        .map(|i| {
            let work = plan(i);
            async move {
                let planned = match bound {
                    None => work.await,
                    Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                        Err(Error::new(
                            FailureClass::Network,
                            format!(
                                "planning did not finish within {} (--timeout)",
                                humantime::format_duration(limit)
                            ),
                        ))
                    }),
                };
                (i, planned)
            }
        })
        .buffer_unordered(run.planners.max(1));
    let mut open: HashMap<usize, Open<M>> = HashMap::new();
    // A Mutex, not a RefCell: the run is a future that may move between threads.
    let reported = std::sync::Mutex::new(vec![false; count]);
    let mut finished = |i: usize, r| {
        if let Ok(mut seen) = reported.lock()
            && let Some(seen) = seen.get_mut(i)
        {
            *seen = true;
        }
        finished(i, r)
    };
    // Each task's image and place in it, and the nonce its events must carry.
    let mut tasks: HashMap<TaskId, (usize, usize, u64, hangar_shared::task::TaskKind)> =
        HashMap::new();
    let (mut next_id, mut done, mut planned_all) = (0u64, 0usize, false);
    let mut interrupted = false;
    // Listening from the start: Ctrl-C always stops the run cleanly, its queued tasks purged.
    let mut sigint = super::listen_for_ctrl_c(run.interruptible);
    while done < count {
        tokio::select! {
            next = planning.next(), if !planned_all => match next {
                None => planned_all = true,
                Some((i, Err(e))) => {
                    done += 1;
                    finished(i, Err(e));
                }
                Some((i, Ok(planned))) if planned.is_empty() => {
                    done += 1;
                    finished(i, Ok(Vec::new()));
                }
                Some((i, Ok(planned))) => {
                    let mut outcomes = Vec::with_capacity(planned.len());
                    let mut published = Ok(());
                    for (k, (meta, task)) in planned.into_iter().enumerate() {
                        next_id += 1;
                        let nonce = hangar_shared::task::new_nonce();
                        tasks.insert(next_id, (i, k, nonce, task.kind()));
                        outcomes.push((meta, None));
                        published = bus
                            .queue
                            .publish(TaskEnvelope {
                                job: run.job.to_owned(),
                                id: next_id,
                                nonce,
                                key: format!("{}/{next_id}", run.job),
                                trace: run.trace.clone(),
                                task,
                            })
                            .await;
                        if published.is_err() {
                            break;
                        }
                    }
                    if let Err(e) = published.as_ref()
                        && e.class == FailureClass::InvalidInput
                    {
                        // A task the bus will never carry: this image fails, not the run;
                        // its tasks already sent find it closed.
                        done += 1;
                        finished(i, Err(e.clone()));
                        continue;
                    }
                    if let Err(e) = published {
                        // The bus is gone (past its patience): this image and every one
                        // still open fail with it, and the run stops.
                        finished(i, Err(e.clone()));
                        for (j, _) in open.drain() {
                            finished(j, Err(e.clone()));
                        }
                        break;
                    }
                    let left = outcomes.len();
                    open.insert(i, Open { outcomes, left });
                }
            },
            news = bus.next() => {
                let event = match news {
                    News::Event(event) => event,
                    News::Stopped { why, purge } => {
                        interrupted = purge;
                        for (i, _) in open.drain() {
                            finished(i, Err(stopped(&why)));
                        }
                        break;
                    }
                };
                // Only an event with the task's nonce is about it (see `TaskEnvelope`).
                let Some(&(i, k, _, kind)) = tasks
                    .get(&event.task)
                    .filter(|(_, _, nonce, _)| *nonce == event.nonce)
                else {
                    continue;
                };
                // An answer of another kind is no answer: the task failed.
                let said = match event.kind {
                    EventKind::Done { outcome } if !outcome.answers(kind) => {
                        let e = outcome.mismatch(kind);
                        EventKind::Failed {
                            class: e.class,
                            message: e.message,
                            attempt: 1,
                            last: true,
                        }
                    }
                    said => said,
                };
                match said {
                    EventKind::Done { outcome } => {
                        let Some(o) = open.get_mut(&i) else { continue };
                        if o.outcomes[k].1.is_none() {
                            o.outcomes[k].1 = Some(outcome);
                            o.left -= 1;
                        }
                        if o.left == 0
                            && let Some(o) = open.remove(&i)
                        {
                            done += 1;
                            let outcomes = o
                                .outcomes
                                .into_iter()
                                .filter_map(|(m, outcome)| outcome.map(|x| (m, x)))
                                .collect();
                            finished(i, Ok(outcomes));
                        }
                    }
                    // The image's other tasks still run; their events find it closed.
                    EventKind::Failed { class, message, last: true, .. }
                        if open.remove(&i).is_some() =>
                    {
                        done += 1;
                        finished(i, Err(Error::new(class, message)));
                    }
                    _ => {}
                }
            }
            _ = super::ctrl_c(&mut sigint) => {
                interrupted = true;
                for (i, _) in open.drain() {
                    finished(i, Err(stopped("interrupted")));
                }
                break;
            }
        }
    }
    drop(planning);
    bus.close(interrupted).await;
    // Images not yet planned when the run stopped.
    let unplanned: Vec<usize> = match reported.lock() {
        Ok(seen) => (0..count).filter(|i| !seen[*i]).collect(),
        Err(_) => Vec::new(),
    };
    for i in unplanned {
        finished(i, Err(stopped("stopped before this image was planned")));
    }
    Ok(())
}

fn stopped(why: &str) -> Error {
    Error::new(FailureClass::Network, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tasks::MAX_DELIVER;
    use hangar_shared::digest::Digest;
    use hangar_shared::queue::{MemoryQueue, TaskQueue};
    use hangar_shared::store::RepoRef;
    use hangar_shared::task::Event;
    use hangar_shared::task::SignTask;
    use std::sync::Arc;
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    fn sign(n: u8) -> Task {
        Task::Sign(SignTask {
            dest: RepoRef::registry("reg", "app"),
            digest: Digest::of(&[n]),
            identity: "reg/app".into(),
            key: "k".into(),
            index_of: None,
        })
    }

    /// A bus whose worker is the test: tasks are taken from `queue`, events sent on `tx`.
    fn bus() -> (Bus, Arc<MemoryQueue>, mpsc::UnboundedSender<Event>) {
        let queue = Arc::new(MemoryQueue::new(MAX_DELIVER));
        let (tx, events) = mpsc::unbounded_channel();
        (Bus::fed_by(queue.clone(), events), queue, tx)
    }

    fn run(job: &str) -> PerImage<'_> {
        PerImage {
            job,
            planners: 4,
            timeout: None,
            trace: None,
            interruptible: false,
        }
    }

    type Seen = Arc<Mutex<Vec<(usize, std::result::Result<Vec<(u8, Outcome)>, Error>)>>>;

    /// Plans: image 0 → tasks 1 and 2; image 1 → a planning error; image 2 → nothing.
    async fn plan(i: usize) -> Planned<u8> {
        match i {
            0 => Ok(vec![(1, sign(1)), (2, sign(2))]),
            1 => Err(Error::not_found("app:1: manifest unknown")),
            _ => Ok(Vec::new()),
        }
    }

    #[tokio::test]
    async fn each_image_ends_once_with_its_outcomes_in_planned_order() {
        let (bus, queue, tx) = bus();
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let worker = tokio::spawn(async move {
            let mut taken = Vec::new();
            for _ in 0..2 {
                let d = queue.next().await.expect("a task");
                taken.push(d.task.clone());
                d.ack().await.expect("ack");
            }
            // Answered in reverse, and the first one twice (a redelivery's duplicate).
            for t in taken.iter().rev().chain(taken.first()) {
                let added = t.id == taken[0].id;
                tx.send(Event::done(t, Outcome::Signed { added }))
                    .expect("send");
            }
        });
        per_image(bus, run("j"), 3, plan, |i, r| {
            record.lock().expect("lock").push((i, r))
        })
        .await
        .expect("run");
        worker.await.expect("worker");
        let mut seen = seen.lock().expect("lock").drain(..).collect::<Vec<_>>();
        seen.sort_by_key(|(i, _)| *i);
        assert_eq!(seen.len(), 3, "{seen:?}");
        let outcomes = seen[0].1.as_ref().expect("image 0 ok");
        assert_eq!(
            outcomes,
            &vec![
                (1, Outcome::Signed { added: true }),
                (2, Outcome::Signed { added: false })
            ]
        );
        let e = seen[1].1.as_ref().expect_err("image 1 failed");
        assert_eq!(e.class, FailureClass::NotFound);
        assert!(seen[2].1.as_ref().expect("image 2 skipped").is_empty());
    }

    /// A sign task answered "checked" was not signed: the image fails, naming the mismatch.
    #[tokio::test]
    async fn a_task_answered_with_another_kinds_outcome_fails_its_image() {
        let (bus, queue, tx) = bus();
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let worker = tokio::spawn(async move {
            for n in 0..2 {
                let d = queue.next().await.expect("a task");
                let task = d.task.clone();
                d.ack().await.expect("ack");
                let outcome = if n == 0 {
                    Outcome::Checked {
                        verdict: hangar_shared::task::Verdict::Absent,
                    }
                } else {
                    Outcome::Signed { added: true }
                };
                tx.send(Event::done(&task, outcome)).expect("send");
            }
        });
        per_image(bus, run("j"), 1, plan, |i, r| {
            record.lock().expect("lock").push((i, r))
        })
        .await
        .expect("run");
        worker.await.expect("worker");
        let seen = seen.lock().expect("lock");
        let [(0, Err(e))] = seen.as_slice() else {
            panic!("image 0 fails once: {seen:?}");
        };
        assert!(
            e.message.contains("sign task was answered \"checked\""),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_task_failed_for_good_fails_its_image_once_and_a_retry_does_not() {
        let (bus, queue, tx) = bus();
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let worker = tokio::spawn(async move {
            let a = queue.next().await.expect("task 1");
            let b = queue.next().await.expect("task 2");
            let fail = |env: &TaskEnvelope, last| Event {
                job: env.job.clone(),
                task: env.id,
                nonce: env.nonce,
                kind: EventKind::Failed {
                    class: FailureClass::Auth,
                    message: "denied".into(),
                    attempt: 1,
                    last,
                },
            };
            tx.send(fail(&a.task, false)).expect("send");
            tx.send(fail(&a.task, true)).expect("send");
            // Without task 2's nonce a failure says nothing about it.
            let mut forged = fail(&b.task, true);
            forged.nonce = forged.nonce.wrapping_add(1);
            tx.send(forged).expect("send");
            tx.send(Event::done(&b.task, Outcome::Signed { added: true }))
                .expect("send");
            a.ack().await.expect("ack");
            b.ack().await.expect("ack");
        });
        per_image(
            bus,
            run("j"),
            1,
            |_| async { Ok(vec![(1u8, sign(1)), (2, sign(2))]) },
            |i, r| record.lock().expect("lock").push((i, r)),
        )
        .await
        .expect("run");
        worker.await.expect("worker");
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1, "{seen:?}");
        let e = seen[0].1.as_ref().expect_err("failed");
        assert_eq!(
            (e.class, e.message.as_str()),
            (FailureClass::Auth, "denied")
        );
    }

    #[tokio::test]
    async fn when_the_workers_go_every_unfinished_image_is_reported_failed() {
        let (bus, queue, tx) = bus();
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let worker = tokio::spawn(async move {
            let d = queue.next().await.expect("a task");
            drop(tx);
            d.ack().await.expect("ack");
        });
        per_image(
            bus,
            run("j"),
            2,
            |i| async move {
                if i == 1 {
                    // Never planned before the workers are gone.
                    std::future::pending::<()>().await;
                }
                Ok(vec![(1u8, sign(1))])
            },
            |i, r| record.lock().expect("lock").push((i, r)),
        )
        .await
        .expect("run");
        worker.await.expect("worker");
        let mut seen = seen.lock().expect("lock").drain(..).collect::<Vec<_>>();
        seen.sort_by_key(|(i, _)| *i);
        assert_eq!(seen.len(), 2, "{seen:?}");
        for (_, r) in &seen {
            assert!(r.is_err(), "{r:?}");
        }
        let first = seen[0].1.as_ref().expect_err("stopped");
        assert!(first.message.contains("workers stopped"), "{first:?}");
    }
}
