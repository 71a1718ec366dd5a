//! How a registration is kept in etcd: one key per registration,
//! `<prefix><zone apex, lowercased, with its final dot>/<instance, lowercased>`,
//! whose value is `{"format": 1, "registration": {...}}` with the
//! registration as the admin socket takes it. Other tools may write keys so
//! (`etcdctl put`); a value this version cannot read is logged and skipped.

use serde::{Deserialize, Serialize};

use crate::registry::registration::Registration;
use crate::registry::store;

/// The format version this build writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Value {
    format: u32,
    registration: Registration,
}

/// The key of the registration of `instance` in `zone` under `prefix`.
pub fn key(prefix: &str, zone: &str, instance: &str) -> Result<String, String> {
    let (zone, instance) = store::key(zone, instance)?;
    Ok(format!("{prefix}{zone}/{instance}"))
}

/// The value a registration is kept as.
pub fn encode(registration: &Registration) -> String {
    #[derive(Serialize)]
    struct ValueRef<'a> {
        format: u32,
        registration: &'a Registration,
    }
    serde_json::to_string(&ValueRef {
        format: FORMAT,
        registration,
    })
    .expect("a registration serializes")
}

/// The registration a value holds, or why it cannot be read.
pub fn decode(value: &[u8]) -> Result<Registration, String> {
    let v: Value = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if v.format != FORMAT {
        return Err(format!(
            "format {} (this signpost reads format {FORMAT})",
            v.format
        ));
    }
    Ok(v.registration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_comes_back_as_written() {
        let r: Registration = serde_json::from_str(
            r#"{"zone":"Svc.Example","service":"web","instance":"Web-9","address":"10.0.0.19","port":8080,"ttl":5}"#,
        )
        .unwrap();
        assert_eq!(decode(encode(&r).as_bytes()).unwrap(), r);
        assert_eq!(
            key("/signpost/", &r.zone, &r.instance).unwrap(),
            "/signpost/svc.example./web-9"
        );
    }

    #[test]
    fn another_format_is_refused() {
        let e = decode(br#"{"format":2,"registration":{"zone":"a","service":"b","instance":"c","port":1,"address":"10.0.0.1"}}"#)
            .unwrap_err();
        assert!(e.contains("format 2"), "{e}");
        assert!(decode(b"not json").is_err());
    }
}
