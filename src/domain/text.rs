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
