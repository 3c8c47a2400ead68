//! Amounts and currencies, as deals and payments take them: an integer
//! number of minor units (cents) and an ISO 4217 code.
//!
//! Invariant: what these return satisfies the tables' CHECK constraints, so a
//! bad amount or currency is a 422 naming the field before any SQL runs.

use crate::http::error::ApiError;

/// The largest amount we accept, in minor units.
///
/// 10^15 leaves headroom below 2^53, so every amount survives a round trip
/// through a JavaScript number in the web app without losing a cent.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// Checks that `value` is between `min` and [`MAX_AMOUNT_MINOR`].
pub fn amount(field: &str, value: i64, min: i64) -> Result<i64, ApiError> {
    if (min..=MAX_AMOUNT_MINOR).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::validation(
            field,
            format!(
                "{field} must be an integer number of minor units from {min} to {MAX_AMOUNT_MINOR}"
            ),
        ))
    }
}

/// Checks that `value` is three upper-case ASCII letters, like `EUR`.
///
/// Lower case is refused rather than upper-cased: a client that sends `eur`
/// would otherwise read back a value it never sent, and the column is
/// compared byte for byte.
pub fn currency(field: &str, value: &str) -> Result<String, ApiError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value.to_string())
    } else {
        Err(ApiError::validation(
            field,
            format!("{field} must be an ISO 4217 code: three upper-case letters, like EUR"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_bounded() {
        assert_eq!(amount("a", 0, 0).expect("zero deal"), 0);
        assert_eq!(
            amount("a", MAX_AMOUNT_MINOR, 1).expect("max"),
            MAX_AMOUNT_MINOR
        );
        for (value, min) in [(-1, 0), (0, 1), (MAX_AMOUNT_MINOR + 1, 0), (i64::MIN, 0)] {
            assert!(amount("a", value, min).is_err(), "{value} {min}");
        }
    }

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert_eq!(currency("c", "EUR").expect("valid"), "EUR");
        for bad in ["", "eur", "EU", "EURO", "E1R", "ÉUR", " EU", "EU\0"] {
            assert!(currency("c", bad).is_err(), "{bad:?}");
        }
    }
}
