//! The loop's notion of time: milliseconds on the driver's clock.
//!
//! The core never reads a clock. The driver passes `now` with every call
//! (wall-clock milliseconds since the Unix epoch in a real process, the
//! virtual clock in the simulator and in tests), and the core answers with
//! the next [`Time`] it wants to be called at.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since the driver's epoch (the Unix epoch
/// for real drivers).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Time(u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);

    /// `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Time(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(millis(d)))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(millis(d)))
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The time as a UTC date (for storage); the epoch is the Unix epoch.
    pub fn to_datetime(self) -> time::OffsetDateTime {
        let nanos = i128::from(self.0) * 1_000_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    /// A UTC date as a time (dates before the epoch become the epoch).
    pub fn from_datetime(t: time::OffsetDateTime) -> Time {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        Time(u64::try_from(ms).unwrap_or(0))
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        self.saturating_add(d)
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.since(earlier)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Parses a duration written as a number and a unit: `250ms`, `30s`,
/// `5m`, `2h`. The value must be a whole number.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; write e.g. \"30s\", \"500ms\", \"5m\""))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.len() > 12 {
        return Err(format!(
            "{:?} is not a duration; write a whole number and a unit (ms, s, m, h)",
            s.chars().take(32).collect::<String>()
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{num:?} is not a whole number"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "unit {:?} is unknown; use ms, s, m or h",
                unit.chars().take(16).collect::<String>()
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Serde helpers for durations written as `"30s"`.
pub(crate) mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", super::millis(*d)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in [
            "",
            "s",
            "10",
            "1.5s",
            "10d",
            "-1s",
            "99999999999999s",
            "ms10",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_millis(1000);
        assert_eq!(t + Duration::from_millis(5), Time::from_millis(1005));
        assert_eq!(Time::from_millis(10) - t, Duration::ZERO);
        assert_eq!(t - Time::from_millis(10), Duration::from_millis(990));
        assert_eq!(t.saturating_sub(Duration::from_secs(9)), Time::ZERO);
        assert_eq!(
            Time::from_datetime(Time::from_millis(1_700_000_000_123).to_datetime()),
            Time::from_millis(1_700_000_000_123)
        );
    }
}
