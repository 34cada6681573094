//! What a worker measures, in Prometheus form (`hangar_` prefix), served on `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use hangar_shared::error::FailureClass;
use hangar_shared::ratelimit::{Gate, Permit, Request};
use hangar_shared::task::{Outcome, TaskKind};

pub struct Metrics {
    registry: Registry,
    tasks: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    bytes: IntCounterVec,
    blobs: IntCounterVec,
    cache: IntCounterVec,
    queue: prometheus::IntGaugeVec,
    retries: IntCounterVec,
    requests: IntCounterVec,
    latency: HistogramVec,
    holds: IntCounterVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are constants of this file: a failure is a programming error.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tasks = must(IntCounterVec::new(
            Opts::new(
                "hangar_tasks_total",
                "Tasks handled, by kind and result (ok, retried, failed)",
            ),
            &["kind", "result"],
        ));
        let failures = must(IntCounterVec::new(
            Opts::new(
                "hangar_task_failures_total",
                "Task attempts that failed, by kind and failure class",
            ),
            &["kind", "class"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "hangar_task_duration_seconds",
                "Time to handle one task attempt",
            )
            .buckets(vec![
                0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["kind"],
        ));
        let bytes = must(IntCounterVec::new(
            Opts::new(
                "hangar_bytes_total",
                "Blob bytes moved, by direction (in: fetched from a source registry, out: written to a destination)",
            ),
            &["direction"],
        ));
        let blobs = must(IntCounterVec::new(
            Opts::new(
                "hangar_blobs_total",
                "Blob tasks by what was done (copied, mounted, present)",
            ),
            &["result"],
        ));
        let cache = must(IntCounterVec::new(
            Opts::new(
                "hangar_cache_lookups_total",
                "Blob copies by whether the blob cache already held the blob (hit: no upstream fetch)",
            ),
            &["result"],
        ));
        let queue = must(prometheus::IntGaugeVec::new(
            Opts::new(
                "hangar_queue_tasks",
                "Tasks in the queue by kind and state (pending: not yet delivered; unacked: held by workers)",
            ),
            &["kind", "state"],
        ));
        must(registry.register(Box::new(queue.clone())));
        let retries = must(IntCounterVec::new(
            Opts::new(
                "hangar_retries_total",
                "Registry and cache requests retried, by failure class",
            ),
            &["class"],
        ));
        must(registry.register(Box::new(retries.clone())));
        let requests = must(IntCounterVec::new(
            Opts::new(
                "hangar_registry_requests_total",
                "Requests to each registry, by operation and result (ok or the failure class; rate-limited is a 429)",
            ),
            &["registry", "op", "result"],
        ));
        let latency = must(HistogramVec::new(
            HistogramOpts::new(
                "hangar_registry_request_seconds",
                "Time from sending a request to a registry to its answer's headers (an upload: to the end of its body)",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
            ]),
            &["registry", "op"],
        ));
        let holds = must(IntCounterVec::new(
            Opts::new(
                "hangar_registry_holds_total",
                "Times this worker held the whole fleet back from a registry, by reason (rate-limited: a 429; slow: answers slowing down)",
            ),
            &["registry", "reason"],
        ));
        for c in [&tasks, &failures, &bytes, &blobs, &cache, &requests, &holds] {
            must(registry.register(Box::new(c.clone())));
        }
        must(registry.register(Box::new(duration.clone())));
        must(registry.register(Box::new(latency.clone())));
        Self {
            registry,
            tasks,
            failures,
            duration,
            bytes,
            blobs,
            cache,
            queue,
            retries,
            requests,
            latency,
            holds,
        }
    }

    /// `with_cache`: whether this worker has a blob cache (only then are lookups counted).
    pub fn observe(
        &self,
        kind: TaskKind,
        seconds: f64,
        result: Result<&Outcome, (FailureClass, bool)>,
        with_cache: bool,
    ) {
        let k = kind.as_str();
        self.duration.with_label_values(&[k]).observe(seconds);
        match result {
            Ok(outcome) => {
                self.tasks.with_label_values(&[k, "ok"]).inc();
                match outcome {
                    Outcome::BlobCopied { bytes, cached } => {
                        self.blobs.with_label_values(&["copied"]).inc();
                        if !*cached {
                            self.bytes.with_label_values(&["in"]).inc_by(*bytes);
                        }
                        if with_cache {
                            let lookup = if *cached { "hit" } else { "miss" };
                            self.cache.with_label_values(&[lookup]).inc();
                        }
                        self.bytes.with_label_values(&["out"]).inc_by(*bytes);
                    }
                    Outcome::BlobMounted { .. } => self.blobs.with_label_values(&["mounted"]).inc(),
                    Outcome::BlobPresent => self.blobs.with_label_values(&["present"]).inc(),
                    _ => {}
                }
            }
            Err((class, last)) => {
                self.failures.with_label_values(&[k, class.as_str()]).inc();
                self.tasks
                    .with_label_values(&[k, if last { "failed" } else { "retried" }])
                    .inc();
            }
        }
    }

    pub fn set_queue(&self, kind: TaskKind, pending: u64, unacked: u64) {
        self.queue
            .with_label_values(&[kind.as_str(), "pending"])
            .set(pending as i64);
        self.queue
            .with_label_values(&[kind.as_str(), "unacked"])
            .set(unacked as i64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl hangar_shared::retry::RetryObserver for Metrics {
    fn retrying(&self, class: FailureClass) {
        self.retries.with_label_values(&[class.as_str()]).inc();
    }
}

/// The fleet's gate, with every request to a registry counted and timed on the way.
#[derive(Debug)]
pub struct MeteredGate {
    pub inner: std::sync::Arc<dyn Gate>,
    pub metrics: std::sync::Arc<Metrics>,
}

#[async_trait::async_trait]
impl Gate for MeteredGate {
    async fn admit(&self, host: &str, requests: u32) -> Permit {
        self.inner.admit(host, requests).await
    }

    async fn back_off(&self, host: &str, wait: std::time::Duration) {
        self.metrics
            .holds
            .with_label_values(&[host, "rate-limited"])
            .inc();
        self.inner.back_off(host, wait).await;
    }

    async fn observe(&self, host: &str, request: Request) -> bool {
        let m = &self.metrics;
        let result = request.failure.map_or("ok", FailureClass::as_str);
        m.requests
            .with_label_values(&[host, request.op, result])
            .inc();
        m.latency
            .with_label_values(&[host, request.op])
            .observe(request.elapsed.as_secs_f64());
        let held = self.inner.observe(host, request).await;
        if held {
            m.holds.with_label_values(&[host, "slow"]).inc();
        }
        held
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
