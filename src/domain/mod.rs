//! Domain types that parse once at the edge: a value of one of these types is valid by
//! construction, so nothing behind the HTTP layer validates again.

#[macro_use]
mod text;
mod campaign;
mod redemption;
mod window;

pub use campaign::{CampaignId, CampaignName, Total};
pub use redemption::{Fate, Holder, IdempotencyKey, OutboxEntry, Outcome, RejectReason, UserId};
pub use window::{Timestamp, Window};

/// Why a value was refused at the edge; the HTTP layer adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must be an integer between {min} and {max}")]
    OutOfRange { min: i64, max: i64 },
    #[error("must be a UUID")]
    NotUuid,
    #[error("must be an RFC 3339 date and time with an offset, such as 2026-11-27T09:00:00Z")]
    NotTimestamp,
    #[error("must be in the years {first} to {last}")]
    YearOutOfRange { first: i32, last: i32 },
    #[error("must be after startsAt")]
    EndsBeforeStart,
}
