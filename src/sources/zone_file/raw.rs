//! The zone file as TOML has it: everything optional and spanned, so that
//! validation (not serde) reports missing keys and bad values, all of them,
//! with places.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Default, Deserialize)]
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

/// Parses a zone file's text. A large file is cut before its `[[services]]`
/// headers into pieces of [`PIECE_BYTES`] or more, parsed on every core,
/// each alone: parsing is most of loading a large zone, and no piece's
/// document tree is ever as large as the whole file's. The result is the
/// one the whole file gives, spans included; whenever it might not be (a
/// piece that does not parse, a top-level key in two pieces, a multi-line
/// string, where a line that looks like a header may be text), the whole
/// file is parsed as one, for its exact errors.
pub(super) fn parse_raw(text: &str) -> Result<RawZone, toml::de::Error> {
    parse_raw_in(text, PIECE_BYTES, LARGE_FILE_BYTES)
}

/// Files from this size on are parsed in pieces.
const LARGE_FILE_BYTES: usize = 1 << 20;
/// The smallest piece: thousands of services, so that starting a parser is
/// nothing beside parsing.
const PIECE_BYTES: usize = 256 << 10;

pub(super) fn parse_raw_in(
    text: &str,
    piece_bytes: usize,
    large: usize,
) -> Result<RawZone, toml::de::Error> {
    if text.len() >= large
        && !text.contains("\"\"\"")
        && !text.contains("'''")
        && let Some(raw) = parse_pieces(text, piece_bytes)
    {
        return Ok(raw);
    }
    toml::from_str(text)
}

/// The pieces parsed on all cores and put together, or `None` when that
/// may differ from parsing the whole text.
pub(super) fn parse_pieces(text: &str, piece_bytes: usize) -> Option<RawZone> {
    // The keys before the first service, then runs of services.
    let mut starts = vec![0];
    for start in services_headers(text) {
        let last = starts[starts.len() - 1];
        if start > 0 && (starts.len() == 1 || start - last >= piece_bytes) {
            starts.push(start);
        }
    }
    let pieces: Vec<(usize, &str)> = starts
        .iter()
        .zip(starts.iter().skip(1).chain([&text.len()]))
        .map(|(&a, &b)| (a, &text[a..b]))
        .collect();
    let threads = crate::parallel::cores().min(pieces.len());
    let parse = |group: &[(usize, &str)]| -> Option<Vec<RawZone>> {
        group
            .iter()
            .map(|&(at, piece)| toml::from_str::<RawZone>(piece).ok().map(|r| r.shift(at)))
            .collect()
    };
    let runs = crate::parallel::in_runs(&pieces, threads, parse);
    let parsed: Vec<RawZone> = runs
        .into_iter()
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    merge(parsed)
}

/// Byte offsets of the lines that are a `[[services]]` header (spaces and
/// a comment allowed around it, as TOML allows).
fn services_headers(text: &str) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0;
    text.split_inclusive('\n').filter_map(move |line| {
        let start = at;
        at += line.len();
        let rest = line.trim_start_matches([' ', '\t']).strip_prefix("[[")?;
        let rest = rest
            .trim_start_matches([' ', '\t'])
            .strip_prefix("services")?;
        let rest = rest.trim_start_matches([' ', '\t']).strip_prefix("]]")?;
        let rest = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        (rest.is_empty() || rest.starts_with('#')).then_some(start)
    })
}

/// The pieces as one zone: the first piece's keys, every piece's services
/// in order. `None` when a key other than `services` is in two pieces, or
/// the first piece has services (as an inline array, which `[[services]]`
/// headers may not extend): the whole text's parse says what is wrong.
fn merge(pieces: Vec<RawZone>) -> Option<RawZone> {
    let mut pieces = pieces.into_iter();
    let mut zone = pieces.next()?;
    if zone.services.is_some() {
        return None;
    }
    let mut services = Vec::new();
    for piece in pieces {
        fn once<T>(into: &mut Option<T>, from: Option<T>) -> Option<()> {
            match (into.is_some(), from) {
                (true, Some(_)) => None,
                (false, Some(v)) => {
                    *into = Some(v);
                    Some(())
                }
                (_, None) => Some(()),
            }
        }
        once(&mut zone.zone, piece.zone)?;
        once(&mut zone.ttl, piece.ttl)?;
        once(&mut zone.nameservers, piece.nameservers)?;
        once(&mut zone.soa, piece.soa)?;
        once(&mut zone.hosts, piece.hosts)?;
        services.extend(piece.services.into_iter().flatten());
    }
    zone.services = Some(services);
    Some(zone)
}

/// Moves every span by a number of bytes: a piece of a file parsed alone
/// has spans from its own start.
trait Shift {
    fn shift(self, by: usize) -> Self;
}

impl<T: Shift> Shift for Spanned<T> {
    fn shift(self, by: usize) -> Self {
        let span = self.span();
        Spanned::new(span.start + by..span.end + by, self.into_inner().shift(by))
    }
}

impl<T: Shift> Shift for Option<T> {
    fn shift(self, by: usize) -> Self {
        self.map(|v| v.shift(by))
    }
}

impl<T: Shift> Shift for Vec<T> {
    fn shift(self, by: usize) -> Self {
        self.into_iter().map(|v| v.shift(by)).collect()
    }
}

impl<T: Shift> Shift for Entries<T> {
    fn shift(self, by: usize) -> Self {
        Entries(
            self.0
                .into_iter()
                .map(|(k, v)| (k.shift(by), v.shift(by)))
                .collect(),
        )
    }
}

macro_rules! unspanned {
    ($($t:ty),*) => {$(
        impl Shift for $t {
            fn shift(self, _: usize) -> Self {
                self
            }
        }
    )*};
}
unspanned!(String, i64, f64, bool);

impl Shift for OneOrMany {
    fn shift(self, by: usize) -> Self {
        match self {
            OneOrMany::One(s) => OneOrMany::One(s),
            OneOrMany::Many(v) => OneOrMany::Many(v.shift(by)),
        }
    }
}

/// Every field of each struct, so that a field added later cannot be
/// forgotten (the destructuring would not compile).
macro_rules! shift_fields {
    ($($t:ident { $($f:ident),* })*) => {$(
        impl Shift for $t {
            fn shift(self, by: usize) -> Self {
                let $t { $($f),* } = self;
                $t { $($f: $f.shift(by)),* }
            }
        }
    )*};
}
shift_fields! {
    RawZone { zone, ttl, nameservers, soa, hosts, services }
    RawSoa { mname, rname, refresh, retry, expire, minimum }
    RawService { name, protocol, port, tags, instances, check, max_answers }
    RawInstance { name, address, target, port, weight, priority, tags, metadata, check }
    RawCheck { tcp, http, interval, timeout, failures, successes }
}
