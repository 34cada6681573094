//! What a publisher sent and has had no answer for, and what it does about a task that
//! left the queue without one.
//!
//! A worker acknowledges a task only once its answer is stored in the events stream, so a
//! task gone from the work queue has its answer there, stored before the moment it was
//! found gone. Four things break that: a holder of the workers' login that acknowledges a
//! task without answering, a worker ending a message it cannot read, an events stream
//! flooded past its size, which drops its oldest events whether or not anyone read them,
//! and a task held past the queue's max age ([`super::storage::TASKS_MAX_AGE`]: held for
//! ever, it would end nowhere else). Any way, the run would wait for ever.
//!
//! So when a run has been quiet (and every minute while it is busy), its publisher looks
//! at its oldest unanswered tasks ([`JetStreamQueue::missing`]). A task gone from the queue whose answer the run has not
//! read, though it has read every event stored for it up to then, is published once more;
//! lost a second time, it is reported failed ([`JetStreamQueue::recover`]). Tasks are
//! idempotent, and its nonce is the one it had: an answer to the first publication that
//! turns up after all settles it just the same.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use bytes::Bytes;

use super::{EVENT_STREAM, TASK_STREAM, bus, event_subject};
use crate::error::{FailureClass, Result};
use crate::task::{Event, EventKind, TaskId};

/// Unanswered tasks looked at in one check, the oldest first: one request each.
const LOOKED_AT: usize = 256;
/// Publications of one task whose answers went missing before it is reported failed.
const REPUBLISHED_AT_MOST: u32 = 1;

/// A task this process published and has had no answer for.
#[derive(Debug, Clone)]
pub struct Sent {
    pub job: String,
    pub id: TaskId,
    pub nonce: u64,
    /// Where and what it was published: what a second publication sends.
    pub subject: String,
    pub payload: Bytes,
    pub trace: Option<String>,
    /// Times it was published again after its answer went missing.
    pub again: u32,
    /// Deliveries after which the server stopped delivering it (its max-deliveries
    /// advisory): its message stays in the queue, and only its failure can end it.
    pub exhausted: Option<u32>,
}

/// A publisher's ledger, shared with its advisory reader ([`crate::queue::exhausted`]).
pub type SentTasks = std::sync::Arc<std::sync::Mutex<Ledger>>;

/// Unanswered tasks by their sequence in the task stream (which is what the server's
/// max-deliveries advisories name) and by job and id (which is what events name).
#[derive(Debug, Default)]
pub struct Ledger {
    by_seq: BTreeMap<u64, Sent>,
    by_task: HashMap<(String, TaskId), u64>,
}

