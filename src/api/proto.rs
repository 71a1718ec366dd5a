//! The admin protocol: newline-delimited JSON, one request and one reply per
//! line. These types are the whole contract; the server's socket source and
//! the CLI both use them, so they cannot drift apart. A registration, the
//! key of an instance and an instance as `list` shows it are the registry's
//! own types ([`crate::registry::registration`]), carried as they are: what
//! a client sends is what the store keeps.
//!
//! Requests are strict (`deny_unknown_fields`): a misspelt key is an error,
//! not a silently ignored setting. Replies are lenient for the reader, so a
//! newer server may add fields without breaking older clients.
//!
//! Versioning: this is version [`VERSION`]. A request may carry `"v": 1`;
//! any other value is refused with an error naming the supported version.
//! Compatible additions (new optional fields, new ops, new reply fields) keep
//! the number; anything that changes the meaning of an existing request bumps it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::model::Protocol;
pub use crate::registry::registration::{CheckSpec, InstanceInfo, InstanceKey, Registration};

/// The protocol version this build speaks.
pub const VERSION: u64 = 1;

/// Longest request line accepted, newline included. Longer ones are refused
/// and the connection closed, so a client cannot make the server buffer
/// without bound. A registration with a few hundred addresses fits easily.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The environment variable that names the admin socket, for the server and
/// the client commands alike.
pub const SOCKET_ENV: &str = "SIGNPOST_SOCKET";

/// The admin socket when neither `--socket` nor `SIGNPOST_SOCKET` says:
/// `$XDG_RUNTIME_DIR/signpost.sock` (the per-user runtime directory, mode
/// 0700, which systemd-logind creates), else `/tmp/signpost-<uid>.sock`. The
/// server and the client commands compute the same path, so `serve` in one
/// terminal and `register` in another find each other without flags.
pub fn default_socket() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("signpost.sock");
    }
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    PathBuf::from(format!("/tmp/signpost-{uid}.sock"))
}

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
    /// Responses sent over the last [`StatusInfo::queries_window_secs`]
    /// seconds (a minute, or the uptime if shorter), by response code; only
    /// codes sent in that time.
    #[serde(default)]
    pub queries_by_rcode: std::collections::BTreeMap<String, u64>,
    /// The seconds [`StatusInfo::queries_by_rcode`] covers; 0 before the
    /// first sample.
    #[serde(default)]
    pub queries_window_secs: u64,
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
    /// Zone transfers, when the server offers them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferInfo>,
}

/// A zone's transfer state in `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferInfo {
    /// The serials the IXFR journal reaches from and to; older serials get
    /// the whole zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<(u32, u32)>,
    /// Changes in the journal.
    pub journal_changes: usize,
    /// The secondaries notified of the zone's changes.
    #[serde(default)]
    pub secondaries: Vec<SecondaryInfo>,
}

/// One secondary in `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondaryInfo {
    /// Where NOTIFY goes.
    pub address: String,
    /// The serial of the last NOTIFY it acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_serial: Option<u32>,
    /// How long ago, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_secs_ago: Option<u64>,
    /// A serial notified and not acknowledged yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_serial: Option<u32>,
    /// NOTIFY sent so far for the pending serial.
    #[serde(default)]
    pub attempts: u32,
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
