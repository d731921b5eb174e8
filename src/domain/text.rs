//! The one rule set for free text fields: not blank, bounded length in characters, no control
//! characters (they break logs, headers and terminals, and no real name or key needs them).

use super::DomainError;

/// Checks `value` and returns it unchanged.
pub(super) fn checked(value: String, max: usize) -> Result<String, DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::Empty);
    }
    if value.chars().count() > max {
        return Err(DomainError::TooLong { max });
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::ControlCharacter);
    }
    Ok(value)
}

/// The control characters `checked` refuses, as the body of a regex character class.
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";

/// The OpenAPI schema of a text field checked with `max` characters: `checked` as a JSON Schema
/// pattern (ECMA-262, as OpenAPI 3.1 reads it): at least one character that is neither white
/// space nor control, and no control character.
pub(super) fn schema(max: usize) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    text_schema(max, format!("^[^{CONTROL}]*[^\\s{CONTROL}][^{CONTROL}]*$"))
}

/// `schema` for a value sent in an HTTP header, which cannot begin or end with a space: HTTP
/// strips it from header values.
pub(super) fn header_schema(max: usize) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    text_schema(
        max,
        format!("^(?=.*\\S)[^{CONTROL} ](?:[^{CONTROL}]*[^{CONTROL} ])?$"),
    )
}

fn text_schema(
    max: usize,
    pattern: String,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .into()
}

/// Declares a text value type checked by `checked` with `max` characters and kept as sent, that
/// deserializes only through the check.
macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(value: &str) -> Result<Self, $crate::domain::DomainError> {
                Self::try_from(value.to_owned())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::domain::DomainError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                $crate::domain::text::checked(value, Self::MAX_CHARS).map(Self)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::domain::text::schema(Self::MAX_CHARS)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