impl Ledger {
    pub fn insert(&mut self, seq: u64, sent: Sent) {
        if let Some(old) = self.by_task.insert((sent.job.clone(), sent.id), seq) {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(seq, sent);
    }

    /// The task published at `seq`, no longer looked after here.
    pub fn take(&mut self, seq: u64) -> Option<Sent> {
        let sent = self.by_seq.remove(&seq)?;
        self.by_task.remove(&(sent.job.clone(), sent.id));
        Some(sent)
    }

    /// Settles the task `event` answers, when it carries the task's nonce (an event without
    /// it is not about the task, whatever it says); whether it settled one.
    ///
    /// An answer taken before its task's [`Ledger::insert`] would leave an entry nothing
    /// settles: runs publish and read events in one loop, so an answer is taken only once
    /// its publication has returned.
    pub fn answered(&mut self, event: &Event) -> bool {
        let answers = matches!(
            event.kind,
            EventKind::Done { .. } | EventKind::Failed { last: true, .. }
        );
        if !answers {
            return false;
        }
        let Some(&seq) = self.by_task.get(&(event.job.clone(), event.task)) else {
            return false;
        };
        if self
            .by_seq
            .get(&seq)
            .is_some_and(|s| s.nonce == event.nonce)
        {
            self.take(seq);
            return true;
        }
        false
    }

    /// Marks the task published at `seq` as one the server stopped delivering after
    /// `deliveries`, and gives its final failure (`None`: not one of ours, or marked
    /// already).
    pub fn exhausted(&mut self, seq: u64, deliveries: u32) -> Option<Event> {
        let sent = self.by_seq.get_mut(&seq)?;
        if sent.exhausted.is_some() {
            return None;
        }
        sent.exhausted = Some(deliveries);
        Some(final_failure(sent))
    }

    /// The first `n` of `job`'s tasks, and whether each is exhausted.
    fn oldest(&self, job: &str, n: usize) -> Vec<(u64, bool)> {
        self.by_seq
            .iter()
            .filter(|(_, s)| s.job == job)
            .map(|(seq, s)| (*seq, s.exhausted.is_some()))
            .take(n)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

/// Unanswered tasks gone from the task queue, and the last event stored for their run
/// when they were found gone: once the run has read that far, their answers are lost.
#[derive(Debug, Clone, Default)]
pub struct Missing {
    pub gone: Vec<u64>,
    pub through: u64,
}

impl super::JetStreamQueue {
    /// Settles, in this publisher's ledger, the task `event` answers; whether it did.
    pub fn answered(&self, event: &Event) -> bool {
        self.sent
            .lock()
            .is_ok_and(|mut ledger| ledger.answered(event))
    }

    /// Of `job`'s oldest unanswered tasks ([`LOOKED_AT`] at most), those no longer in the
    /// task queue, and those the server stopped delivering; then the last event stored for
    /// `job`, asked after them so that every answer they were given comes before it.
    pub async fn missing(&self, job: &str) -> Result<Missing> {
        let oldest = match self.sent.lock() {
            Ok(ledger) => ledger.oldest(job, LOOKED_AT),
            Err(_) => return Ok(Missing::default()),
        };
        if oldest.is_empty() {
            return Ok(Missing::default());
        }
        let tasks = self.js.get_stream(TASK_STREAM).await.map_err(bus)?;
        let mut gone = Vec::new();
        for (seq, exhausted) in oldest {
            if exhausted {
                gone.push(seq);
                continue;
            }
            match tasks.get_raw_message(seq).await {
                Ok(_) => {}
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => gone.push(seq),
                Err(e) => return Err(bus(e)),
            }
        }
        if gone.is_empty() {
            return Ok(Missing::default());
        }
        let events = self.js.get_stream(EVENT_STREAM).await.map_err(bus)?;
        let through = match events
            .get_last_raw_message_by_subject(&event_subject(job))
            .await
        {
            Ok(last) => last.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(bus(e)),
        };
        Ok(Missing { gone, through })
    }

    /// Whether the event stored at `seq` is gone from the events stream (its limits
    /// dropped it): a run that has not read that far never will.
    pub async fn event_dropped(&self, seq: u64) -> Result<bool> {
        let events = self.js.get_stream(EVENT_STREAM).await.map_err(bus)?;
        match events.get_raw_message(seq).await {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(true),
            Err(e) => Err(bus(e)),
        }
    }

    /// Publishes again each task of `missing` still unanswered, under a message id of its
    /// own (the first one's would be taken for a duplicate); gives a final failure for each
    /// one already published again.
    ///
    /// Safe to drop at any await (a run's `select!` does): the ledger changes only once a
    /// publication is acknowledged, and the failures are taken out of it in one go at the
    /// end. Sent again after a drop, a publication keeps its message id, so the server
    /// keeps one of the two.
    pub async fn recover(&self, missing: Missing) -> Vec<Event> {
        let mut lost = Vec::new();
        for seq in missing.gone {
            let Some(sent) = self
                .sent
                .lock()
                .ok()
                .and_then(|l| l.by_seq.get(&seq).cloned())
            else {
                continue;
            };
            let key = format!("{}/{}", sent.job, sent.id);
            if sent.exhausted.is_some() {
                lost.push(seq);
                continue;
            }
            if sent.again >= REPUBLISHED_AT_MOST {
                tracing::warn!("task {key} left the queue again with no answer: reported failed");
                lost.push(seq);
                continue;
            }
            let again = sent.again + 1;
            let mut publish = jetstream::message::PublishMessage::build()
                .payload(sent.payload.clone())
                .message_id(format!("{key}/again-{again}"));
            if let Some(trace) = &sent.trace {
                publish = publish.header(super::TRACEPARENT_HEADER, trace.as_str());
            }
            match self.send(sent.subject.clone(), publish, &key).await {
                Ok(new_seq) => {
                    tracing::warn!(
                        "task {key} left the queue with no answer in the events stream: \
                         published again"
                    );
                    if let Ok(mut ledger) = self.sent.lock()
                        && let Some(mut sent) = ledger.take(seq)
                    {
                        sent.again = again;
                        ledger.insert(new_seq, sent);
                    }
                }
                Err(e) => {
                    tracing::warn!("publishing task {key} again: {e}");
                    lost.push(seq);
                }
            }
        }
        let Ok(mut ledger) = self.sent.lock() else {
            return Vec::new();
        };
        lost.into_iter()
            .filter_map(|seq| ledger.take(seq))
            .map(|sent| final_failure(&sent))
            .collect()
    }
}

/// How a task the run gives up on ends: its deliveries ran out, or it left the queue once
/// more than it was published again, each time with no answer.
fn final_failure(sent: &Sent) -> Event {
    let (message, attempt) = match sent.exhausted {
        Some(deliveries) => (
            format!(
                "no worker answered for this task in {deliveries} deliveries (workers died or hung)"
            ),
            deliveries,
        ),
        None => (
            format!(
                "this task left the queue {} times with no answer: a worker acknowledged it \
                 without answering or could not read it, the events stream dropped its answer \
                 (its size is shared by every holder of the workers' login), or a worker held \
                 it past the queue's max age (a week)",
                sent.again + 1
            ),
            sent.again + 1,
        ),
    };
    Event {
        job: sent.job.clone(),
        task: sent.id,
        nonce: sent.nonce,
        kind: EventKind::Failed {
            class: FailureClass::Internal,
            message,
            attempt,
            last: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(id: TaskId, nonce: u64) -> Sent {
        Sent {
            job: "j.r1".into(),
            id,
            nonce,
            subject: "hangar.task.blob.j.r1".into(),
            payload: Bytes::new(),
            trace: None,
            again: 0,
            exhausted: None,
        }
    }

    fn done(id: TaskId, nonce: u64) -> Event {
        Event {
            job: "j.r1".into(),
            task: id,
            nonce,
            kind: EventKind::Done {
                outcome: crate::task::Outcome::BlobPresent,
            },
        }
    }

    #[test]
    fn only_an_answer_with_the_tasks_nonce_settles_it() {
        let mut ledger = Ledger::default();
        ledger.insert(10, sent(1, 77));
        ledger.insert(11, sent(2, 88));
        ledger.answered(&done(1, 78));
        assert_eq!(ledger.len(), 2, "a forged nonce settles nothing");
        let mut retry = done(1, 77);
        retry.kind = EventKind::Failed {
            class: FailureClass::Network,
            message: "again".into(),
            attempt: 1,
            last: false,
        };
        ledger.answered(&retry);
        assert_eq!(ledger.len(), 2, "a failure to be retried is no answer");
        ledger.answered(&done(1, 77));
        assert_eq!(ledger.oldest("j.r1", 10), vec![(11, false)]);
        assert!(ledger.take(10).is_none());
    }

    #[test]
    fn a_task_published_again_is_known_by_its_new_sequence_only() {
        let mut ledger = Ledger::default();
        ledger.insert(10, sent(1, 77));
        let mut again = ledger.take(10).expect("sent");
        again.again = 1;
        ledger.insert(30, again);
        assert!(ledger.take(10).is_none());
        assert_eq!(ledger.oldest("j.r1", 10), vec![(30, false)]);
        ledger.answered(&done(1, 77));
        assert!(ledger.is_empty());
    }

    #[test]
    fn an_exhausted_task_stays_until_its_failure_is_read() {
        let mut ledger = Ledger::default();
        ledger.insert(10, sent(1, 77));
        let failure = ledger.exhausted(10, 3).expect("ours");
        assert!(ledger.exhausted(10, 3).is_none(), "said once");
        assert!(ledger.exhausted(11, 3).is_none(), "not ours");
        assert_eq!(ledger.oldest("j.r1", 10), vec![(10, true)]);
        assert!(
            ledger.answered(&failure),
            "its failure, read back, settles it"
        );
        assert!(ledger.is_empty());
    }
}
