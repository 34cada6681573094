//! What one caller of the API may hold of the service: jobs running at once, the planning
//! time each image may take, and which finished jobs the service remembers (the newest
//! `--keep-jobs`, in memory and in the `hangar-jobs` bucket) — none of it grows with what
//! callers send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Running;
use crate::spec::JobSpec;

/// Jobs one caller (one token) may have queued or running at once; one more is 429.
pub(super) const RUNNING_PER_CALLER: usize = 16;
/// The longest a client may give `options.timeout`: it bounds one image's planning and one
/// transfer attempt, and a large layer over a slow link may take hours.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// One of a caller's places among its running jobs, held while its job is started (and
/// counted until then, as the job is once started).
pub(super) struct Place {
    admitting: Arc<Mutex<HashMap<String, usize>>>,
    owner: String,
}

impl Place {
    pub(super) fn new(admitting: Arc<Mutex<HashMap<String, usize>>>, owner: &str) -> Self {
        Self {
            admitting,
            owner: owner.to_owned(),
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut admitting) = self.admitting.lock()
            && let Some(n) = admitting.get_mut(&self.owner)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                admitting.remove(&self.owner);
            }
        }
    }
}

/// A client's `options.timeout` must bound its job: `0` (no bound) or more than a day
/// would let one job hold the service's planners for as long as it likes.
pub(super) fn timeout_allowed(spec: &JobSpec) -> Result<(), String> {
    let given = &spec.options.timeout;
    let t =
        humantime::parse_duration(given).map_err(|e| format!("options.timeout {given:?}: {e}"))?;
    if t.is_zero() || t > MAX_TIMEOUT {
        return Err(format!(
            "options.timeout {given:?}: a job on the service bounds each image's planning \
             and each transfer attempt, more than 0 and at most {}",
            humantime::format_duration(MAX_TIMEOUT)
        ));
    }
    Ok(())
}

/// Whether a job in `state` has yet to end.
pub(super) fn open(state: &str) -> bool {
    state == "running" || state == "queued"
}

/// When `r` ended; `None` while it is queued or running. Read in place, not copied.
pub(super) fn ended(r: &Running) -> Option<u64> {
    let s = r.snapshot.lock().ok()?;
    (!open(&s.state)).then_some(s.ended)
}

/// Of `jobs`, the finished ones past the `keep` that ended last.
pub(super) fn oldest_finished<'a>(
    jobs: impl Iterator<Item = (&'a String, &'a Running)>,
    keep: usize,
) -> Vec<String> {
    let mut finished: Vec<(u64, &String)> =
        jobs.filter_map(|(id, r)| Some((ended(r)?, id))).collect();
    if finished.len() <= keep {
        return Vec::new();
    }
    finished.sort_unstable_by(|a, b| b.cmp(a));
    finished
        .into_iter()
        .skip(keep)
        .map(|(_, id)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_timeout_must_bound_planning() {
        let mut spec = JobSpec::from_json(br#"{"version":1,"kind":"mirror","list":"a/b:c","destination":{"registry":"r.example"}}"#)
            .expect("spec");
        assert!(timeout_allowed(&spec).is_ok(), "the default");
        for bad in ["0", "0s", "25h", "soon"] {
            spec.options.timeout = bad.into();
            let e = timeout_allowed(&spec).expect_err(bad);
            assert!(e.contains("options.timeout"), "{e}");
        }
        spec.options.timeout = "3h".into();
        assert!(timeout_allowed(&spec).is_ok());
    }
}
