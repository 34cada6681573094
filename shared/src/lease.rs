//! One fetch per blob across the whole fleet, even across concurrent jobs: before a worker
//! fills the shared cache with a blob it takes a lease on the digest in the JetStream KV
//! bucket `hangar-blob-leases` (create fails when the key exists), renewed every 10 s while
//! the fill runs. Others wait for the cache entry to appear, or for the lease to go
//! (released, or lapsed with the bucket's 30 s max age when its holder died or froze), and
//! then take the fill over. A fill whose lease can no longer be renewed stops: someone else
//! may hold the digest by then. Leases live in NATS, never in S3 conditional writes (Garage
//! ignores them).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};

use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};
use crate::queue::jetstream::storage;

pub const LEASE_BUCKET: &str = "hangar-blob-leases";
/// How long a lease outlives its last renewal: a dead holder holds others up this long.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

fn bus(e: impl std::fmt::Display) -> Error {
    Error::new(FailureClass::Network, format!("blob leases: {e}"))
}

pub struct BlobLeases {
    kv: kv::Store,
    holder: String,
    ttl: Duration,
}

impl BlobLeases {
    pub async fn open(client: async_nats::Client, holder: &str) -> Result<Self> {
        Self::open_with_ttl(client, holder, LEASE_TTL).await
    }

    /// `ttl` is the bucket's max age when this call creates it: how long a dead holder's
    /// lease outlives it. An existing bucket keeps its own (the coordinator brings it to
    /// [`LEASE_TTL`]; a worker may not change it).
    pub async fn open_with_ttl(
        client: async_nats::Client,
        holder: &str,
        ttl: Duration,
    ) -> Result<Self> {
        let js = jetstream::new(client);
        let config = kv::Config {
            max_age: ttl,
            ..storage::lease_bucket()
        };
        let kv = storage::bucket(&js, config).await?;
        // Renewed at the pace of the shorter of the two lives, should the bucket keep a
        // shorter max age than asked for (made by hand, or not ours to change).
        let ttl = match kv.status().await {
            Ok(status) if !status.max_age().is_zero() => status.max_age().min(ttl),
            _ => ttl,
        };
        Ok(Self {
            kv,
            holder: holder.to_owned(),
            ttl,
        })
    }

    /// Takes the lease; `None` when someone else holds it. The lease is renewed while it is
    /// held, so a fill longer than the bucket's max age keeps it, and given back when the
    /// returned guard is released or dropped.
    pub async fn acquire(self: &Arc<Self>, digest: &Digest) -> Result<Option<Lease>> {
        let revision = match self
            .kv
            .create(digest.hex(), self.holder.clone().into())
            .await
        {
            Ok(revision) => revision,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(bus(e)),
        };
        let (leases, key) = (self.clone(), digest.hex().to_owned());
        let (lost_tx, lost) = tokio::sync::watch::channel(false);
        let renew = tokio::spawn(async move {
            let mut revision = revision;
            loop {
                tokio::time::sleep(leases.ttl / 3).await;
                // Bounded, so a NATS that stopped answering counts as a failed renewal
                // before the lease could lapse.
                let renewed = tokio::time::timeout(
                    leases.ttl / 3,
                    leases
                        .kv
                        .update(&key, leases.holder.clone().into(), revision),
                )
                .await;
                match renewed {
                    Ok(Ok(r)) => revision = r,
                    Ok(Err(e)) => {
                        tracing::warn!("renewing the lease on {key}: {e}; stopping the fill");
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Err(_) => {
                        tracing::warn!("renewing the lease on {key}: no answer; stopping the fill");
                        let _ = lost_tx.send(true);
                        return;
                    }
                }
            }
        });
        Ok(Some(Lease {
            leases: self.clone(),
            digest: Some(digest.clone()),
            renew,
            lost,
        }))
    }

    /// Whether anyone holds the lease now.
    pub async fn held(&self, digest: &Digest) -> Result<bool> {
        Ok(self.kv.get(digest.hex()).await.map_err(bus)?.is_some())
    }

    async fn release(&self, digest: &Digest) {
        if let Err(e) = self.kv.delete(digest.hex()).await {
            tracing::warn!("releasing the lease on {digest}: {e}");
        }
    }
}

/// A held lease. Given back even when the fill is cut short (a timeout drops the future),
/// so the others do not wait out its expiry.
pub struct Lease {
    leases: Arc<BlobLeases>,
    digest: Option<Digest>,
    renew: tokio::task::JoinHandle<()>,
    lost: tokio::sync::watch::Receiver<bool>,
}

impl Lease {
    /// Resolves when the lease could not be renewed: the work it guards must stop.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // A closed channel (renewal ended) without `true` is no loss: wait for ever.
        if lost.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `work` under the lease: stopped, with a transient error, if the lease is lost.
    pub async fn guard<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            done = work => done,
            () = self.lost() => Err(Error::new(
                FailureClass::Network,
                format!(
                    "the lease on {} could not be renewed; the fill stopped (another worker may hold it now)",
                    self.digest.as_ref().map(|d| d.to_string()).unwrap_or_default()
                ),
            )),
        }
    }

    pub async fn release(mut self) {
        self.renew.abort();
        if let Some(d) = self.digest.take() {
            self.leases.release(&d).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        if let (Some(d), Ok(rt)) = (self.digest.take(), tokio::runtime::Handle::try_current()) {
            let leases = self.leases.clone();
            rt.spawn(async move { leases.release(&d).await });
        }
    }
}
