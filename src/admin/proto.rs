//! The admin protocol: newline-delimited JSON, one request and one reply per
//! line. These types are the whole contract; the server, the CLI and the
//! state file all use them, so they cannot drift apart.
//!
//! Requests are strict (`deny_unknown_fields`): a misspelt key is an error,
//! not a silently ignored setting. Replies are lenient for the reader, so a
//! newer server may add fields without breaking older clients.
//!
//! Versioning: this is version [`VERSION`]. A request may carry `"v": 1`;
//! any other value is refused with an error naming the supported version.
//! Compatible additions (new optional fields, new ops, new reply fields) keep
//! the number; anything that changes the meaning of an existing request bumps it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u64 = 1;

/// Longest request line accepted, newline included. Longer ones are refused
/// and the connection closed, so a client cannot make the server buffer
/// without bound. A registration with a few hundred addresses fits easily.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Add or replace a runtime instance.
    Register(Registration),
    /// Remove a runtime instance.
    Deregister(InstanceKey),
    /// Renew the TTL of a runtime instance (and serve it again if it expired).
    Heartbeat(InstanceKey),
    /// Every instance, runtime and file, of one zone or all.
    List {
        /// Only this zone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<String>,
    },
    /// Zones, their sources, serials and counts, and the server's uptime.
    Status {},
}

/// A runtime instance as a client describes it. Field names match the CLI
/// flags and the zone-file keys. The state file stores these too, so what was
/// acknowledged is what comes back after a restart, validated the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The zone's apex; the zone must be declared by a zone file.
    pub zone: String,
    /// Service name, a single label (`web`).
    pub service: String,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Instance name, a single label; with addresses it is also the host
    /// name `<instance>.<zone>`.
    pub instance: String,
    /// One address or a list (IPv4 and IPv6). Either this or `target`.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub address: Vec<String>,
    /// A name elsewhere the SRV record points at (relative names are under the zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The instance's port.
    pub port: u16,
    /// SRV weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    /// SRV priority (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    /// Tags of the instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Seconds without a heartbeat after which the instance leaves answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// An active health check, as in a zone file (only with `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Box<CheckSpec>>,
    /// DNS-SD metadata: the `key=value` strings of the instance's TXT record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A health check as a client (or a zone file) writes it:
/// `{"tcp":true}` or `{"http":"/healthz"}`, with optional `interval` and
/// `timeout` in seconds (fractions allowed) and `failures` / `successes`,
/// the consecutive results that flip its state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Connect to the instance's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<bool>,
    /// `GET` this path; 2xx is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Seconds between probes (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    /// Seconds a probe may take (default 2, at most the interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Consecutive failures that take a healthy address out (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// Consecutive successes that bring it back (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successes: Option<u32>,
}

// JSON has no NaN, so the floats always equal themselves.
impl Eq for CheckSpec {}

/// Names one runtime instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKey {
    /// The zone's apex.
    pub zone: String,
    /// The service the instance was registered under.
    pub service: String,
    /// When given, must match the registration's protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The instance name.
    pub instance: String,
}

/// `_tcp` or `_udp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP
    #[default]
    Tcp,
    /// UDP
    Udp,
}

impl From<Protocol> for crate::model::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => crate::model::Protocol::Tcp,
            Protocol::Udp => crate::model::Protocol::Udp,
        }
    }
}

impl From<crate::model::Protocol> for Protocol {
    fn from(p: crate::model::Protocol) -> Self {
        match p {
            crate::model::Protocol::Tcp => Protocol::Tcp,
            crate::model::Protocol::Udp => Protocol::Udp,
        }
    }
}

/// One reply line. `ok` says whether the request was done; when it was not,
/// `error` says why and nothing changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What is wrong with the request, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// register, heartbeat: the instance as now stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceInfo>,
    /// list: the instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceInfo>>,
    /// status: the server and its zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusInfo>,
}

impl Reply {
    /// A successful reply with nothing else in it.
    pub fn ok() -> Reply {
        Reply {
            ok: true,
            ..Reply::default()
        }
    }

    /// A refusal.
    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(message.into()),
            ..Reply::default()
        }
    }
}

