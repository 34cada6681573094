//! What a job looks like from outside while it runs: the figures, failed lines and the
//! reasons of the first failures that the server's status API shows and its job bucket
//! keeps.

use hangar_shared::reference::shorten;

/// What a job looks like from outside while it runs (the server's status API).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct JobSnapshot {
    pub id: String,
    /// What the job does (mirror, sign, scan, …); `copied` counts its images done, for
    /// every kind.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// queued, running, succeeded, failed, cancelled
    pub state: String,
    pub total: usize,
    pub copied: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Images the destination already held exactly (a re-run's no-ops), not copied.
    #[serde(default)]
    pub present: usize,
    pub bytes_copied: u64,
    /// Blob tasks by what they did; `from_cache` + `mounted` + `present` are upstream
    /// fetches saved.
    #[serde(default)]
    pub blobs_copied: u64,
    #[serde(default)]
    pub blobs_from_cache: u64,
    #[serde(default)]
    pub blobs_mounted: u64,
    #[serde(default)]
    pub blobs_present: u64,
    /// The failed images' original list lines.
    pub failed_lines: Vec<String>,
    /// Why the first of them failed ([`KEPT_FAILURES`], each shortened): what a client
    /// that did not run the job shows. The lines are all in `failed_lines`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
    /// Tasks a worker is running now (the longest-running first, at most 50), with what
    /// each waits on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<crate::engine::in_flight::TaskView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the job (this run of it) started, in seconds since 1970: for elapsed time and
    /// an ETA.
    #[serde(default)]
    pub started: u64,
    /// When it ended, likewise (0 while it runs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ended: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A failed image's list line and why it failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub line: String,
    pub error: String,
}

/// Failures a snapshot says why of: a snapshot is stored whole in a NATS message.
pub const KEPT_FAILURES: usize = 100;
/// Characters kept of a failure's line and of its reason.
const FAILURE_LINE: usize = 200;
const FAILURE_REASON: usize = 400;

impl JobSnapshot {
    /// Images finished, whichever way.
    pub fn done(&self) -> usize {
        self.copied + self.present + self.failed + self.skipped
    }

    /// Forgets every failure counted (a run that starts its figures again).
    pub fn clear_failed(&mut self) {
        (self.failed, self.failed_lines, self.failures) = (0, Vec::new(), Vec::new());
    }

    /// Counts one failed image: its line, and why when known and there is room.
    pub fn image_failed(&mut self, line: &str, why: Option<&str>) {
        self.failed += 1;
        self.failed_lines.push(line.to_owned());
        if let Some(why) = why
            && self.failures.len() < KEPT_FAILURES
        {
            self.failures.push(Failure {
                line: shorten(line, FAILURE_LINE),
                error: shorten(why, FAILURE_REASON),
            });
        }
    }

    /// This snapshot with as many failed lines as fit in `room` bytes of JSON, and a
    /// message saying how many were left out: what a store that takes one message keeps of
    /// a job with more failures than that (the live status keeps them all).
    pub fn within(&self, room: usize) -> JobSnapshot {
        let size = |s: &JobSnapshot| serde_json::to_vec(s).map_or(usize::MAX, |b| b.len());
        if size(self) <= room {
            return self.clone();
        }
        let mut kept = JobSnapshot {
            failed_lines: Vec::new(),
            ..self.clone()
        };
        // Room for the message added below.
        let mut used = size(&kept).saturating_add(200);
        for line in &self.failed_lines {
            let cost = serde_json::to_string(line).map_or(usize::MAX, |l| l.len() + 1);
            if used.saturating_add(cost) > room {
                break;
            }
            used += cost;
            kept.failed_lines.push(line.clone());
        }
        let note = format!(
            "{} of {} failed lines were left out of the stored job (one message holds it)",
            self.failed_lines.len() - kept.failed_lines.len(),
            self.failed_lines.len()
        );
        kept.message = Some(match &self.message {
            Some(m) => format!("{m}; {note}"),
            None => note,
        });
        kept
    }

    /// Why `line` failed, when this snapshot kept it.
    pub fn failure_of(&self, line: &str) -> Option<&str> {
        self.failures
            .iter()
            .find(|f| f.line == shorten(line, FAILURE_LINE))
            .map(|f| f.error.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot is stored whole in one NATS message: however many images fail, it keeps
    /// every line and the reasons of the first few, each shortened.
    #[test]
    fn a_snapshot_keeps_every_failed_line_and_the_first_reasons() {
        let mut s = JobSnapshot::default();
        let long = "x".repeat(10_000);
        s.image_failed("refused/before:work", None);
        for n in 0..1_000 {
            s.image_failed(&format!("reg/app-{n}:v1"), Some(&long));
        }
        assert_eq!((s.failed, s.failed_lines.len()), (1_001, 1_001));
        assert_eq!(s.failures.len(), KEPT_FAILURES);
        assert!(s.failures.iter().all(|f| f.error.chars().count() <= 401));
        assert_eq!(s.failure_of("refused/before:work"), None);
        assert!(s.failure_of("reg/app-0:v1").is_some());
        assert_eq!(s.failure_of("reg/app-999:v1"), None, "past the first 100");
        let stored = serde_json::to_vec(&s).unwrap();
        assert!(stored.len() < 100_000, "{} bytes", stored.len());
    }

    /// A job bucket holds a job in one message: a snapshot of more failures than fit keeps
    /// the first lines and says how many it left out.
    #[test]
    fn a_stored_snapshot_fits_its_room_and_says_what_it_left_out() {
        let mut s = JobSnapshot::default();
        for n in 0..50_000 {
            s.image_failed(&format!("registry.example.com/team/app-{n:05}:v1"), None);
        }
        assert!(serde_json::to_vec(&s).unwrap().len() > 2_000_000);
        let room = 1 << 20;
        let kept = s.within(room);
        assert!(serde_json::to_vec(&kept).unwrap().len() <= room);
        assert_eq!(kept.failed, 50_000, "the figures stay whole");
        let n = kept.failed_lines.len();
        assert!(n > 10_000, "{n} lines kept");
        assert_eq!(kept.failed_lines[..], s.failed_lines[..n]);
        let message = kept.message.as_deref().unwrap_or_default();
        assert!(
            message.contains(&format!(
                "{} of 50000 failed lines were left out",
                50_000 - n
            )),
            "{message}"
        );
        let small = JobSnapshot::default();
        assert_eq!(
            small.within(room).message,
            None,
            "what fits is kept as it is"
        );
    }
}
