//! `status` for people: jobs as a table (progress, bytes, failures, elapsed time and an
//! estimate of what is left), one job with its tasks in flight and its failed lines.
//! `--json` prints the coordinator's own JSON instead.

use std::fmt::Write as _;

use indicatif::HumanBytes;

use crate::engine::job::JobSnapshot;

fn clock(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Elapsed seconds and, for a running job with some images done, the time left at the
/// pace so far.
fn timing(s: &JobSnapshot, now: u64) -> (String, String) {
    if s.started == 0 {
        return ("-".into(), "-".into());
    }
    let elapsed = now.saturating_sub(s.started);
    let done = s.done() as u64;
    let eta = match s.state.as_str() {
        "running" if done > 0 && (s.total as u64) > done => {
            clock(elapsed * (s.total as u64 - done) / done)
        }
        "running" => "?".into(),
        _ => "-".into(),
    };
    (clock(elapsed), eta)
}

pub fn jobs(snapshots: &[JobSnapshot], now: u64) -> String {
    let mut out = format!(
        "{:<28} {:<10} {:>9} {:>6} {:>11} {:>8} {:>8}\n",
        "JOB", "STATE", "IMAGES", "FAILED", "COPIED", "ELAPSED", "ETA"
    );
    for s in snapshots {
        let (elapsed, eta) = timing(s, now);
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:>9} {:>6} {:>11} {:>8} {:>8}",
            s.id,
            s.state,
            format!("{}/{}", s.done(), s.total),
            s.failed,
            HumanBytes(s.bytes_copied).to_string(),
            elapsed,
            eta
        );
    }
    out
}

pub fn job(s: &JobSnapshot, now: u64) -> String {
    let mut out = jobs(std::slice::from_ref(s), now);
    let _ = writeln!(
        out,
        "blobs: {} copied, {} from the cache, {} mounted, {} already present",
        s.blobs_copied, s.blobs_from_cache, s.blobs_mounted, s.blobs_present
    );
    if let Some(m) = &s.message {
        let _ = writeln!(out, "message: {m}");
    }
    if !s.in_flight.is_empty() {
        let _ = writeln!(out, "in flight:");
        for t in &s.in_flight {
            let _ = write!(
                out,
                "  {} ({}, delivery {}, {})",
                t.what,
                t.worker,
                t.attempt,
                clock(t.seconds)
            );
            match &t.waiting_on {
                Some(w) => {
                    let _ = writeln!(out, " waits on {w}");
                }
                None => out.push('\n'),
            }
        }
    }
    if !s.failed_lines.is_empty() {
        let _ = writeln!(out, "failed:");
        for l in &s.failed_lines {
            match s.failure_of(l) {
                Some(why) => {
                    let _ = writeln!(out, "  {l}: {why}");
                }
                None => {
                    let _ = writeln!(out, "  {l}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_job_shows_progress_bytes_and_an_eta() {
        let mut s = JobSnapshot {
            id: "j1".into(),
            state: "running".into(),
            total: 10,
            copied: 4,
            bytes_copied: 3 << 20,
            started: 1000,
            ..Default::default()
        };
        s.image_failed("a/b:1", Some("not-found: manifest unknown"));
        let text = job(&s, 1100);
        assert!(text.contains("5/10"), "{text}");
        assert!(text.contains("3.00 MiB"), "{text}");
        // 100 s for 5 images: 100 s more for the other 5.
        assert_eq!(text.matches("1m40s").count(), 2, "{text}");
        assert!(
            text.contains("failed:\n  a/b:1: not-found: manifest unknown"),
            "{text}"
        );
        let done = JobSnapshot {
            state: "succeeded".into(),
            ..s
        };
        assert!(
            jobs(&[done], 1100)
                .lines()
                .nth(1)
                .is_some_and(|l| l.ends_with('-'))
        );
    }
}
