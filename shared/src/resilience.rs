//! A service's resilience as configuration: its circuit breaker (`breaker`), its retries with a
//! budget (`retry`) and its hedged requests (`hedge`), each optional (absent: off), their
//! defaults and their validation; and the client's deadline header (`Busgate-Timeout`) as a
//! value. The gateway's `resilience` module runs them.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// The longest window, open time or hedge delay a service may be given.
pub const MAX_PERIOD: Duration = Duration::from_secs(3600);
/// The most attempts a retry policy may make (the first one included).
pub const MAX_ATTEMPTS: u32 = 5;
/// The most probes a half-open breaker may let through.
pub const MAX_PROBES: u32 = 100;
/// The highest `min_requests`.
pub const MAX_MIN_REQUESTS: u32 = 1_000_000;

/// `breaker`: opens when `failure_ratio` of at least `min_requests` requests in the last
/// `window` failed (an error, a timeout, no responders; not a `not_found`), answers
/// `circuit_open` without asking for `open_for`, then lets `probes` requests through and closes
/// when they pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// The share of failed requests (0..1) that opens it.
    pub failure_ratio: f64,
    /// The fewest requests in the window before it may open.
    pub min_requests: u32,
    /// The window the ratio is taken over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long it stays open before it lets probes through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// The probes a half-open breaker lets through; all must pass for it to close.
    pub probes: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            probes: 3,
        }
    }
}

/// `retry`: a source that answered `error` or `no_responders` is asked again, up to `attempts`
/// attempts in all, while its deadline can hold another one and the retries of the last
/// [`BUDGET_WINDOW`] stay within `budget` × the service's requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Attempts in all, the first one included (2..=5).
    pub attempts: u32,
    /// Retries as a share (0..1) of the service's requests.
    pub budget: f64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: 2,
            budget: 0.2,
        }
    }
}

/// The window retry and hedge budgets are counted over.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// `hedge`: when a source has not answered after `after`, the request goes out once more (the
/// queue group hands it to another instance) and the first reply wins; the extra requests of
/// the last [`BUDGET_WINDOW`] stay within `max_extra` × the service's requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeSpec {
    /// When the second request goes out.
    pub after: HedgeAfter,
    /// Hedged requests as a share (0..1) of the service's requests.
    pub max_extra: f64,
}

impl Default for HedgeSpec {
    fn default() -> Self {
        HedgeSpec {
            after: HedgeAfter::P95,
            max_extra: 0.1,
        }
    }
}

/// A hedge's delay: fixed, or the 95th percentile of the service's recent latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeAfter {
    /// A fixed delay (`"50ms"`).
    Fixed(Duration),
    /// `"p95"`.
    P95,
}

impl Serialize for HedgeAfter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeAfter::P95 => s.serialize_str("p95"),
            HedgeAfter::Fixed(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for HedgeAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "p95" {
            return Ok(HedgeAfter::P95);
        }
        humantime::parse_duration(&text)
            .map(HedgeAfter::Fixed)
            .map_err(|_| serde::de::Error::custom("expected a duration (\"50ms\") or \"p95\""))
    }
}

fn ratio(field: String, value: f64) -> Result<(), Error> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid(field, "must be between 0 and 1"))
    }
}

fn period(field: String, value: Duration) -> Result<(), Error> {
    if value.is_zero() || value > MAX_PERIOD {
        Err(Error::invalid(field, "must be between 1ms and 1h"))
    } else {
        Ok(())
    }
}

impl BreakerSpec {
    /// Checks the settings; `at` names the breaker (`services.x.breaker`).
    pub fn validate(&self, at: &str) -> Result<(), Error> {
        ratio(format!("{at}.failure_ratio"), self.failure_ratio)?;
        if self.failure_ratio == 0.0 {
            return Err(Error::invalid(
                format!("{at}.failure_ratio"),
                "must be above 0 (leave the breaker out to turn it off)",
            ));
        }
        if !(1..=MAX_MIN_REQUESTS).contains(&self.min_requests) {
            return Err(Error::invalid(
                format!("{at}.min_requests"),
                format!("must be between 1 and {MAX_MIN_REQUESTS}"),
            ));
        }
        period(format!("{at}.window"), self.window)?;
        period(format!("{at}.open_for"), self.open_for)?;
        if !(1..=MAX_PROBES).contains(&self.probes) {
            return Err(Error::invalid(
                format!("{at}.probes"),
                format!("must be between 1 and {MAX_PROBES}"),
            ));
        }
        Ok(())
    }
}

impl RetrySpec {
    /// Checks the settings; `at` names the policy (`services.x.retry`).
    pub fn validate(&self, at: &str) -> Result<(), Error> {
        if !(2..=MAX_ATTEMPTS).contains(&self.attempts) {
            return Err(Error::invalid(
                format!("{at}.attempts"),
                format!("must be between 2 and {MAX_ATTEMPTS}"),
            ));
        }
        ratio(format!("{at}.budget"), self.budget)
    }
}

impl HedgeSpec {
    /// Checks the settings; `at` names the policy (`services.x.hedge`).
    pub fn validate(&self, at: &str) -> Result<(), Error> {
        if let HedgeAfter::Fixed(after) = self.after {
            period(format!("{at}.after"), after)?;
        }
        ratio(format!("{at}.max_extra"), self.max_extra)
    }
}

