use serde::{Deserialize, Serialize, Serializer};
use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};

use super::DomainError;

/// An instant a client names: RFC 3339 with an offset (`Z` or `+02:00`), from 2000 up to the end
/// of 2099 (a sale further off is a typo). Shown in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    const FIRST_YEAR: i32 = 2000;
    const LAST_YEAR: i32 = 2099;

    pub fn parse(value: &str) -> Result<Self, DomainError> {
        let at = OffsetDateTime::parse(value, &Rfc3339).map_err(|_| DomainError::NotTimestamp)?;
        Self::from_datetime(at)
    }

    fn from_datetime(at: OffsetDateTime) -> Result<Self, DomainError> {
        let at = Self::from(at);
        if (Self::FIRST_YEAR..=Self::LAST_YEAR).contains(&at.0.year()) {
            Ok(at)
        } else {
            Err(DomainError::YearOutOfRange {
                first: Self::FIRST_YEAR,
                last: Self::LAST_YEAR,
            })
        }
    }

    /// An instant Redis holds, in milliseconds since the Unix epoch (its clock's unit).
    pub fn from_millis(ms: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .map(Self::from)
    }

    pub fn millis(&self) -> i64 {
        (self.0.unix_timestamp_nanos() / 1_000_000) as i64
    }

    pub fn datetime(&self) -> OffsetDateTime {
        self.0
    }
}

impl From<OffsetDateTime> for Timestamp {
    /// An instant PostgreSQL or Redis holds; only the API's input is range-checked. Kept to the
    /// millisecond, Redis's clock's unit, so that every copy of it is the same instant.
    fn from(at: OffsetDateTime) -> Self {
        let at = at.to_offset(UtcOffset::UTC);
        let whole_ms = at.nanosecond() / 1_000_000 * 1_000_000;
        Self(at.replace_nanosecond(whole_ms).expect("below a second"))
    }
}

impl TryFrom<String> for Timestamp {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl Timestamp {
    /// RFC 3339 in UTC (`2026-11-27T08:00:00.5Z`).
    pub fn rfc3339(&self) -> String {
        self.0
            .format(&Rfc3339)
            .expect("a UTC instant of years 0 to 9999 formats")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.rfc3339())
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .description(Some(
                "RFC 3339 with an offset, from 2000 to 2099; answered in UTC",
            ))
            .pattern(Some("^20[0-9]{2}-"))
            .examples(["2026-11-27T09:00:00+01:00"])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

/// When a campaign takes redeems: from `starts_at` on, until `ends_at`; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
}

impl Window {
    /// A window whose end, when both are set, comes after its start.
    pub fn new(
        starts_at: Option<Timestamp>,
        ends_at: Option<Timestamp>,
    ) -> Result<Self, DomainError> {
        match (starts_at, ends_at) {
            (Some(starts), Some(ends)) if ends <= starts => Err(DomainError::EndsBeforeStart),
            _ => Ok(Self { starts_at, ends_at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_needs_an_offset_and_is_shown_in_utc() {
        assert_eq!(
            Timestamp::parse("2026-11-27T09:00:00.5004+01:00"),
            Timestamp::parse("2026-11-27T08:00:00.5Z"),
            "kept to the millisecond"
        );
        let at = Timestamp::parse("2026-11-27T09:00:00.5+01:00").unwrap();
        assert_eq!(
            serde_json::to_string(&at).unwrap(),
            r#""2026-11-27T08:00:00.5Z""#
        );
        assert_eq!(at.millis(), 1_795_766_400_500);
        assert_eq!(Timestamp::from_millis(at.millis()), Some(at));
        for bad in ["2026-11-27T09:00:00", "2026-11-27", "tomorrow", ""] {
            assert_eq!(
                Timestamp::parse(bad),
                Err(DomainError::NotTimestamp),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_timestamp_is_within_this_century() {
        assert!(Timestamp::parse("2000-01-01T00:00:00Z").is_ok());
        assert!(Timestamp::parse("2099-12-31T23:59:59Z").is_ok());
        for far in [
            "1999-12-31T23:59:59Z",
            "2100-01-01T00:00:00Z",
            "9999-01-01T00:00:00Z",
        ] {
            assert!(
                matches!(
                    Timestamp::parse(far),
                    Err(DomainError::YearOutOfRange { .. })
                ),
                "{far}"
            );
        }
    }

    #[test]
    fn a_window_ends_after_it_starts() {
        let at = |text| Some(Timestamp::parse(text).unwrap());
        let (early, late) = (at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"));
        assert!(Window::new(early, late).is_ok());
        assert!(Window::new(None, late).is_ok());
        assert!(Window::new(early, None).is_ok());
        assert_eq!(Window::new(late, early), Err(DomainError::EndsBeforeStart));
        assert_eq!(Window::new(early, early), Err(DomainError::EndsBeforeStart));
    }
}
