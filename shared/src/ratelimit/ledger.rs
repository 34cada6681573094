//! Where the rate rules keep their state: a compare-and-swap map from a registry's key to a
//! small JSON value (its window, its slots). The fleet's is the JetStream KV bucket
//! [`RATE_BUCKET`]; a process alone keeps one in memory. Every rule reads a value with its
//! revision and writes it back only if nobody got there first, so the rules need nothing
//! else in common, and one ledger that cannot be reached lets requests through.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const RATE_BUCKET: &str = "hangar-rate";

/// Where the windows and slots are kept: a compare-and-swap map.
#[async_trait]
pub(super) trait Ledger: Send + Sync {
    /// The value and revision under `k` (revision 0: none yet); `None` when the ledger
    /// cannot be reached.
    async fn entry(&self, k: &str) -> Option<(Vec<u8>, u64)>;
    /// Writes `value` if `k` is still at `revision`; false when someone got there first.
    async fn swap(&self, k: &str, value: Vec<u8>, revision: u64) -> bool;
}

pub(super) struct KvLedger(pub(super) kv::Store);

#[async_trait]
impl Ledger for KvLedger {
    async fn entry(&self, k: &str) -> Option<(Vec<u8>, u64)> {
        match self.0.entry(k).await {
            Ok(Some(e)) => Some((e.value.to_vec(), e.revision)),
            Ok(None) => Some((Vec::new(), 0)),
            Err(e) => {
                tracing::warn!("rate control: {e}; letting the request through");
                None
            }
        }
    }

    async fn swap(&self, k: &str, value: Vec<u8>, revision: u64) -> bool {
        // Only someone else's write is a reason to read again; a write the bucket refuses
        // (a value past its size, a bus gone) would be refused again at once, for ever.
        // Like a ledger that cannot be read, it lets the request through.
        let refused = if revision == 0 {
            match self.0.create(k, value.into()).await {
                Ok(_) => return true,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return false,
                Err(e) => e.to_string(),
            }
        } else {
            match self.0.update(k, value.into(), revision).await {
                Ok(_) => return true,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return false,
                Err(e) => e.to_string(),
            }
        };
        tracing::warn!("rate control: writing {k}: {refused}; letting the request through");
        true
    }
}

#[derive(Default)]
pub(super) struct MemoryLedger(Mutex<HashMap<String, (Vec<u8>, u64)>>);

#[async_trait]
impl Ledger for MemoryLedger {
    async fn entry(&self, k: &str) -> Option<(Vec<u8>, u64)> {
        let map = self.0.lock().ok()?;
        Some(map.get(k).cloned().unwrap_or_default())
    }

    async fn swap(&self, k: &str, value: Vec<u8>, revision: u64) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        let current = map.get(k).map_or(0, |(_, r)| *r);
        if current != revision {
            return false;
        }
        map.insert(k.to_owned(), (value, revision + 1));
        true
    }
}

/// The time as the ledger keeps it: ms since the epoch, the same on every worker.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A registry's key in the ledger (its slots are under `<key>.slots`).
pub(super) fn key(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(super) async fn read<T: DeserializeOwned + Default>(
    ledger: &dyn Ledger,
    k: &str,
) -> Option<(T, u64)> {
    let (bytes, revision) = ledger.entry(k).await?;
    Some((serde_json::from_slice(&bytes).unwrap_or_default(), revision))
}

/// Writes `value` if the key is still at `revision`; false when someone got there first.
pub(super) async fn swap<T: Serialize>(
    ledger: &dyn Ledger,
    k: &str,
    value: &T,
    revision: u64,
) -> bool {
    match serde_json::to_vec(value) {
        Ok(body) => ledger.swap(k, body, revision).await,
        Err(_) => true,
    }
}
