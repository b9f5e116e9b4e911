//! How durations (`"500ms"`, `"1.5s"`), spend amounts (`"0.10usd"`, `"20000tok"`) and names
//! (`"openai"`) are spelled, and how many attempts a policy may make. The `#[resilient]`
//! attribute checks them at compile time and the run-time configuration at startup; both call
//! these functions, so the two can never disagree. Each caller keeps its own limits and error
//! wording (a per-call budget is checked against other limits than an hourly pool), except
//! for what both must say the same way ([`DURATION_HINT`]).
//!
//! ```
//! assert_eq!(retry_grammar::duration_nanos("1.5s"), Ok(1_500_000_000));
//! assert_eq!(
//!     retry_grammar::amount("0.10", retry_grammar::AmountUnit::Usd, 1_000_000),
//!     Ok(100_000)
//! );
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod policy;

/// The longest duration any key accepts: a retry policy that waits more than a day is a job
/// queue.
pub const LONGEST_NANOS: u64 = 24 * 3600 * 1_000_000_000;

/// `"500ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"` as nanoseconds; at most [`LONGEST_NANOS`].
/// Zero is accepted (callers that need a positive duration say so themselves).
pub fn duration_nanos(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| "no unit".to_string())?;
    let (number, unit) = text.split_at(split);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ if unit.trim().is_empty() => return Err("no unit".into()),
        other => return Err(format!("unknown unit `{}`", other.trim())),
    };
    if number.is_empty() {
        return Err("no number".into());
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!("`{number}` is not a number"));
    }
    if frac.len() > 9 {
        return Err("more than nine decimal places".into());
    }
    let whole: u128 = whole.parse().map_err(|_| "the number is too large")?;
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().map_err(|_| "bad decimals")? * 10u128.pow(9 - frac.len() as u32)
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|w| w.checked_add(frac_value * unit_nanos / 1_000_000_000))
        .ok_or("the number is too large")?;
    if nanos > u128::from(LONGEST_NANOS) {
        return Err("longer than the limit of one day".into());
    }
    Ok(nanos as u64)
}

/// What every duration error ends with, after what is wrong: how to write one.
pub const DURATION_HINT: &str =
    "write a number and a unit: \"250ms\", \"2s\", \"1.5s\", \"1m\" or \"1h\"";

/// The most attempts (the first included) a policy may make: past that a call is not retrying,
/// it is polling, and belongs in a queue.
pub const MAX_ATTEMPTS: u32 = 20;

/// The longest name of a breaker, pool or pacer.
pub const NAME_MAX_LEN: usize = 64;

/// Whether `name` is a valid breaker, pool or pacer name, `[a-z0-9_-]{1,64}`: in the attribute
/// (`breaker = "openai"`) and in the configuration's sections (`[breaker.openai]`) alike, so
/// that every name one accepts the other does too.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The unit an amount is written in: `usd` (held in micro-dollars) or `tok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountUnit {
    /// Dollars, at most six decimals, held in micro-dollars.
    Usd,
    /// Tokens, whole numbers.
    Tokens,
}

/// What is wrong with an amount's number; the caller words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountError {
    /// Not digits with at most one decimal point (a sign, an exponent, an empty part).
    NotPlain,
    /// Tokens with decimals.
    FractionalTokens,
    /// Dollars with more than six decimals (finer than a micro-dollar).
    TooManyDecimals,
    /// More than the caller's maximum (or than a `u64` holds).
    TooLarge,
}

/// The number of an amount whose unit suffix (`usd`, `tok`) is already split off, in
/// micro-dollars or tokens, at most `max`. Zero is returned as zero: whether it makes sense is
/// the caller's to say.
pub fn amount(number: &str, unit: AmountUnit, max: u64) -> Result<u64, AmountError> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(frac)) {
        return Err(AmountError::NotPlain);
    }
    match unit {
        AmountUnit::Tokens => {
            if !frac.is_empty() {
                return Err(AmountError::FractionalTokens);
            }
            whole
                .parse::<u64>()
                .ok()
                .filter(|&t| t <= max)
                .ok_or(AmountError::TooLarge)
        }
        AmountUnit::Usd => {
            if frac.len() > 6 {
                return Err(AmountError::TooManyDecimals);
            }
            let whole: u64 = whole.parse().map_err(|_| AmountError::TooLarge)?;
            let frac: u64 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<6}")
                    .parse()
                    .map_err(|_| AmountError::TooLarge)?
            };
            whole
                .checked_mul(1_000_000)
                .and_then(|w| w.checked_add(frac))
                .filter(|&m| m <= max)
                .ok_or(AmountError::TooLarge)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_nanos("500ms"), Ok(500_000_000));
        assert_eq!(duration_nanos("2s"), Ok(2_000_000_000));
        assert_eq!(duration_nanos("1.5s"), Ok(1_500_000_000));
        assert_eq!(duration_nanos("1m"), Ok(60_000_000_000));
        assert_eq!(duration_nanos("1h"), Ok(3_600_000_000_000));
        assert_eq!(duration_nanos("0ms"), Ok(0));
        assert_eq!(duration_nanos("24h"), Ok(LONGEST_NANOS));
        assert!(duration_nanos("5 parsecs").unwrap_err().contains("parsecs"));
        for bad in [
            "10",
            "s",
            "1.s",
            "1..2s",
            ".5s",
            "25h",
            "99999999999999999999999999999h",
        ] {
            assert!(duration_nanos(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("openai"));
        assert!(valid_name("azure-gpt4_eu"));
        assert!(valid_name(&"a".repeat(NAME_MAX_LEN)));
        assert!(!valid_name(&"a".repeat(NAME_MAX_LEN + 1)));
        assert!(!valid_name("OpenAI"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("café"));
    }

    #[test]
    fn amounts() {
        use AmountError::*;
        use AmountUnit::*;
        assert_eq!(amount("0.10", Usd, 1_000_000), Ok(100_000));
        assert_eq!(amount("5", Usd, 10_000_000), Ok(5_000_000));
        assert_eq!(amount("0.000001", Usd, 1), Ok(1));
        assert_eq!(amount("0", Usd, 1), Ok(0));
        assert_eq!(amount("20000", Tokens, 20_000), Ok(20_000));
        assert_eq!(amount("20001", Tokens, 20_000), Err(TooLarge));
        assert_eq!(amount("1.5", Tokens, 100), Err(FractionalTokens));
        assert_eq!(amount("0.0000001", Usd, 100), Err(TooManyDecimals));
        assert_eq!(amount("99999999999999999999", Usd, u64::MAX), Err(TooLarge));
        for bad in ["", "-1", "1e3", "1.", ".5", "1.2.3", "+1"] {
            assert_eq!(amount(bad, Usd, u64::MAX), Err(NotPlain), "{bad}");
        }
    }
}

// The crate's README (what crates.io shows) is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