/// One instance as `list` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The zone's apex.
    pub zone: String,
    /// Service name.
    pub service: String,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// Instance name.
    pub instance: String,
    /// Addresses, when it has its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<String>,
    /// Target name, when it points elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Port.
    pub port: u16,
    /// SRV weight.
    pub weight: u16,
    /// SRV priority.
    pub priority: u16,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// DNS-SD metadata (its TXT record's `key=value` strings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// `file` or `runtime`.
    pub source: String,
    /// The TTL in seconds, for runtime instances that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// `serving`, `expired` (no heartbeat within its TTL), `shadowed` (a zone
    /// file now owns its name) or `no-zone` (its zone file is gone).
    pub state: String,
    /// Why it is not served, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For instances with a TTL that are serving: milliseconds left before
    /// they expire without a heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// `unchecked` (no health check, or not served for another reason),
    /// `unknown` (not probed yet: served), `healthy`, `degraded` (some
    /// addresses unhealthy: only the others are served) or `unhealthy` (not
    /// served). An instance is answered when `state` is `serving` and
    /// `health` is not `unhealthy`.
    #[serde(default)]
    pub health: String,
    /// The addresses whose check fails, left out of answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhealthy_address: Vec<String>,
}

/// What `status` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The protocol version the server speaks.
    pub protocol: u64,
    /// The server's version.
    pub version: String,
    /// Seconds since the server started.
    pub uptime_secs: u64,
    /// The state file of runtime registrations.
    pub state_file: String,
    /// Every zone, sorted by apex.
    pub zones: Vec<ZoneInfo>,
    /// Runtime registrations for zones no file declares now (kept, not served).
    #[serde(default)]
    pub orphaned: usize,
}

/// One zone in `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneInfo {
    /// The apex.
    pub zone: String,
    /// The zone file it comes from.
    pub file: String,
    /// The current SOA serial.
    pub serial: u32,
    /// `ok`, or `stale` when the file's current version is rejected and its
    /// last good version is served.
    pub state: String,
    /// Why it is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Services served (file and runtime).
    pub services: usize,
    /// Instances declared by the file.
    pub file_instances: usize,
    /// Runtime instances served.
    pub runtime_instances: usize,
    /// Runtime instances registered but not served (expired or shadowed).
    pub runtime_not_serving: usize,
    /// Instances, file and runtime, left out of answers because every
    /// address fails its health check.
    #[serde(default)]
    pub unhealthy_instances: usize,
}

/// Parses one request line. Errors are the messages sent back to the client.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let Some(object) = value.as_object_mut() else {
        return Err("a request must be a JSON object, e.g. {\"op\":\"status\"}".into());
    };
    // The version is taken out first so that every op accepts it.
    if let Some(v) = object.remove("v")
        && v.as_u64() != Some(VERSION)
    {
        return Err(format!(
            "unsupported protocol version {v}; this server speaks version {VERSION}"
        ));
    }
    match object.get("op") {
        None => return Err(format!("missing field `op` (one of {OPS})")),
        Some(serde_json::Value::String(op)) if !OPS.contains(&format!("`{op}`")) => {
            return Err(format!("unknown op `{op}` (expected one of {OPS})"));
        }
        _ => {}
    }
    let op = object
        .get("op")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
        .to_owned();
    serde_json::from_value(value).map_err(|e| format!("{op}: {e}"))
}

const OPS: &str = "`register`, `deregister`, `heartbeat`, `list`, `status`";

/// Deserializes a string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "an address string or a list of address strings")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, String> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn register_with_one_address_or_many() {
        let one = parse(r#"{"op":"register","zone":"z","service":"web","instance":"w","address":"10.0.0.1","port":80}"#).unwrap();
        let many = parse(r#"{"v":1,"op":"register","zone":"z","service":"web","instance":"w","address":["10.0.0.1"],"port":80}"#).unwrap();
        assert_eq!(one, many);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = parse("{\"op\":\"register\"").unwrap_err();
        assert!(e.starts_with("malformed JSON"), "{e}");
        let e = parse(r#"{"op":"status","x":1}"#).unwrap_err();
        assert!(e.contains("unknown field `x`"), "{e}");
        let e = parse(r#"{"op":"register","zone":"z","service":"web","instance":"w","address":"1.2.3.4","port":1,"colour":2}"#).unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e =
            parse(r#"{"op":"register","zone":"z","service":"web","instance":"w"}"#).unwrap_err();
        assert!(e.contains("missing field `port`"), "{e}");
        let e = parse(r#"{"op":"dance"}"#).unwrap_err();
        assert!(e.contains("unknown op `dance`"), "{e}");
        let e = parse(r#"{"zone":"z"}"#).unwrap_err();
        assert!(e.contains("missing field `op`"), "{e}");
        let e = parse(r#"{"v":2,"op":"status"}"#).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        let e = parse(r#"[1]"#).unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply::error("nope");
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"ok":false,"error":"nope"}"#);
        assert_eq!(serde_json::from_str::<Reply>(&s).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Reply::ok()).unwrap(),
            r#"{"ok":true}"#
        );
    }
}
