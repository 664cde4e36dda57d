//! Time as the drivers give it: microseconds since an arbitrary origin
//! (process start for the agent, zero for the simulator).

use std::ops::Add;
use std::time::Duration;

/// A point in time, microseconds since the driver's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);

    /// `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Time {
        Time(secs * 1_000_000)
    }

    /// `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms * 1_000)
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// The low 32 bits of the microsecond count, for wire timestamps.
    pub fn wrapping_micros(self) -> u32 {
        self.0 as u32
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}
