//! Everything the coordinator and the workers both need: value types (references, list
//! lines, digests, manifests), registry access, the image-store abstraction, task and
//! event types, and the queue trait with its in-process backend.

pub mod archive;
pub mod atomic;
pub mod auth;
pub mod cache;
pub mod connections;
pub mod digest;
pub mod error;
pub mod glob;
pub mod imagelist;
pub mod index_builder;
pub mod lease;
pub mod local_file;
pub mod manifest;
pub mod memory;
pub mod policy;
pub mod process_group;
pub mod queue;
pub mod ratelimit;
pub mod redact;
pub mod reference;
pub mod registry;
pub mod retry;
pub mod scan;
pub mod schema1;
pub mod sign;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod verify;
pub mod waiting;

pub use digest::Digest;
pub use error::{Error, FailureClass, Result};
