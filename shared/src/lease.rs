//! One fetch per blob across the whole fleet, even across concurrent jobs: before a worker
//! fills the shared cache with a blob it takes a lease on the digest in the JetStream KV
//! bucket `hangar-blob-leases` (create fails when the key exists). Others wait for the cache
//! entry to appear, or for the lease to go (released, or expired with the bucket's 10 min
//! max age when its holder died), and then try again. Leases live in NATS, never in S3
//! conditional writes (Garage ignores them).

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
}

impl BlobLeases {
    pub async fn open(client: async_nats::Client, holder: &str) -> Result<Self> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(LEASE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: LEASE_BUCKET.into(),
                    history: 1,
                    max_age: LEASE_TTL,
                    ..Default::default()
                })
                .await
                .map_err(bus)?,
        };
        Ok(Self {
            kv,
            holder: holder.to_owned(),
        })
    }

    /// Takes the lease; `false` when someone else holds it.
    pub async fn acquire(&self, digest: &Digest) -> Result<bool> {
        match self
            .kv
            .create(digest.hex(), self.holder.clone().into())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(bus(e)),
        }
    }

    /// Whether anyone holds the lease now.
    pub async fn held(&self, digest: &Digest) -> Result<bool> {
        Ok(self.kv.get(digest.hex()).await.map_err(bus)?.is_some())
    }

    pub async fn release(&self, digest: &Digest) {
        if let Err(e) = self.kv.delete(digest.hex()).await {
            tracing::warn!("releasing the lease on {digest}: {e}");
        }
    }
}
