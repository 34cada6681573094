//! Task handlers, one file per task kind, and the loop that feeds them from a queue.
//! Every handler is idempotent: it checks the destination first and does only what is
//! missing, so at-least-once delivery is safe. The coordinator's embedded mode runs these
//! very handlers in-process; the fleet daemon runs them against JetStream.

pub mod assemble;
pub mod blob;
pub mod check;
pub mod context;
pub mod http;
pub mod index;
pub mod manifest;
pub mod metrics;
pub mod progress;
pub mod runner;
pub mod scan;
pub mod sign;

pub use context::Context;
pub use runner::{handle, run};
