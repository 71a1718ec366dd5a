//! Runtime registrations as sources describe them, before validation, and
//! instances as `list` reports them. These are the registry's types: the
//! admin protocol carries them as they are, and the store keeps
//! registrations in this JSON form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Protocol;

/// A runtime instance as a source describes it (a client of the admin socket,
/// and later others). Field names match the CLI flags and the zone-file keys.
/// The store keeps these as they are, so what was acknowledged is what comes
/// back after a restart, validated the same way.
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
