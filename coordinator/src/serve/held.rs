//! The per-image outcomes jobs hold for their clients (`GET /jobs/{id}/results`), within
//! one budget of memory for the whole service (`--results-memory`). A scan's inventories
//! run to tens of KB an image, and a submitter may run sixteen jobs of 50,000 lines: held
//! without a bound, a few callers would hold gigabytes. A job whose outcomes would pass
//! what is left of the budget has its outcomes dropped, for good (the job itself goes on,
//! its snapshot counts it), and its client is told so.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::engine::work::ImageReport;

/// The service's memory for held outcomes, shared by every job's [`Held`].
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes `n` bytes of it, if they are left.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One job's outcomes, weighed as they are encoded for its client.
#[derive(Debug)]
pub struct Held {
    reports: Vec<ImageReport>,
    bytes: usize,
    budget: Arc<Budget>,
    /// Dropped: the budget could not take one more.
    over: bool,
}

impl Held {
    pub fn new(budget: Arc<Budget>) -> Self {
        Held {
            reports: Vec::new(),
            bytes: 0,
            budget,
            over: false,
        }
    }

    /// Keeps `report`; when the service's budget cannot take it, drops this job's outcomes
    /// (and every later one) and gives their memory back.
    pub fn push(&mut self, report: ImageReport) -> bool {
        if self.over {
            return false;
        }
        let weight = serde_json::to_vec(&report).map_or(usize::MAX, |b| b.len());
        if self.budget.take(weight) {
            self.bytes += weight;
            self.reports.push(report);
            return true;
        }
        self.over = true;
        self.reports = Vec::new();
        self.budget.give_back(std::mem::take(&mut self.bytes));
        false
    }

    /// Whether the outcomes were dropped for the budget.
    pub fn over(&self) -> bool {
        self.over
    }

    /// The outcomes as the client reads them.
    pub fn encode(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&self.reports)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(item: usize) -> ImageReport {
        serde_json::from_value(serde_json::json!({ "item": item })).unwrap()
    }

    fn weight() -> usize {
        serde_json::to_vec(&report(1)).unwrap().len()
    }

    #[test]
    fn jobs_share_one_budget_and_one_past_it_is_dropped_whole() {
        let budget = Budget::new(weight() * 3);
        let mut a = Held::new(budget.clone());
        let mut b = Held::new(budget.clone());
        assert!(a.push(report(1)) && a.push(report(2)));
        assert!(b.push(report(1)));
        // The fourth does not fit: b, which asked, loses its outcomes; a keeps its own.
        assert!(!b.push(report(2)));
        assert!(b.over() && !a.over());
        assert_eq!(b.encode().unwrap(), b"[]");
        assert!(!b.push(report(3)), "dropped for good");
        assert_eq!(a.encode().unwrap(), br#"[{"item":1},{"item":2}]"#);
        // b gave its one back; a job ending gives back all of its own.
        let mut c = Held::new(budget.clone());
        assert!(c.push(report(1)));
        assert!(!c.push(report(2)));
        drop(a);
        let mut d = Held::new(budget);
        assert!(d.push(report(1)) && d.push(report(2)));
    }
}
