//! One fetch per blob across the whole fleet, even across concurrent jobs: before a worker
//! fills the shared cache with a blob it takes a lease on the digest in the JetStream KV
//! bucket `hangar-blob-leases` (create fails when the key exists), renewed at a third of the
//! bucket's max age while the fill runs. Others wait for the cache entry to appear, or for
//! the lease to go (released, or expired with the bucket's 10 min max age when its holder
//! died), and then try again. Leases live in NATS, never in S3
//! conditional writes (Garage ignores them).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};

use crate::digest::Digest;
use crate::error::{Error, FailureClass, Result};

pub const LEASE_BUCKET: &str = "hangar-blob-leases";
pub const LEASE_TTL: Duration = Duration::from_secs(600);

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

    /// `ttl` is the bucket's max age when this call creates it (an existing bucket keeps
    /// its own): how long a dead holder's lease outlives it.
    pub async fn open_with_ttl(
        client: async_nats::Client,
        holder: &str,
        ttl: Duration,
    ) -> Result<Self> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(LEASE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: LEASE_BUCKET.into(),
                    history: 1,
                    max_age: ttl,
                    ..Default::default()
                })
                .await
                .map_err(bus)?,
        };
        // A bucket made by hand may have no max age: renew at our own pace then.
        let ttl = match kv.status().await {
            Ok(status) if !status.max_age().is_zero() => status.max_age(),
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
        let renew = tokio::spawn(async move {
            let mut revision = revision;
            loop {
                tokio::time::sleep(leases.ttl / 3).await;
                match leases
                    .kv
                    .update(&key, leases.holder.clone().into(), revision)
                    .await
                {
                    Ok(r) => revision = r,
                    Err(e) => {
                        // Expired and taken, or NATS away: the fill goes on, unguarded.
                        tracing::warn!("renewing the lease on {key}: {e}");
                        return;
                    }
                }
            }
        });
        Ok(Some(Lease {
            leases: self.clone(),
            digest: Some(digest.clone()),
            renew,
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
}

impl Lease {
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
