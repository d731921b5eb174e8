use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::{Uuid, fmt::Hyphenated};

use super::{DomainError, text};

/// A campaign's id: a UUID, always printed in its canonical lowercase hyphenated form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CampaignId(Uuid);

impl CampaignId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(value: &str) -> Result<Self, DomainError> {
        Uuid::try_parse(value)
            .map(Self)
            .map_err(|_| DomainError::NotUuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The id as `Display` writes it, in the caller's buffer: for the keys and script arguments
    /// built on every request, without an allocation.
    pub fn encode<'b>(&self, buffer: &'b mut [u8; Hyphenated::LENGTH]) -> &'b str {
        self.0.hyphenated().encode_lower(buffer)
    }
}

impl From<Uuid> for CampaignId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A campaign's display name: 1 to 200 characters as sent, not blank, no control characters;
/// kept without surrounding white space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CampaignName(String);

impl CampaignName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(value: &str) -> Result<Self, DomainError> {
        text::checked(value.to_owned(), Self::MAX_CHARS).map(|name| Self(name.trim().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl utoipa::PartialSchema for CampaignName {
    /// As sent: the white space around it is trimmed after the check.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text::schema(Self::MAX_CHARS)
    }
}

impl utoipa::ToSchema for CampaignName {}

impl TryFrom<String> for CampaignName {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CampaignName> for String {
    fn from(name: CampaignName) -> Self {
        name.0
    }
}

/// How many vouchers a campaign holds: 1 to 1,000,000,000 (fits PostgreSQL's `integer`).
/// JSON has one number type, so `100.0` is the integer 100 (as JSON Schema says); `1.5` is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Number", into = "i64")]
pub struct Total(i32);

impl Total {
    pub const MIN: i64 = 1;
    pub const MAX: i64 = 1_000_000_000;

    pub fn parse(value: i64) -> Result<Self, DomainError> {
        if (Self::MIN..=Self::MAX).contains(&value) {
            Ok(Self(value as i32))
        } else {
            Err(DomainError::OutOfRange {
                min: Self::MIN,
                max: Self::MAX,
            })
        }
    }

    pub fn get(&self) -> i32 {
        self.0
    }
}

impl TryFrom<serde_json::Number> for Total {
    type Error = DomainError;
    fn try_from(value: serde_json::Number) -> Result<Self, Self::Error> {
        let whole = value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|float| float.fract() == 0.0 && float.abs() <= Self::MAX as f64)
                .map(|float| float as i64)
        });
        // Fractions and numbers beyond i64 are out of range as much as 0 is.
        Self::parse(whole.unwrap_or(0))
    }
}

impl utoipa::PartialSchema for Total {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::Integer)
            .minimum(Some(Self::MIN))
            .maximum(Some(Self::MAX))
            .into()
    }
}

impl utoipa::ToSchema for Total {}

impl From<Total> for i64 {
    fn from(total: Total) -> Self {
        total.0.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_float_total_is_an_integer_and_a_fraction_is_not() {
        let total = |json: &str| serde_json::from_str::<Total>(json).map(|t| t.get());
        assert_eq!(total("100").unwrap(), 100);
        assert_eq!(total("100.0").unwrap(), 100);
        assert_eq!(total("1e3").unwrap(), 1000);
        assert!(total("1.5").is_err());
        assert!(total("0.0").is_err());
        assert!(total("1e30").is_err());
        assert!(total("18446744073709551615").is_err());
    }

    #[test]
    fn a_name_is_trimmed() {
        assert_eq!(
            CampaignName::parse("  Spring sale ").unwrap().as_str(),
            "Spring sale"
        );
    }

    #[test]
    fn a_control_character_is_rejected_even_where_trimming_would_remove_it() {
        assert_eq!(
            CampaignName::parse("Spring sale\n"),
            Err(DomainError::ControlCharacter)
        );
    }

    #[test]
    fn a_name_of_only_spaces_is_rejected() {
        assert_eq!(CampaignName::parse("   "), Err(DomainError::Empty));
    }

    #[test]
    fn a_name_of_200_characters_is_accepted_and_201_is_not() {
        assert!(CampaignName::parse(&"é".repeat(200)).is_ok());
        assert_eq!(
            CampaignName::parse(&"é".repeat(201)),
            Err(DomainError::TooLong { max: 200 })
        );
    }

    #[test]
    fn a_name_with_a_control_character_is_rejected() {
        assert_eq!(
            CampaignName::parse("a\u{7}b"),
            Err(DomainError::ControlCharacter)
        );
    }

    #[test]
    fn unicode_names_are_accepted() {
        assert_eq!(CampaignName::parse("Café 🎫").unwrap().as_str(), "Café 🎫");
    }

    #[test]
    fn totals_outside_one_to_a_billion_are_rejected() {
        for bad in [0, -1, 1_000_000_001, i64::MAX] {
            assert!(Total::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Total::parse(1).unwrap().get(), 1);
        assert_eq!(Total::parse(1_000_000_000).unwrap().get(), 1_000_000_000);
    }

    #[test]
    fn campaign_ids_print_canonically() {
        let id = CampaignId::parse("6F9619FF-8B86-D011-B42D-00C04FC964FF").unwrap();
        assert_eq!(id.to_string(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert_eq!(CampaignId::parse("42"), Err(DomainError::NotUuid));
    }

    #[test]
    fn an_encoded_id_reads_as_it_prints() {
        let id = CampaignId::new_random();
        assert_eq!(id.encode(&mut [0; Hyphenated::LENGTH]), id.to_string());
    }
}
