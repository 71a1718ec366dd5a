//! The zone file as TOML has it: everything optional and spanned, so that
//! validation (not serde) reports missing keys and bad values, all of them,
//! with places.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawZone {
    pub(super) zone: Option<Spanned<String>>,
    pub(super) ttl: Option<Spanned<i64>>,
    pub(super) nameservers: Option<Vec<Spanned<String>>>,
    pub(super) soa: Option<RawSoa>,
    pub(super) hosts: Option<Entries<OneOrMany>>,
    pub(super) services: Option<Vec<Spanned<RawService>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSoa {
    pub(super) mname: Option<Spanned<String>>,
    pub(super) rname: Option<Spanned<String>>,
    pub(super) refresh: Option<Spanned<i64>>,
    pub(super) retry: Option<Spanned<i64>>,
    pub(super) expire: Option<Spanned<i64>>,
    pub(super) minimum: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) tags: Option<Vec<Spanned<String>>>,
    pub(super) instances: Option<Vec<Spanned<RawInstance>>>,
    pub(super) check: Option<Spanned<RawCheck>>,
    pub(super) max_answers: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstance {
    pub(super) name: Option<Spanned<String>>,
    pub(super) address: Option<Spanned<OneOrMany>>,
    pub(super) target: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) weight: Option<Spanned<i64>>,
    pub(super) priority: Option<Spanned<i64>>,
    pub(super) tags: Option<Vec<Spanned<String>>>,
    pub(super) metadata: Option<Entries<String>>,
    pub(super) check: Option<Spanned<RawCheck>>,
}

/// `check = { tcp = true }` or `check = { http = "/healthz" }`, with
/// `interval`, `timeout` (seconds, fractions allowed), `failures`, `successes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) tcp: Option<Spanned<bool>>,
    pub(super) http: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<f64>>,
    pub(super) timeout: Option<Spanned<f64>>,
    pub(super) failures: Option<Spanned<i64>>,
    pub(super) successes: Option<Spanned<i64>>,
}

/// A string or a list of strings (addresses). Hand-written because an
/// untagged enum would buffer the value and lose the list items' spans.
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address string or a list of address strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A table's entries in file order (a map type would sort or hash them).
pub(super) struct Entries<T>(pub(super) Vec<(Spanned<String>, Spanned<T>)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                // The deserializer's order is not guaranteed to be the file's.
                entries.sort_by_key(|(k, _): &(Spanned<String>, Spanned<T>)| k.span().start);
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}
