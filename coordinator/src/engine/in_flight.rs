//! What a job's tasks are doing right now, from the workers' notices: which worker holds
//! each task, on which delivery, since when, and what it waits on. Notices are best-effort
//! (`EventSink::notify`): a missing one costs a line of this view, never a result.

use std::collections::HashMap;
use std::time::Instant;

use hangar_shared::task::{Event, EventKind, TaskId};

/// One task in flight, as `status` and the job snapshot show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskView {
    pub task: TaskId,
    /// The task's kind and subject (`blob sha256:… → reg/repo`, `manifest …`).
    pub what: String,
    pub worker: String,
    pub attempt: u32,
    /// Seconds since this delivery started.
    pub seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_on: Option<String>,
}

struct Entry {
    worker: String,
    attempt: u32,
    since: Instant,
    waiting_on: Option<String>,
}

/// The tasks of one job that a worker has started and not yet finished.
#[derive(Default)]
pub struct InFlight {
    tasks: HashMap<TaskId, Entry>,
}

/// The most tasks a snapshot lists (the longest-running first): a view, not a dump.
pub const SHOWN: usize = 50;

/// What a snapshot keeps of a worker's words (its name, what it waits on, why it failed):
/// 200 characters, so that a job's snapshot stays within the job bucket's 1 MB value
/// whatever a worker sends (a snapshot that did not fit was not saved, and a cancelled
/// job came back on restart).
fn shown(text: &str) -> String {
    hangar_shared::reference::shorten(text, 200)
}

impl InFlight {
    pub fn observe(&mut self, event: &Event) {
        match &event.kind {
            EventKind::Started { worker, attempt } => {
                self.tasks.insert(
                    event.task,
                    Entry {
                        worker: shown(worker),
                        attempt: *attempt,
                        since: Instant::now(),
                        waiting_on: None,
                    },
                );
            }
            EventKind::Waiting { on } => {
                if let Some(e) = self.tasks.get_mut(&event.task) {
                    e.waiting_on = Some(shown(on));
                }
            }
            EventKind::Failed {
                last: false,
                message,
                ..
            } => {
                if let Some(e) = self.tasks.get_mut(&event.task) {
                    e.waiting_on = Some(format!("its next delivery, after: {}", shown(message)));
                }
            }
            EventKind::Done { .. } | EventKind::Failed { .. } => {
                self.tasks.remove(&event.task);
            }
        }
    }

    /// The longest-running tasks first, at most [`SHOWN`]; `describe` names each.
    pub fn view(&self, describe: impl Fn(TaskId) -> Option<String>) -> Vec<TaskView> {
        let mut all: Vec<(&TaskId, &Entry)> = self.tasks.iter().collect();
        all.sort_by_key(|(id, e)| (e.since, **id));
        all.into_iter()
            .filter_map(|(id, e)| {
                // A task the tracker no longer waits for (finished by another delivery).
                let what = describe(*id)?;
                Some(TaskView {
                    task: *id,
                    what,
                    worker: e.worker.clone(),
                    attempt: e.attempt,
                    seconds: e.since.elapsed().as_secs(),
                    waiting_on: e.waiting_on.clone(),
                })
            })
            .take(SHOWN)
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_shared::error::FailureClass;

    fn event(task: TaskId, kind: EventKind) -> Event {
        Event {
            job: "j".into(),
            task,
            nonce: 0,
            kind,
        }
    }

    #[test]
    fn a_task_is_shown_from_its_start_to_its_end_with_what_it_waits_on() {
        let mut f = InFlight::default();
        let started = |attempt| EventKind::Started {
            worker: "w1".into(),
            attempt,
        };
        f.observe(&event(1, started(1)));
        f.observe(&event(2, started(1)));
        f.observe(&event(
            2,
            EventKind::Waiting {
                on: "the lease on sha256:ab".into(),
            },
        ));
        let view = f.view(|id| Some(format!("task {id}")));
        assert_eq!(view.len(), 2);
        assert_eq!(
            view[1].waiting_on.as_deref(),
            Some("the lease on sha256:ab")
        );
        f.observe(&event(
            1,
            EventKind::Failed {
                class: FailureClass::Network,
                message: "reset".into(),
                attempt: 1,
                last: false,
            },
        ));
        assert!(
            f.view(|_| Some(String::new()))[0]
                .waiting_on
                .as_deref()
                .is_some_and(|w| w.contains("reset"))
        );
        f.observe(&event(1, started(2)));
        assert_eq!(f.view(|_| Some(String::new()))[1].attempt, 2);
        f.observe(&event(
            2,
            EventKind::Done {
                outcome: hangar_shared::task::Outcome::ManifestPushed,
            },
        ));
        assert_eq!(f.len(), 1);
        // Tasks the tracker no longer knows are not shown.
        assert!(f.view(|_| None).is_empty());
    }

    /// A worker's words are kept to 200 characters each: 50 tasks shown of a megabyte each
    /// would not fit the job bucket's 1 MB value, and a snapshot not saved brought a
    /// cancelled job back on restart.
    #[test]
    fn a_workers_words_are_kept_short() {
        let mut f = InFlight::default();
        let huge = "w".repeat(1 << 20);
        f.observe(&event(
            1,
            EventKind::Started {
                worker: huge.clone(),
                attempt: 1,
            },
        ));
        f.observe(&event(
            2,
            EventKind::Started {
                worker: "w".into(),
                attempt: 1,
            },
        ));
        f.observe(&event(1, EventKind::Waiting { on: huge.clone() }));
        f.observe(&event(
            2,
            EventKind::Failed {
                class: hangar_shared::error::FailureClass::Network,
                message: huge,
                attempt: 1,
                last: false,
            },
        ));
        for t in f.view(|_| Some(String::new())) {
            assert!(t.worker.len() <= 210, "{}", t.worker.len());
            assert!(t.waiting_on.is_some_and(|w| w.len() <= 260));
        }
    }
}
