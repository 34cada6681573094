//! The engine every list command runs on: a job's images are planned (`planner`, through
//! `pull_source`'s mirrors and policy), turned into tasks and followed to their end
//! (`tracker`) on either backend (`job`); per-image work that copies nothing — signing,
//! scanning, validating — is planned by its command and followed by `tasks`. Commands call
//! in here as leaves; nothing here knows a command's flags.

pub mod in_flight;
pub mod job;
pub mod per_image;
pub mod planner;
pub mod pull_source;
pub mod snapshot;
pub mod tasks;
pub mod tracker;
pub mod work;
