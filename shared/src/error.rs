//! One error type for the whole library. Every failure carries a [`FailureClass`] so the
//! tracker can report it per image and the retry logic can decide without string matching.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why something failed, as reported per image and counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    Auth,
    NotFound,
    RateLimited,
    Network,
    /// The remote answered 5xx.
    Server,
    DigestMismatch,
    /// A cached blob differed from its size and CRC-32 record and was evicted: fetching it
    /// again mends it.
    CacheDamaged,
    UnsupportedMediaType,
    DestinationRejected,
    InvalidInput,
    Cancelled,
    Internal,
}

impl FailureClass {
    /// Only transient classes are worth another attempt; a 4xx answer will not change.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Network | Self::Server)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::NotFound => "not-found",
            Self::RateLimited => "rate-limited",
            Self::Network => "network",
            Self::Server => "server",
            Self::DigestMismatch => "digest-mismatch",
            Self::CacheDamaged => "cache-damaged",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::DestinationRejected => "destination-rejected",
            Self::InvalidInput => "invalid-input",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Error {
    pub class: FailureClass,
    pub message: String,
    /// A server's `Retry-After`, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Duration>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(FailureClass::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(FailureClass::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Internal, message)
    }

    /// Prefix the message with what was being done, keeping the class.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::new(FailureClass::Internal, e.to_string())
    }
}
