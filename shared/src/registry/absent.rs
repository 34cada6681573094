//! Repositories a destination said it does not have: `NAME_UNKNOWN` to a manifest read
//! (a copy looking first whether the image is there). No blob can be in a repository that
//! does not exist, so while a copy fills it the look at each blob before its upload is
//! answered here — one round trip less per blob copied into a new repository. Should
//! someone else fill it meanwhile, a blob is uploaded that was there: more bytes, never a
//! wrong result. The memory is short (10 minutes) and bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const HELD_FOR: Duration = Duration::from_secs(600);
const MAX_HELD: usize = 100_000;

#[derive(Default)]
pub(super) struct Absent(Mutex<HashMap<String, Instant>>);

impl Absent {
    /// `repo` was answered `NAME_UNKNOWN` just now.
    pub(super) fn note(&self, repo: &str) {
        let Ok(mut held) = self.0.lock() else { return };
        if held.len() >= MAX_HELD {
            held.retain(|_, at| at.elapsed() < HELD_FOR);
            if held.len() >= MAX_HELD {
                return;
            }
        }
        held.insert(repo.to_owned(), Instant::now());
    }

    /// Whether `repo` was said not to exist within the last ten minutes.
    pub(super) fn holds(&self, repo: &str) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|held| held.get(repo).map(|at| at.elapsed() < HELD_FOR))
            .unwrap_or(false)
    }
}

/// Whether an error's text carries the registry's own `NAME_UNKNOWN` code (the error
/// envelope's code, as `classify` writes it: `HTTP 404: NAME_UNKNOWN: …`).
pub(super) fn says_name_unknown(message: &str) -> bool {
    message.contains("HTTP 404: NAME_UNKNOWN:")
}
