//! Human durations as written in the configuration: `"90s"`, `"5m"`, `"24h"`, `"30d"`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole number of seconds, written in the configuration as a number and one unit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(secs)
    }

    /// The duration in seconds.
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// The duration in seconds, as a signed number for timestamp arithmetic.
    pub fn as_secs_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// Parses `<digits><unit>` where unit is `s`, `m`, `h` or `d`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("invalid duration {text:?}: add a unit (s, m, h or d)"))?;
        let (digits, unit) = text.split_at(split);
        if digits.is_empty() {
            return Err(format!("invalid duration {text:?}: expected a whole number followed by s, m, h or d"));
        }
        let value: u64 = digits.parse().map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(format!("invalid duration {text:?}: unknown unit {unit:?} (use s, m, h or d)")),
        };
        value.checked_mul(scale).map(Duration).ok_or_else(|| format!("invalid duration {text:?}: too large"))
    }
}

impl fmt::Display for Duration {
    /// The largest unit that divides the value exactly, so `parse(display(d)) == d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s != 0 && s.is_multiple_of(86_400) {
            write!(f, "{}d", s / 86_400)
        } else if s != 0 && s.is_multiple_of(3_600) {
            write!(f, "{}h", s / 3_600)
        } else if s != 0 && s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Seconds as "1d 55m", for people: only the units that are not zero (CLI and console).
pub fn human_span(secs: i64) -> String {
    let parts = [(secs / 86_400, "d"), (secs % 86_400 / 3_600, "h"), (secs % 3_600 / 60, "m"), (secs % 60, "s")];
    let shown: Vec<String> = parts.iter().filter(|(n, _)| *n != 0).map(|(n, unit)| format!("{n}{unit}")).collect();
    if shown.is_empty() {
        "0s".to_owned()
    } else {
        shown.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(Duration::parse("90s"), Ok(Duration(90)));
        assert_eq!(Duration::parse("5m"), Ok(Duration(300)));
        assert_eq!(Duration::parse("24h"), Ok(Duration(86_400)));
        assert_eq!(Duration::parse("30d"), Ok(Duration(2_592_000)));
        assert_eq!(Duration::parse("1s"), Ok(Duration(1)));
    }

    #[test]
    fn rejects_missing_or_unknown_units_and_overflow() {
        for bad in ["", "5", "m", "5x", "5 m", "-5s", "1.5h", "99999999999999999999s", "999999999999999999d"] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for secs in [0, 1, 59, 60, 90, 3_600, 3_599, 86_400, 90_000, 2_592_000] {
            let d = Duration(secs);
            assert_eq!(Duration::parse(&d.to_string()), Ok(d));
        }
        assert_eq!(Duration(300).to_string(), "5m");
    }
}
