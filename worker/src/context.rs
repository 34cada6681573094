//! What a handler needs from its process: stores (with this process's own credentials),
//! the retry policy, and a byte counter for live progress.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hangar_shared::retry::RetryPolicy;
use hangar_shared::store::StoreResolver;

/// What the recent looks at destinations found (whether copies read their source early).
pub mod looks;
/// The daemon's limits on what a task may ask (`--archive-root`, `--sign-scope`).
pub mod policy;

pub struct Context {
    /// How this process names itself in events (the fleet worker's lease holder name).
    pub name: String,
    pub stores: Arc<dyn StoreResolver>,
    pub retry: RetryPolicy,
    /// Bytes moved so far, for progress bars and rates; not a verified total.
    pub bytes_moved: Arc<AtomicU64>,
    /// `--timeout`: bounds one attempt of one task.
    pub task_timeout: Option<Duration>,
    /// `--stall-timeout`: a blob copy that moves no byte for this long (while waiting on
    /// no lease) is given up for another delivery.
    pub stall_after: Option<Duration>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Blobs go source → cache → destination when set, and a cached blob is never fetched
    /// from its source again.
    pub cache: Option<Arc<hangar_shared::cache::BlobCache>>,
    /// Fleet-wide leases, so one worker fills the shared cache with a blob at a time.
    pub leases: Option<Arc<hangar_shared::lease::BlobLeases>>,
    /// Signing keys by the names tasks use (`--sign-key NAME=PATH`), decrypted at start.
    pub sign_keys: std::collections::HashMap<String, Arc<hangar_shared::sign::KeyPair>>,
    /// What a task may ask of this process (`--archive-root`, `--sign-scope`): set by the
    /// fleet daemon; `None` in the embedded mode, whose tasks its own user planned.
    pub policy: Option<Arc<policy::Policy>>,
    pub looks: looks::LookHistory,
    /// `--blob-concurrency` on the fleet: held by every copy (not a mount), so that the
    /// quick blob lane's tasks whose mount is declined copy within it. `None` embedded,
    /// where both lanes share the process's slots.
    pub copy_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Take package inventories the cache holds instead of reading the layers again: the
    /// embedded mode's own cache, or a fleet whose workers all trust each other
    /// (`--reuse-inventories`).
    pub reuse_inventories: bool,
}
