//! What this process's recent looks at destinations found, deciding whether a copy asks its
//! source for the blob while the destination is still being looked at. On a first copy the
//! look finds nothing and the GET's round trip overlaps the look's (a WAN copy's three round
//! trips before its bytes move become two); where blobs are mostly there already (a re-run
//! after a tag was deleted, an interrupted job taken up again), each such GET would be
//! started and dropped unread, so none is until the looks have shown they find little.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Looks remembered (one bit each).
const WINDOW: u32 = 32;
/// Looks seen before any early read: a first look that finds blobs keeps the reads off.
const FIRST: u32 = 8;

#[derive(Debug, Default)]
pub struct LookHistory {
    /// The last [`WINDOW`] looks, newest in the lowest bit; 1 = the blob was there.
    found: AtomicU64,
    seen: AtomicU32,
}

impl LookHistory {
    pub fn record(&self, present: bool) {
        let mask = (1u64 << WINDOW) - 1;
        let _ = self
            .found
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(((bits << 1) | u64::from(present)) & mask)
            });
        let _ = self
            .seen
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            });
    }

    /// At least [`FIRST`] looks, and at most one in eight of the last ones (up to
    /// [`WINDOW`]) found its blob.
    pub fn mostly_absent(&self) -> bool {
        let seen = self.seen.load(Ordering::Relaxed).min(WINDOW);
        if seen < FIRST {
            return false;
        }
        let recent = self.found.load(Ordering::Relaxed) & ((1u64 << seen) - 1);
        recent.count_ones() * 8 <= seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_reads_start_after_absent_looks_and_stop_when_looks_find_blobs() {
        let h = LookHistory::default();
        for _ in 0..FIRST - 1 {
            h.record(false);
        }
        assert!(!h.mostly_absent(), "not before {FIRST} looks");
        h.record(false);
        assert!(h.mostly_absent());
        h.record(true);
        assert!(h.mostly_absent(), "one in nine found");
        h.record(true);
        assert!(!h.mostly_absent(), "two in ten found");
        // Absent looks push the found ones out of the window.
        for _ in 0..WINDOW - 2 {
            h.record(false);
        }
        assert!(h.mostly_absent());
        let mostly_found = LookHistory::default();
        for i in 0..40 {
            mostly_found.record(i % 2 == 0);
        }
        assert!(!mostly_found.mostly_absent());
    }
}
