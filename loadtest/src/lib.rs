//! Load and test tooling: synthetic images made offline ([`seed`]), real services started
//! on free loopback ports ([`services`]), a WAN-delay and fault-injecting TCP proxy
//! ([`proxy`]), a per-client bandwidth-capped link ([`link`]: a forward HTTP proxy) and the
//! benchmarks ([`bench`], with the copy floor a mirror is measured against, [`floor`]).

pub mod archive_bench;
pub mod bench;
pub mod fleet_bench;
pub mod floor;
pub mod link;
pub mod noop_bench;
pub mod proxy;
pub mod queue_bench;
pub mod scan_bench;
pub mod seed;
pub mod services;
pub mod sign_bench;
