//! The times and durations providers write in their headers: `Retry-After` (seconds or an
//! HTTP-date), OpenAI's Go-style resets (`6m0s`, `1h2m3.5s`), Anthropic's RFC 3339 resets;
//! every wait capped at [`MAX_HINTED_WAIT`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Malformed;

/// The longest wait a header can ask for; longer ones are capped here (a day).
pub const MAX_HINTED_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

#[cold]
fn capped(requested: u128) -> Duration {
    tracing::debug!(
        target: "retry_runtime",
        requested_ms = u64::try_from(requested / 1_000_000).unwrap_or(u64::MAX),
        cap_ms = MAX_HINTED_WAIT.as_millis() as u64,
        "capped a provider wait"
    );
    MAX_HINTED_WAIT
}

/// A wait of `nanos`, capped at [`MAX_HINTED_WAIT`].
fn wait_of(nanos: u128) -> Duration {
    if nanos > MAX_HINTED_WAIT.as_nanos() {
        return capped(nanos);
    }
    // Below the cap, so it fits: a day is 8.64e13 ns.
    Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    )
}

/// A non-negative decimal number (`7`, `1.5`, `0.025`) of `unit`s; huge values are capped.
pub(super) fn parse_decimal(text: &str, unit: Duration) -> Result<Duration, Malformed> {
    parse_decimal_nanos(text, unit.as_nanos()).map(wait_of)
}

/// Nanoseconds in `text` units of `unit_nanos`, saturating (the caller caps).
fn parse_decimal_nanos(text: &str, unit_nanos: u128) -> Result<u128, Malformed> {
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => {
            if frac.is_empty() {
                return Err("not a number");
            }
            (int, frac)
        }
        None => (text, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if int.starts_with('-') {
            "negative"
        } else {
            "not a number"
        });
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a number");
    }
    let mut nanos: u128 = 0;
    for digit in int.bytes() {
        nanos = nanos
            .saturating_mul(10)
            .saturating_add(u128::from(digit - b'0'));
    }
    nanos = nanos.saturating_mul(unit_nanos);
    // Nine fractional digits are below a nanosecond even for seconds; the rest cannot matter.
    let mut scale = unit_nanos;
    for digit in frac.bytes().take(9) {
        scale /= 10;
        nanos = nanos.saturating_add(u128::from(digit - b'0') * scale);
    }
    Ok(nanos)
}

/// `Retry-After`: delta-seconds (fractions accepted), or an HTTP-date (past dates are zero).
pub(super) fn parse_retry_after(text: &str, now: SystemTime) -> Result<Duration, Malformed> {
    if text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
        return parse_decimal(text, Duration::from_secs(1));
    }
    let at = httpdate::parse_http_date(text).map_err(|_| "neither seconds nor an HTTP-date")?;
    Ok(match at.duration_since(now) {
        Ok(wait) => wait_of(wait.as_nanos()),
        Err(_) => Duration::ZERO,
    })
}

/// A window reset: an RFC 3339 time (Anthropic) or a duration like `6m0s` (OpenAI).
pub(super) fn parse_reset(text: &str, now: SystemTime) -> Result<Duration, Malformed> {
    if text.len() >= 10 && text.as_bytes().get(4) == Some(&b'-') {
        parse_rfc3339_wait(text, now)
    } else {
        parse_go_duration(text)
    }
}

/// A Go-style duration, as OpenAI sends resets: `6m0s`, `1s`, `20ms`, `1h2m3.5s`, `59.9s`.
/// A bare number is seconds.
fn parse_go_duration(text: &str) -> Result<Duration, Malformed> {
    if text.is_empty() {
        return Err("empty");
    }
    if text.starts_with('-') {
        return Err("negative");
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_decimal(text, Duration::from_secs(1));
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            _ => return Err("not a duration"),
        };
        if number.is_empty() {
            return Err("not a duration");
        }
        total = total.saturating_add(parse_decimal_nanos(number, unit_nanos)?);
        rest = after;
    }
    Ok(wait_of(total))
}

/// The wait from `now` until an RFC 3339 time (`2024-06-01T12:00:30Z`,
/// `2024-06-01T12:00:30.5+02:00`); zero if it has passed.
fn parse_rfc3339_wait(text: &str, now: SystemTime) -> Result<Duration, Malformed> {
    let at = parse_rfc3339(text).ok_or("not an RFC 3339 time")?;
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    let wait = at - now;
    Ok(if wait <= 0 {
        Duration::ZERO
    } else {
        wait_of(wait as u128)
    })
}

/// Nanoseconds since the Unix epoch of an RFC 3339 date-time, hand-parsed.
fn parse_rfc3339(text: &str) -> Option<i128> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut frac_nanos: i128 = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        let len = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        let mut scale = 100_000_000;
        for d in &b[start..start + len.min(9)] {
            frac_nanos += i128::from(d - b'0') * scale;
            scale /= 10;
        }
        at = start + len;
    }
    let offset_secs: i64 = match b.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = oh * 3600 + om * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    // A leap second is read as the last second of its minute.
    let second = second.min(59);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + frac_nanos)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{now, S};
    use super::*;

    #[test]
    fn go_durations() {
        let ok = |text: &str| parse_go_duration(text).unwrap();
        assert_eq!(ok("6m0s"), 360 * S);
        assert_eq!(ok("1s"), S);
        assert_eq!(ok("20ms"), Duration::from_millis(20));
        assert_eq!(ok("1h2m3.5s"), Duration::from_millis(3_723_500));
        assert_eq!(ok("59.928s"), Duration::from_millis(59_928));
        assert_eq!(ok("1.5ms"), Duration::from_micros(1500));
        assert_eq!(ok("7us"), Duration::from_micros(7));
        assert_eq!(ok("7µs"), Duration::from_micros(7));
        assert_eq!(ok("3ns"), Duration::from_nanos(3));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("2"), 2 * S);
        for bad in ["", "-1s", "1x", "s", "1.s", "1m-2s", "ms1", "1..5s", "1 s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_times() {
        let wait = |text: &str| parse_rfc3339_wait(text, now()).unwrap();
        assert_eq!(wait("2024-06-01T12:00:30Z"), 30 * S);
        assert_eq!(wait("2024-06-01t12:00:30z"), 30 * S);
        assert_eq!(wait("2024-06-01 12:00:30Z"), 30 * S);
        assert_eq!(wait("2024-06-01T12:00:00.25Z"), Duration::from_millis(250));
        assert_eq!(wait("2024-06-01T14:00:05+02:00"), 5 * S);
        assert_eq!(wait("2024-06-01T11:00:05-01:00"), 5 * S);
        assert_eq!(wait("2024-06-01T11:59:00Z"), Duration::ZERO);
        assert_eq!(wait("1969-12-31T23:59:59Z"), Duration::ZERO);
        assert_eq!(
            wait("2024-06-01T12:00:00.123456789123Z"),
            Duration::from_nanos(123_456_789)
        );
        for bad in [
            "2024-06-01T12:00:30",
            "2024-13-01T12:00:30Z",
            "2023-02-29T12:00:30Z",
            "2024-06-31T12:00:30Z",
            "2024-06-01T24:00:30Z",
            "2024-06-01T12:00:30+2:00",
            "2024-06-01T12:00:30.Z",
            "2024-06-01T12:00:30ZZ",
            "2024-06-01",
            "2024-06-01T12:00:3xZ",
        ] {
            assert!(parse_rfc3339_wait(bad, now()).is_err(), "{bad:?}");
        }
        // Leap days exist.
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00Z"),
            Some(0),
            "the epoch is zero"
        );
    }
}
