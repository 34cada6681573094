//! The coordinator's own metrics (`serve`'s `/metrics`): jobs and images by state, bytes
//! and blob results of finished jobs. Registered once; each scrape sets them from the jobs'
//! snapshots (a job's counts are its snapshot's, so nothing is counted twice).

use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::engine::job::JobSnapshot;

pub struct Metrics {
    registry: Registry,
    jobs: IntGaugeVec,
    images: IntGaugeVec,
    bytes: IntGauge,
    blobs: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let jobs = IntGaugeVec::new(
            Opts::new("hangar_jobs", "Jobs known to this coordinator, by state"),
            &["state"],
        )?;
        let images = IntGaugeVec::new(
            Opts::new("hangar_images", "Images of known jobs, by state"),
            &["state"],
        )?;
        let bytes = IntGauge::new(
            "hangar_job_bytes_copied",
            "Bytes written to destinations by finished jobs",
        )?;
        let blobs = IntGaugeVec::new(
            Opts::new(
                "hangar_job_blobs",
                "Blob tasks of finished jobs by result (from_cache, mounted, present: upstream fetches saved)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(blobs.clone()))?;
        Ok(Self {
            registry,
            jobs,
            images,
            bytes,
            blobs,
        })
    }

    /// The Prometheus text for these jobs.
    pub fn render(&self, snapshots: &[JobSnapshot]) -> Vec<u8> {
        self.jobs.reset();
        self.images.reset();
        self.blobs.reset();
        self.bytes.set(0);
        for s in snapshots {
            self.jobs.with_label_values(&[s.state.as_str()]).inc();
            self.images
                .with_label_values(&["copied"])
                .add(s.copied as i64);
            self.images
                .with_label_values(&["failed"])
                .add(s.failed as i64);
            self.images
                .with_label_values(&["skipped"])
                .add(s.skipped as i64);
            self.images
                .with_label_values(&["present"])
                .add(s.present as i64);
            let pending = s.total.saturating_sub(s.done());
            self.images
                .with_label_values(&["pending"])
                .add(pending as i64);
            self.bytes
                .add(i64::try_from(s.bytes_copied).unwrap_or(i64::MAX));
            for (result, n) in [
                ("copied", s.blobs_copied),
                ("from_cache", s.blobs_from_cache),
                ("mounted", s.blobs_mounted),
                ("present", s.blobs_present),
            ] {
                self.blobs.with_label_values(&[result]).add(n as i64);
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for want of room; a failure leaves the page empty.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_reflect_the_jobs_now_not_the_sum_of_scrapes() {
        let m = Metrics::new().expect("metrics");
        let job = JobSnapshot {
            state: "succeeded".into(),
            total: 3,
            copied: 2,
            failed: 1,
            bytes_copied: 100,
            blobs_mounted: 4,
            ..Default::default()
        };
        let first = String::from_utf8(m.render(std::slice::from_ref(&job))).expect("utf-8");
        let second = String::from_utf8(m.render(&[job])).expect("utf-8");
        assert_eq!(first, second);
        assert!(
            second.contains("hangar_jobs{state=\"succeeded\"} 1"),
            "{second}"
        );
        assert!(
            second.contains("hangar_images{state=\"copied\"} 2"),
            "{second}"
        );
        assert!(
            second.contains("hangar_job_blobs{result=\"mounted\"} 4"),
            "{second}"
        );
        assert!(second.contains("hangar_job_bytes_copied 100"), "{second}");
        let empty = String::from_utf8(m.render(&[])).expect("utf-8");
        assert!(!empty.contains("state=\"succeeded\""), "{empty}");
    }
}
