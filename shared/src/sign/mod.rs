//! Cosign-compatible signing with a key: key pairs in cosign's encrypted format, and
//! signatures stored and verified the way cosign does (`sha256-<hex>.sig`).

pub mod cosign;
pub mod keys;
pub mod vouch;

pub use keys::{KeyPair, PublicKey};