/// Why a `Busgate-Timeout` value was refused (the value itself is not repeated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientTimeoutError {
    /// Not a duration with a unit, or longer than [`MAX_CLIENT_TIMEOUT_LEN`] characters.
    #[error("expected a duration such as 250ms or 2s")]
    Malformed,
    /// Below one millisecond.
    #[error("must be at least 1ms")]
    TooShort,
}

/// The longest `Busgate-Timeout` value read.
pub const MAX_CLIENT_TIMEOUT_LEN: usize = 32;

/// Reads a client's `Busgate-Timeout` (`250ms`, `2s`): a duration with a unit, at least 1 ms.
/// A value beyond any deadline is accepted: it never lengthens one.
pub fn parse_client_timeout(value: &str) -> Result<Duration, ClientTimeoutError> {
    let value = value.trim();
    if value.is_empty()
        || value.len() > MAX_CLIENT_TIMEOUT_LEN
        || !value.bytes().next().is_some_and(|b| b.is_ascii_digit())
        || !value
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphabetic())
    {
        return Err(ClientTimeoutError::Malformed);
    }
    let duration = humantime::parse_duration(value).map_err(|_| ClientTimeoutError::Malformed)?;
    if duration < Duration::from_millis(1) {
        return Err(ClientTimeoutError::TooShort);
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_empty_object_and_validate() {
        let b: BreakerSpec = serde_json::from_str("{}").expect("breaker");
        assert_eq!(b, BreakerSpec::default());
        b.validate("b").expect("valid");
        let r: RetrySpec = serde_json::from_str("{}").expect("retry");
        r.validate("r").expect("valid");
        let h: HedgeSpec = serde_json::from_str(r#"{"after":"50ms"}"#).expect("hedge");
        assert_eq!(h.after, HedgeAfter::Fixed(Duration::from_millis(50)));
        h.validate("h").expect("valid");
        let h: HedgeSpec = serde_json::from_str(r#"{"after":"p95"}"#).expect("hedge");
        assert_eq!(h.after, HedgeAfter::P95);
        assert_eq!(
            serde_json::to_value(h).expect("json")["after"],
            serde_json::json!("p95")
        );
        assert!(serde_json::from_str::<HedgeSpec>(r#"{"after":"p99"}"#).is_err());
        assert!(serde_json::from_str::<BreakerSpec>(r#"{"nope":1}"#).is_err());
    }

    #[test]
    fn bad_settings_name_their_field() {
        let field = |e: Error| match e {
            Error::Invalid { field, .. } => field,
            other => panic!("{other:?}"),
        };
        let bad = [
            (
                BreakerSpec {
                    failure_ratio: 1.5,
                    ..Default::default()
                },
                "b.failure_ratio",
            ),
            (
                BreakerSpec {
                    failure_ratio: 0.0,
                    ..Default::default()
                },
                "b.failure_ratio",
            ),
            (
                BreakerSpec {
                    failure_ratio: f64::NAN,
                    ..Default::default()
                },
                "b.failure_ratio",
            ),
            (
                BreakerSpec {
                    min_requests: 0,
                    ..Default::default()
                },
                "b.min_requests",
            ),
            (
                BreakerSpec {
                    window: Duration::ZERO,
                    ..Default::default()
                },
                "b.window",
            ),
            (
                BreakerSpec {
                    open_for: Duration::from_secs(7200),
                    ..Default::default()
                },
                "b.open_for",
            ),
            (
                BreakerSpec {
                    probes: 0,
                    ..Default::default()
                },
                "b.probes",
            ),
        ];
        for (spec, expected) in bad {
            assert_eq!(field(spec.validate("b").expect_err("invalid")), expected);
        }
        let retry = |attempts, budget| RetrySpec { attempts, budget }.validate("r");
        assert_eq!(field(retry(1, 0.2).expect_err("1")), "r.attempts");
        assert_eq!(field(retry(9, 0.2).expect_err("9")), "r.attempts");
        assert_eq!(field(retry(2, -0.1).expect_err("neg")), "r.budget");
        let hedge = |after, max_extra| HedgeSpec { after, max_extra }.validate("h");
        assert_eq!(
            field(hedge(HedgeAfter::Fixed(Duration::ZERO), 0.1).expect_err("0")),
            "h.after"
        );
        assert_eq!(
            field(hedge(HedgeAfter::P95, 2.0).expect_err("2")),
            "h.max_extra"
        );
    }

    #[test]
    fn client_timeouts_parse_and_attacks_are_refused() {
        assert_eq!(
            parse_client_timeout("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(parse_client_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_client_timeout(" 1ms "), Ok(Duration::from_millis(1)));
        assert_eq!(
            parse_client_timeout("9999h"),
            Ok(Duration::from_secs(9999 * 3600))
        );
        for bad in [
            "",
            "100",
            "-1s",
            "+1s",
            "ms",
            "1.5.5s",
            "1e9s",
            "abc",
            "1s;2s",
            "0x10ms",
            "99999999999999999999999999s",
            "1000000000000000000000h",
        ] {
            assert_eq!(
                parse_client_timeout(bad),
                Err(ClientTimeoutError::Malformed),
                "{bad:?}"
            );
        }
        for short in ["0ms", "0s", "500us", "999999ns"] {
            assert_eq!(
                parse_client_timeout(short),
                Err(ClientTimeoutError::TooShort),
                "{short:?}"
            );
        }
    }
}
