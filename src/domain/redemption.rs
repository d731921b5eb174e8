use super::CampaignId;

text_value! {
    /// The client's id of the person redeeming: 1 to 128 characters, kept exactly as sent.
    UserId, 128
}

text_value! {
    /// The client's key for one redeem attempt and its retries: 1 to 255 characters.
    IdempotencyKey, 255
}

impl IdempotencyKey {
    /// The key's schema when sent as the `Idempotency-Key` header.
    pub fn header_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        super::text::header_schema(Self::MAX_CHARS)
    }
}

/// A user who holds a voucher of a campaign, with the idempotency key of the request that took it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Holder {
    pub user: UserId,
    pub key: IdempotencyKey,
}

impl Holder {
    /// A holder from text stored elsewhere (Redis, PostgreSQL), each part checked as at the edge.
    pub fn parse(user: &str, key: &str) -> Result<Self, super::DomainError> {
        Ok(Self {
            user: UserId::parse(user)?,
            key: IdempotencyKey::parse(key)?,
        })
    }
}

/// One redemption on its way to PostgreSQL, as the outbox stream carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The stream entry's id (`<ms>-<n>`), for the acknowledgement.
    pub id: String,
    pub campaign: CampaignId,
    pub holder: Holder,
    /// The voucher number Redis gave. PostgreSQL's constraints, not this type, refuse a bad one:
    /// an entry Redis did not write may hold anything.
    pub seq: i32,
    /// When Redis decided it: the entry id's milliseconds.
    pub at: time::OffsetDateTime,
}

/// Why PostgreSQL refused an entry Redis granted. Only possible after Redis lost or rolled back
/// state; stored in `rejected_redemptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The user already holds a voucher under another idempotency key.
    UserHoldsOtherKey,
    /// The campaign has no capacity left in PostgreSQL.
    SoldOut,
    /// Another user already holds this voucher number.
    SeqTaken,
    /// No such campaign in PostgreSQL.
    UnknownCampaign,
}

impl RejectReason {
    const ALL: [RejectReason; 4] = [
        RejectReason::UserHoldsOtherKey,
        RejectReason::SoldOut,
        RejectReason::SeqTaken,
        RejectReason::UnknownCampaign,
    ];

    /// The reason named by `as_str`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::UserHoldsOtherKey => "user_holds_other_key",
            RejectReason::SoldOut => "sold_out",
            RejectReason::SeqTaken => "seq_taken",
            RejectReason::UnknownCampaign => "unknown_campaign",
        }
    }
}

/// What PostgreSQL made of a redemption Redis granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Its row is committed (now, or by an earlier delivery of the same entry).
    Stored,
    Refused(RejectReason),
}

impl Fate {
    /// The fate's name in the writers' messages: `stored`, or the refusal's reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            Fate::Stored => "stored",
            Fate::Refused(reason) => reason.as_str(),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "stored" => Some(Fate::Stored),
            reason => RejectReason::parse(reason).map(Fate::Refused),
        }
    }
}

/// What a redeem decided. `Redeemed { replayed: true }` answers a retry of the request that took
/// the voucher; the client sees the same status either way (the HTTP layer names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Redeemed {
        replayed: bool,
    },
    AlreadyRedeemed,
    SoldOut,
    /// The sale window has ended.
    Ended,
    /// The sale window opens this long from now: nothing was recorded.
    NotStarted {
        opens_in: std::time::Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainError;

    #[test]
    fn every_fate_parses_from_its_name() {
        for reason in RejectReason::ALL {
            assert_eq!(
                Fate::parse(Fate::Refused(reason).as_str()),
                Some(Fate::Refused(reason))
            );
        }
        assert_eq!(Fate::parse("stored"), Some(Fate::Stored));
        assert_eq!(Fate::parse("lost"), None);
    }

    #[test]
    fn a_user_id_is_kept_exactly_as_sent() {
        assert_eq!(UserId::parse(" alice ").unwrap().as_str(), " alice ");
    }

    #[test]
    fn an_empty_user_id_is_rejected() {
        assert_eq!(UserId::parse(""), Err(DomainError::Empty));
    }

    #[test]
    fn a_user_id_over_128_characters_is_rejected() {
        assert!(UserId::parse(&"u".repeat(128)).is_ok());
        assert_eq!(
            UserId::parse(&"u".repeat(129)),
            Err(DomainError::TooLong { max: 128 })
        );
    }

    #[test]
    fn an_idempotency_key_over_255_characters_is_rejected() {
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert_eq!(
            IdempotencyKey::parse(&"k".repeat(256)),
            Err(DomainError::TooLong { max: 255 })
        );
    }

    #[test]
    fn an_idempotency_key_with_a_newline_is_rejected() {
        assert_eq!(
            IdempotencyKey::parse("a\nb"),
            Err(DomainError::ControlCharacter)
        );
    }
}
