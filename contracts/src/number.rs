//! DynamoDB numbers, carried as decimal strings.
//!
//! DynamoDB numbers have up to 38 significant digits and a magnitude between 1E-130
//! and 9.9999999999999999999999999999999999999E+125. An `f64` keeps 15-17 digits, so
//! the contract carries numbers as JSON strings and every consumer parses them with a
//! decimal type of its own (PostgreSQL `NUMERIC` here).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most significant digits a DynamoDB number may have.
///
/// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.NamingRulesDataTypes.html#HowItWorks.DataTypes.Number>
pub const MAX_SIGNIFICANT_DIGITS: usize = 38;
/// Largest decimal exponent of a DynamoDB number's magnitude (9.99…E+125).
pub const MAX_EXPONENT: i64 = 125;
/// Smallest decimal exponent of a non-zero DynamoDB number's magnitude (1E-130).
pub const MIN_EXPONENT: i64 = -130;

/// A number exactly as DynamoDB stores it, validated, never converted to binary floating
/// point.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DdbNumber(String);

/// Why a string is not a DynamoDB number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Not of the form `[-]digits[.digits][e[+-]digits]`.
    #[error("not a decimal number")]
    Syntax,
    /// More than [`MAX_SIGNIFICANT_DIGITS`] significant digits.
    #[error("more than 38 significant digits")]
    TooPrecise,
    /// Magnitude outside DynamoDB's range.
    #[error("magnitude outside 1E-130 ..= 9.99E+125")]
    OutOfRange,
}

impl DdbNumber {
    /// The number as the decimal string it was read from.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number as `(negative, digits, exponent)` with value `±digits × 10^exponent`:
    /// `digits` without leading or trailing zeros (empty for zero), at most 38 of them.
    pub fn decompose(&self) -> (bool, String, i64) {
        let s = self.0.as_str();
        let negative = s.starts_with('-');
        let unsigned = s.trim_start_matches(['-', '+']);
        let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
            None => (unsigned, 0),
        };
        let (int_digits, frac_digits) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all = format!("{int_digits}{frac_digits}");
        let trimmed = all.trim_start_matches('0');
        let significant = trimmed.trim_end_matches('0');
        let trailing = (trimmed.len() - significant.len()) as i64;
        if significant.is_empty() {
            return (false, String::new(), 0);
        }
        let exponent = exponent - frac_digits.len() as i64 + trailing;
        (negative, significant.to_owned(), exponent)
    }
}

impl FromStr for DdbNumber {
    type Err = NumberError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let mut i = 0;
        if bytes.first() == Some(&b'-') || bytes.first() == Some(&b'+') {
            i += 1;
        }
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = &s[int_start..i];
        let mut frac_digits = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let frac_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = &s[frac_start..i];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(NumberError::Syntax);
        }
        let mut exponent: i64 = 0;
        if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
            i += 1;
            let exp_start = i;
            if i < bytes.len() && (bytes[i] == b'-' || bytes[i] == b'+') {
                i += 1;
            }
            let digits_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == digits_start || i - digits_start > 6 {
                return Err(NumberError::Syntax);
            }
            exponent = s[exp_start..i].parse().map_err(|_| NumberError::Syntax)?;
        }
        if i != bytes.len() {
            return Err(NumberError::Syntax);
        }

        // Significant digits: all digits without leading and trailing zeros.
        let all: String = format!("{int_digits}{frac_digits}");
        let leading = all.bytes().take_while(|b| *b == b'0').count();
        if leading == all.len() {
            return Ok(DdbNumber(s.to_owned())); // zero
        }
        let significant = all[leading..].trim_end_matches('0');
        if significant.len() > MAX_SIGNIFICANT_DIGITS {
            return Err(NumberError::TooPrecise);
        }
        // Decimal exponent of the most significant digit.
        let magnitude = int_digits.len() as i64 - leading as i64 - 1 + exponent;
        if !(MIN_EXPONENT..=MAX_EXPONENT).contains(&magnitude) {
            return Err(NumberError::OutOfRange);
        }
        Ok(DdbNumber(s.to_owned()))
    }
}

impl fmt::Display for DdbNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DdbNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DdbNumber({})", self.0)
    }
}

impl Serialize for DdbNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DdbNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for DdbNumber {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DdbNumber".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A DynamoDB number as a decimal string (up to 38 significant digits); never a JSON number, so no consumer reads it through a binary float.",
            "type": "string",
            "pattern": "^[-+]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][-+]?[0-9]{1,6})?$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompose_gives_sign_significant_digits_and_exponent() {
        let d = |s: &str| s.parse::<DdbNumber>().unwrap().decompose();
        assert_eq!(d("1234.5600"), (false, "123456".into(), -2));
        assert_eq!(d("-1.5E+3"), (true, "15".into(), 2));
        assert_eq!(d("00100"), (false, "1".into(), 2));
        assert_eq!(d("-0.0"), (false, String::new(), 0));
        assert_eq!(d(".05e-2"), (false, "5".into(), -4));
    }

    #[test]
    fn thirty_eight_digit_numbers_survive_unchanged() {
        let s = "12345678901234567890123456789012345678";
        let n: DdbNumber = s.parse().unwrap();
        assert_eq!(n.as_str(), s);
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        let back: DdbNumber = serde_json::from_str(&json).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn thirty_nine_significant_digits_are_refused() {
        assert_eq!(
            "123456789012345678901234567890123456789".parse::<DdbNumber>(),
            Err(NumberError::TooPrecise)
        );
        // Trailing zeros are not significant.
        assert!(
            "1234567890123456789012345678901234567800000"
                .parse::<DdbNumber>()
                .is_ok()
        );
    }

    #[test]
    fn range_limits_follow_dynamodb() {
        assert!(
            "9.9999999999999999999999999999999999999E+125"
                .parse::<DdbNumber>()
                .is_ok()
        );
        assert_eq!("1E+126".parse::<DdbNumber>(), Err(NumberError::OutOfRange));
        assert!("1E-130".parse::<DdbNumber>().is_ok());
        assert_eq!(
            "0.1E-130".parse::<DdbNumber>(),
            Err(NumberError::OutOfRange)
        );
        assert!("0".parse::<DdbNumber>().is_ok());
        assert!("-0.000".parse::<DdbNumber>().is_ok());
    }

    #[test]
    fn malformed_numbers_are_refused() {
        for bad in [
            "",
            "-",
            ".",
            "1e",
            "1.2.3",
            "NaN",
            "inf",
            "1e1234567",
            " 1",
            "0x10",
            "1_000",
        ] {
            assert_eq!(
                bad.parse::<DdbNumber>(),
                Err(NumberError::Syntax),
                "{bad:?}"
            );
        }
    }
}
