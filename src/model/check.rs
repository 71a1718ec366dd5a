//! Health checks as zone files and registrations write them: validation
//! and defaults. How they run is `sources::health_probe`; what their results
//! do to answers is `registry::health`.

use std::time::Duration;

use super::{Check, CheckKind};

/// Default time between probes (Consul's and Kubernetes' usual 10 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default probe timeout (Consul's HTTP/TCP checks use 10 s; 2 s suits a
/// local network and keeps a dead address from holding a slot long). It is
/// never longer than the interval.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default consecutive failures before a healthy address is taken out.
pub const DEFAULT_FAILURES: u32 = 3;
/// Default consecutive successes before an unhealthy address is served again.
pub const DEFAULT_SUCCESSES: u32 = 2;

/// Longest interval or timeout: a day.
const MAX_SECONDS: f64 = 86_400.0;
/// Shortest interval or timeout: 10 ms, so a typo cannot make a busy loop.
const MIN_SECONDS: f64 = 0.01;
/// Largest failure or success threshold.
const MAX_THRESHOLD: i64 = 100;

/// A check as written, in a zone file or a registration, before validation.
#[derive(Clone, Debug, Default)]
pub struct CheckInput<'a> {
    /// `tcp = true`
    pub tcp: Option<bool>,
    /// `http = "/path"`
    pub http: Option<&'a str>,
    /// Seconds between probes.
    pub interval: Option<f64>,
    /// Seconds a probe may take.
    pub timeout: Option<f64>,
    /// Failures that make it unhealthy.
    pub failures: Option<i64>,
    /// Successes that make it healthy again.
    pub successes: Option<i64>,
}

/// Which part of a check a problem is in, so a zone file error points at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckField {
    /// The check as a whole.
    Whole,
    /// `tcp`
    Tcp,
    /// `http`
    Http,
    /// `interval`
    Interval,
    /// `timeout`
    Timeout,
    /// `failures`
    Failures,
    /// `successes`
    Successes,
}

/// Validates a check, filling in the defaults. Every problem is returned,
/// with the field it is in.
pub fn validate_check(input: &CheckInput) -> Result<Check, Vec<(CheckField, String)>> {
    let mut errors = Vec::new();
    let kind = match (input.tcp, input.http) {
        (Some(_), Some(_)) => {
            errors.push((
                CheckField::Http,
                "a check has either `tcp = true` or `http = \"/path\"`, not both".to_string(),
            ));
            None
        }
        (None, None) => {
            errors.push((
                CheckField::Whole,
                "a check needs `tcp = true` (connect to the port) or `http = \"/path\"` (GET, 2xx is healthy)"
                    .to_string(),
            ));
            None
        }
        (Some(false), None) => {
            errors.push((
                CheckField::Tcp,
                "`tcp = false` checks nothing; remove the check instead".to_string(),
            ));
            None
        }
        (Some(true), None) => Some(CheckKind::Tcp),
        (None, Some(path)) => {
            if !path.starts_with('/') {
                errors.push((
                    CheckField::Http,
                    format!("http path \"{path}\" must start with '/'"),
                ));
                None
            } else if let Some(c) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
                errors.push((
                    CheckField::Http,
                    format!("http path \"{path}\" contains {c:?}; percent-encode it"),
                ));
                None
            } else {
                Some(CheckKind::Http(path.to_string()))
            }
        }
    };
    let seconds = |field: CheckField, what: &str, v: Option<f64>, errors: &mut Vec<_>| {
        let v = v?;
        if v.is_finite() && (MIN_SECONDS..=MAX_SECONDS).contains(&v) {
            Some(Duration::from_secs_f64(v))
        } else {
            errors.push((
                field,
                format!("{what} {v} is out of range ({MIN_SECONDS}..={MAX_SECONDS} seconds)"),
            ));
            None
        }
    };
    let interval = seconds(
        CheckField::Interval,
        "interval",
        input.interval,
        &mut errors,
    );
    let timeout = seconds(CheckField::Timeout, "timeout", input.timeout, &mut errors);
    let interval = interval.unwrap_or(DEFAULT_INTERVAL);
    if let Some(t) = timeout
        && t > interval
    {
        errors.push((
            CheckField::Timeout,
            format!(
                "timeout {} is longer than the interval {} seconds",
                t.as_secs_f64(),
                interval.as_secs_f64()
            ),
        ));
    }
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT.min(interval));
    let threshold =
        |field: CheckField, what: &str, v: Option<i64>, default, errors: &mut Vec<_>| match v {
            None => default,
            Some(n) if (1..=MAX_THRESHOLD).contains(&n) => n as u32,
            Some(n) => {
                errors.push((
                    field,
                    format!("{what} {n} is out of range (1..={MAX_THRESHOLD})"),
                ));
                default
            }
        };
    let failures = threshold(
        CheckField::Failures,
        "failures",
        input.failures,
        DEFAULT_FAILURES,
        &mut errors,
    );
    let successes = threshold(
        CheckField::Successes,
        "successes",
        input.successes,
        DEFAULT_SUCCESSES,
        &mut errors,
    );
    match kind {
        Some(kind) if errors.is_empty() => Ok(Check {
            kind,
            interval,
            timeout,
            failures,
            successes,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_validation() {
        let c = validate_check(&CheckInput {
            tcp: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!((c.failures, c.successes), (3, 2));
        let c = validate_check(&CheckInput {
            http: Some("/healthz"),
            interval: Some(0.5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.kind, CheckKind::Http("/healthz".into()));
        assert_eq!(c.timeout, Duration::from_millis(500));
        let fields = |input: CheckInput| -> Vec<CheckField> {
            validate_check(&input)
                .unwrap_err()
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(fields(CheckInput::default()), [CheckField::Whole]);
        assert_eq!(
            fields(CheckInput {
                tcp: Some(true),
                http: Some("/"),
                ..Default::default()
            }),
            [CheckField::Http]
        );
        assert_eq!(
            fields(CheckInput {
                http: Some("healthz"),
                ..Default::default()
            }),
            [CheckField::Http]
        );
        assert_eq!(
            fields(CheckInput {
                tcp: Some(true),
                interval: Some(0.0),
                timeout: Some(-1.0),
                failures: Some(0),
                successes: Some(101),
                ..Default::default()
            }),
            [
                CheckField::Interval,
                CheckField::Timeout,
                CheckField::Failures,
                CheckField::Successes
            ]
        );
        assert_eq!(
            fields(CheckInput {
                tcp: Some(true),
                interval: Some(1.0),
                timeout: Some(2.0),
                ..Default::default()
            }),
            [CheckField::Timeout]
        );
    }
}
