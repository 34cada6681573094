//! Where a task waits on the bus. Each kind has its own lane (subject and durable
//! consumer), so manifests never wait behind blob copies; blobs have two: copies, and the
//! quick ones ([`Task::is_quick`]: mounts and blobs carried inline, a request or two each,
//! which images wait on to finish) in a lane of their own with slots of their own, so that
//! on the fleet too an image whose layers are all mounted or copied is not held until
//! every other copy is done — what the embedded queue does with its two lanes.

use crate::task::{Task, TaskKind};

/// Slots a worker gives the quick blob lane, beside its `--blob-concurrency` copies: each
/// task is one request, so few keep up with many copies.
pub const QUICK_BLOB_SLOTS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lane {
    pub kind: TaskKind,
    /// The quick blob lane (only for blobs).
    pub quick: bool,
}

impl From<TaskKind> for Lane {
    fn from(kind: TaskKind) -> Self {
        Self { kind, quick: false }
    }
}

impl Lane {
    pub fn of(task: &Task) -> Self {
        Self {
            kind: task.kind(),
            quick: matches!(task, Task::Blob(_)) && task.is_quick(),
        }
    }

    /// The lane's word in subjects (`hangar.task.<name>.<job>`) and consumer names
    /// (`hangar-<name>`).
    pub fn name(self) -> &'static str {
        match self.quick {
            true => "blob-quick",
            false => self.kind.as_str(),
        }
    }

    /// What makes a `hangar-worker` pull this lane.
    pub fn how_to_take(self) -> &'static str {
        match self.quick {
            true => {
                "--blob-concurrency above 0, on workers that pull the quick blob lane \
                 (hangar-blob-quick; older workers do not)"
            }
            false => self.kind.how_to_take(),
        }
    }

    pub fn consumer(self) -> String {
        format!("hangar-{}", self.name())
    }

    /// Every lane, for the queue's depth by kind.
    pub fn all() -> impl Iterator<Item = Lane> {
        super::KINDS.into_iter().flat_map(|kind| {
            let quick = (kind == TaskKind::Blob).then_some(Lane { kind, quick: true });
            std::iter::once(Lane::from(kind)).chain(quick)
        })
    }

    /// The lanes a worker pulls, with their slots, for its slots of each kind: a kind it
    /// takes is pulled in its lane, and blobs in the quick lane too.
    pub fn for_worker(concurrency: &[(TaskKind, usize)]) -> Vec<(Lane, usize)> {
        let mut lanes = Vec::new();
        for (kind, n) in concurrency.iter().copied().filter(|(_, n)| *n > 0) {
            lanes.push((Lane::from(kind), n));
            if kind == TaskKind::Blob {
                lanes.push((Lane { kind, quick: true }, n.min(QUICK_BLOB_SLOTS)));
            }
        }
        lanes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_worker_pulls_both_blob_lanes_and_every_lane_has_its_own_name() {
        let lanes = Lane::for_worker(&[
            (TaskKind::Blob, 20),
            (TaskKind::Manifest, 4),
            (TaskKind::Sign, 0),
        ]);
        let named: Vec<(&str, usize)> = lanes.iter().map(|(l, n)| (l.name(), *n)).collect();
        assert_eq!(named, [("blob", 20), ("blob-quick", 8), ("manifest", 4)]);
        let names: std::collections::BTreeSet<&str> = Lane::all().map(Lane::name).collect();
        assert_eq!(names.len(), super::super::KINDS.len() + 1);
        // A run waiting on the quick lane (workers older than it) is told which lane.
        assert!(lanes[1].0.how_to_take().contains("hangar-blob-quick"));
        assert_eq!(lanes[0].0.how_to_take(), TaskKind::Blob.how_to_take());
    }
}
