//! Zone files: one TOML file per zone, parsed and validated into [`Zone`].
//!
//! The format is a user-facing contract; `zones/svc.example.toml` is the
//! annotated example. In short:
//!
//! ```toml
//! zone = "svc.example"          # required apex
//! ttl = 30                      # optional, default 30
//! nameservers = ["ns1"]         # optional NS names
//! [soa]                         # optional: mname, rname, refresh, retry, expire, minimum
//! [hosts]
//! ns1 = "127.0.0.1"
//! db = ["10.0.0.21", "fd00::21"]
//! [[services]]
//! name = "web"
//! protocol = "tcp"
//! port = 8080
//! tags = ["http"]
//! [[services.instances]]
//! name = "web-1"
//! address = "10.0.0.11"         # or `target = "host.elsewhere.example."`
//! ```
//!
//! Relative names are under the zone; a name ending in '.' is absolute.
//! Every error carries `file:line:column` (1-based, column in characters)
//! pointing at the offending key or value. TOML syntax errors and unknown
//! keys stop parsing at the first one; all semantic errors of a file are
//! reported together.

use std::borrow::{Borrow, Cow};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use hickory_proto::rr::Name;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use crate::health::{CheckField, CheckInput, validate_check};
use crate::model::{Check, DEFAULT_TTL, Endpoint, Host, Instance, Protocol, Service, Soa, Zone};

/// A problem in a zone file, printed as `path:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub struct ZoneError {
    /// The file the problem is in.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

/// The result of [`load_dir`]: the zones that loaded and every problem found.
#[derive(Debug, Default)]
pub struct LoadedDir {
    /// Zones that loaded without errors, with their files, in file-name order.
    pub zones: Vec<(PathBuf, Zone)>,
    /// Errors from all files; a file with errors contributes no zone.
    pub errors: Vec<ZoneError>,
}

/// Largest TTL allowed by RFC 2181 section 8.
const MAX_TTL: i64 = 2_147_483_647;

const DEFAULT_REFRESH: u32 = 3600;
const DEFAULT_RETRY: u32 = 600;
const DEFAULT_EXPIRE: u32 = 86400;

/// Parses and validates one zone file's text. `path` is only used in errors.
pub fn parse(path: &Path, text: &str) -> Result<Zone, Vec<ZoneError>> {
    parse_inner(path, text).map(|(zone, _)| zone)
}

/// Reads and parses one file (an I/O error becomes a [`ZoneError`] at 1:1
/// with the I/O error's message).
pub fn load_file(path: &Path) -> Result<Zone, Vec<ZoneError>> {
    load_file_located(path).map(|(zone, _)| zone)
}

/// Loads every `*.toml` file in `dir`, sorted by file name (not recursive;
/// hidden files, whose names start with '.', are skipped).
///
/// A file with errors contributes only errors. A file claiming a zone (apex
/// compared case-insensitively) that an earlier file already has is an error
/// located at its `zone` value, naming the first file, and is not loaded.
/// Returns `Err` only if the directory itself can't be read.
pub fn load_dir(dir: &Path) -> std::io::Result<LoadedDir> {
    let mut loaded = LoadedDir::default();
    let files = zone_files(dir, &mut loaded.errors)?;

    // Apex -> the file that has it (Name compares case-insensitively).
    let mut apexes: HashMap<Name, PathBuf> = HashMap::new();
    for path in files {
        match load_file_located(&path) {
            Ok((zone, zone_span)) => {
                if let Some(first) = apexes.get(&zone.apex) {
                    loaded.errors.push(ZoneError {
                        path: path.clone(),
                        line: zone_span.0,
                        column: zone_span.1,
                        message: format!(
                            "zone \"{}\" is already loaded from {}; this file is ignored",
                            zone.apex,
                            first.display()
                        ),
                    });
                    continue;
                }
                apexes.insert(zone.apex.clone(), path.clone());
                loaded.zones.push((path, zone));
            }
            Err(errors) => loaded.errors.extend(errors),
        }
    }
    Ok(loaded)
}

/// The zone files in `dir`: every `*.toml` entry (symlinks followed, so a
/// Kubernetes ConfigMap's links count) whose name does not start with '.',
/// sorted by file name. Unreadable entries, and entries that are neither a
/// regular file nor a directory (a FIFO, a socket, a device), are reported in
/// `errors` and left out.
pub fn zone_files(dir: &Path, errors: &mut Vec<ZoneError>) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(io_error(dir, &e));
                continue;
            }
        };
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        if name_str.starts_with('.') || !name_str.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        // stat, not open: stat never blocks, while opening a FIFO for
        // reading waits for a writer.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if !m.is_file() => {
                errors.push(not_regular(&path, &m.file_type()));
                continue;
            }
            // A regular file, or a dangling symlink whose read reports it.
            _ => {}
        }
        files.push((name, path));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// Like [`load_file`], also returning the line and column of the `zone`
/// value, where a conflict with another file is reported.
pub fn load_file_located(path: &Path) -> Result<(Zone, (usize, usize)), Vec<ZoneError>> {
    let (text, _) = read_file(path).map_err(|e| vec![e])?;
    parse_inner(path, &text)
}

/// Like [`parse`], also returning the line and column of the `zone` value.
pub fn parse_located(path: &Path, text: &str) -> Result<(Zone, (usize, usize)), Vec<ZoneError>> {
    parse_inner(path, text)
}

/// Reads a zone file's text, with the file's metadata as it was once read.
///
/// The file is opened with O_NONBLOCK and checked with fstat before any
/// read: a FIFO (or a symlink to one) put where a zone file was, or swapped
/// in after the directory was listed, must not block the caller, which
/// would stop every other file from loading. Anything but a regular file is
/// an error.
pub fn read_file(path: &Path) -> Result<(String, std::fs::Metadata), ZoneError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_error(path, &e))?;
    let before = file.metadata().map_err(|e| io_error(path, &e))?;
    if !before.is_file() {
        return Err(not_regular(path, &before.file_type()));
    }
    // O_NONBLOCK changes nothing for a regular file's reads.
    let mut text = String::with_capacity(before.len() as usize);
    file.read_to_string(&mut text)
        .map_err(|e| io_error(path, &e))?;
    let after = file.metadata().map_err(|e| io_error(path, &e))?;
    Ok((text, after))
}

/// Checks that the names the server derives from a service or instance name
/// fit in 255 bytes under `apex`: `_<service>._tcp.<apex>` for a service,
/// `<instance>.<apex>` for an instance. Err holds a human message.
pub fn check_fits(kind: &str, label: &str, apex: &Name) -> Result<(), String> {
    let (derived, extra) = match kind {
        "service name" => (format!("_{label}._tcp.{apex}"), 1 + 1 + label.len() + 5),
        _ => (format!("{label}.{apex}"), 1 + label.len()),
    };
    if kind == "service name" && label.len() > 62 {
        return Err(format!(
            "service name \"{label}\" is too long: _{label} would be a {}-character label (at most 63)",
            label.len() + 1
        ));
    }
    if crate::wire::wire(apex).len() + extra > 255 {
        return Err(format!(
            "{kind} \"{label}\" is too long for this zone: {derived} would exceed the 255-byte limit of a DNS name"
        ));
    }
    Ok(())
}

/// Checks a single DNS label for service/instance/tag names: letters, digits
/// and hyphens, not starting or ending with a hyphen, 1 to 63 characters.
/// `kind` names the thing in the message (e.g. "service name"). `Err` holds a
/// human-readable message.
pub fn check_label(kind: &str, label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err(format!("{kind} must not be empty"));
    }
    if label.starts_with('_') {
        return Err(format!(
            "{kind} \"{label}\" must not start with '_' (the underscore of SRV names is added automatically)"
        ));
    }
    if label.contains('.') {
        return Err(format!(
            "{kind} \"{label}\" must be a single DNS label, without '.'"
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "{kind} \"{label}\" contains {c:?}; only letters, digits and '-' are allowed"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("{kind} \"{label}\" must not start or end with '-'"));
    }
    if label.len() > 63 {
        return Err(format!(
            "{kind} \"{label}\" is {} characters long; a DNS label has at most 63",
            label.len()
        ));
    }
    Ok(())
}

/// Checks one metadata entry, which becomes the TXT string `key=value`
/// (RFC 6763 section 6.4): the key is printable US-ASCII without '=', and the
/// whole string fits in one TXT character-string (255 bytes).
pub fn check_metadata(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("metadata key must not be empty".into());
    }
    if let Some(c) = key.chars().find(|c| !(' '..='~').contains(c) || *c == '=') {
        return Err(format!(
            "metadata key \"{key}\" contains {c:?}; keys are printable ASCII without '='"
        ));
    }
    let len = key.len() + 1 + value.len();
    if len > 255 {
        return Err(format!(
            "metadata \"{key}=...\" is {len} bytes long; a TXT string holds at most 255"
        ));
    }
    Ok(())
}

/// The most TXT data an instance's metadata may make, in bytes: RFC 6763
/// section 6.2 puts the limit of a DNS-SD TXT record at 8900 bytes (and a
/// record's data can never exceed 65535).
pub const MAX_TXT_BYTES: usize = 8900;

/// Checks that metadata, as TXT strings (a length byte and `key=value`
/// each), stays within [`MAX_TXT_BYTES`].
pub fn check_metadata_total<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    let total: usize = entries
        .into_iter()
        .map(|(k, v)| 2 + k.len() + v.len())
        .sum();
    if total > MAX_TXT_BYTES {
        return Err(format!(
            "metadata makes a TXT record of {total} bytes; DNS-SD allows at most {MAX_TXT_BYTES} (RFC 6763 section 6.2)"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Raw serde structures: everything optional and spanned, so that validation
// (not serde) reports missing keys and bad values, all of them, with places.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    zone: Option<Spanned<String>>,
    ttl: Option<Spanned<i64>>,
    nameservers: Option<Vec<Spanned<String>>>,
    soa: Option<RawSoa>,
    hosts: Option<Entries<OneOrMany>>,
    services: Option<Vec<Spanned<RawService>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSoa {
    mname: Option<Spanned<String>>,
    rname: Option<Spanned<String>>,
    refresh: Option<Spanned<i64>>,
    retry: Option<Spanned<i64>>,
    expire: Option<Spanned<i64>>,
    minimum: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    tags: Option<Vec<Spanned<String>>>,
    instances: Option<Vec<Spanned<RawInstance>>>,
    check: Option<Spanned<RawCheck>>,
    max_answers: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    name: Option<Spanned<String>>,
    address: Option<Spanned<OneOrMany>>,
    target: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
    priority: Option<Spanned<i64>>,
    tags: Option<Vec<Spanned<String>>>,
    metadata: Option<Entries<String>>,
    check: Option<Spanned<RawCheck>>,
}

/// `check = { tcp = true }` or `check = { http = "/healthz" }`, with
/// `interval`, `timeout` (seconds, fractions allowed), `failures`, `successes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    tcp: Option<Spanned<bool>>,
    http: Option<Spanned<String>>,
    interval: Option<Spanned<f64>>,
    timeout: Option<Spanned<f64>>,
    failures: Option<Spanned<i64>>,
    successes: Option<Spanned<i64>>,
}

/// A string or a list of strings (addresses). Hand-written because an
/// untagged enum would buffer the value and lose the list items' spans.
enum OneOrMany {
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
struct Entries<T>(Vec<(Spanned<String>, Spanned<T>)>);

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

// ---------------------------------------------------------------------------
// Validation.

fn io_error(path: &Path, e: &std::io::Error) -> ZoneError {
    ZoneError {
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        message: e.to_string(),
    }
}

fn not_regular(path: &Path, kind: &std::fs::FileType) -> ZoneError {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_fifo() {
        " (a FIFO)"
    } else if kind.is_socket() {
        " (a socket)"
    } else if kind.is_char_device() || kind.is_block_device() {
        " (a device)"
    } else {
        ""
    };
    ZoneError {
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        message: format!("not a regular file{what}; skipped"),
    }
}

/// Parses a file; on success also returns the line:column of the `zone` value.
fn parse_inner(path: &Path, text: &str) -> Result<(Zone, (usize, usize)), Vec<ZoneError>> {
    let mut cx = Cx {
        path,
        text,
        newlines: OnceCell::new(),
        errors: Vec::new(),
    };
    let raw: RawZone = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.error(&span, e.message().trim_end());
            return Err(cx.errors);
        }
    };
    let zone_pos;
    let apex = match &raw.zone {
        None => {
            zone_pos = (1, 1);
            cx.error(
                &(0..0),
                "missing required key `zone` (the zone's apex, e.g. zone = \"svc.example\")",
            );
            None
        }
        Some(z) => {
            // One position on the success path: scan rather than index the file.
            zone_pos = cx.line_col_scan(z.span().start);
            match parse_apex(z.get_ref()) {
                Ok(apex) => Some(apex),
                Err(msg) => {
                    cx.error(&z.span(), msg);
                    None
                }
            }
        }
    };
    let zone = cx.build(raw, apex.as_ref());
    // Conflicts are found after the fact; report in file order regardless.
    cx.errors.sort_by_key(|e| (e.line, e.column));
    match zone {
        Some(zone) if cx.errors.is_empty() => Ok((zone, zone_pos)),
        // Every path that yields no zone records why; never return an empty error list.
        None if cx.errors.is_empty() => {
            cx.error(&(0..0), "the zone could not be built (internal error)");
            Err(cx.errors)
        }
        _ => Err(cx.errors),
    }
}

pub(crate) fn parse_apex(s: &str) -> Result<Name, String> {
    let trimmed = s.strip_suffix('.').unwrap_or(s);
    if trimmed.is_empty() {
        return Err(format!(
            "zone \"{s}\" is the root; give the apex this file serves, e.g. \"svc.example\""
        ));
    }
    // The apex is always absolute, with or without the trailing dot.
    let mut name = Name::from_ascii(trimmed)
        .map_err(|e| format!("zone \"{s}\" is not a valid domain name: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// Collects errors with their positions in one file.
struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
    /// Byte offsets of every '\n' in `text`, built at the first error so that
    /// many errors in a large file don't each rescan it from the start.
    newlines: OnceCell<Vec<usize>>,
    errors: Vec<ZoneError>,
}

impl Cx<'_> {
    /// `offset` clamped to the text and moved back to a char boundary.
    fn clamp(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }

    /// 1-based line and column (in characters) of a byte offset, found in
    /// the file's newline index (built on first use).
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = self.clamp(offset);
        let newlines = self.newlines.get_or_init(|| {
            self.text
                .bytes()
                .enumerate()
                .filter_map(|(i, b)| (b == b'\n').then_some(i))
                .collect()
        });
        // Newlines before `offset`.
        let before = newlines.partition_point(|&i| i < offset);
        let line_start = before.checked_sub(1).map_or(0, |k| newlines[k] + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        (before + 1, column)
    }

    /// Like [`Cx::line_col`], but scanning the text up to `offset` instead of
    /// building the index: for the one position wanted when there are no errors.
    fn line_col_scan(&self, offset: usize) -> (usize, usize) {
        let offset = self.clamp(offset);
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.line_col(span.start).0
    }

    fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, column) = self.line_col(span.start);
        self.errors.push(ZoneError {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Checks an integer against a range, reporting at its value.
    fn int(&mut self, what: &str, v: &Spanned<i64>, min: i64, max: i64) -> Option<i64> {
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            Some(n)
        } else {
            self.error(
                &v.span(),
                format!("{what} {n} is out of range ({min}..={max})"),
            );
            None
        }
    }

    fn u16_or(&mut self, what: &str, v: Option<&Spanned<i64>>, min: i64, default: u16) -> u16 {
        match v {
            None => default,
            Some(v) => self
                .int(what, v, min, i64::from(u16::MAX))
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(default),
        }
    }

    fn u32_or(&mut self, what: &str, v: Option<&Spanned<i64>>, max: i64, default: u32) -> u32 {
        match v {
            None => default,
            Some(v) => self
                .int(what, v, 0, max)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(default),
        }
    }

    /// Resolves a name: relative ones go under the apex (unknown if the apex
    /// is bad, in which case `None` is returned without a further error).
    fn name(&mut self, what: &str, v: &Spanned<String>, apex: Option<&Name>) -> Option<Name> {
        let s = v.get_ref();
        let parsed = if s.is_empty() {
            Err(format!("{what} must not be empty"))
        } else {
            Name::from_ascii(s)
                .map_err(|e| format!("{what} \"{s}\" is not a valid domain name: {e}"))
        };
        let name = match parsed {
            Ok(name) => name,
            Err(msg) => {
                self.error(&v.span(), msg);
                return None;
            }
        };
        if name.is_fqdn() {
            return Some(name);
        }
        let apex = apex?;
        match name.append_domain(apex) {
            Ok(name) => Some(name),
            Err(e) => {
                self.error(
                    &v.span(),
                    format!("{what} \"{s}\" is too long under the zone: {e}"),
                );
                None
            }
        }
    }

    fn addresses(&mut self, owner: &str, v: &Spanned<OneOrMany>) -> Vec<IpAddr> {
        let items: Vec<(&str, Range<usize>)> = match v.get_ref() {
            OneOrMany::One(s) => vec![(s.as_str(), v.span())],
            OneOrMany::Many(list) => {
                if list.is_empty() {
                    self.error(
                        &v.span(),
                        format!("{owner} has an empty address list; give at least one address"),
                    );
                }
                list.iter()
                    .map(|s| (s.get_ref().as_str(), s.span()))
                    .collect()
            }
        };
        let mut out: Vec<IpAddr> = Vec::new();
        for (s, span) in items {
            match s.trim().parse::<IpAddr>() {
                Ok(ip) if out.contains(&ip) => {
                    self.error(&span, format!("address {ip} is listed twice for {owner}"));
                }
                Ok(ip) => out.push(ip),
                Err(_) => self.error(&span, format!("invalid IP address \"{s}\"")),
            }
        }
        out
    }

    fn tags(&mut self, owner: &str, tags: Option<&Vec<Spanned<String>>>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for tag in tags.into_iter().flatten() {
            let t = tag.get_ref();
            if let Err(msg) = check_label("tag", t) {
                self.error(&tag.span(), msg);
            } else if out.iter().any(|o| o.eq_ignore_ascii_case(t)) {
                self.error(
                    &tag.span(),
                    format!("tag \"{t}\" is listed twice for {owner}"),
                );
            } else {
                out.push(t.clone());
            }
        }
        out
    }

    /// A health check, validated by the rules `health` shares with
    /// registrations; each problem points at its key's value.
    fn check(&mut self, owner: &str, v: &Spanned<RawCheck>) -> Option<Check> {
        let raw = v.get_ref();
        let input = CheckInput {
            tcp: raw.tcp.as_ref().map(|t| *t.get_ref()),
            http: raw.http.as_ref().map(|h| h.get_ref().as_str()),
            interval: raw.interval.as_ref().map(|i| *i.get_ref()),
            timeout: raw.timeout.as_ref().map(|t| *t.get_ref()),
            failures: raw.failures.as_ref().map(|f| *f.get_ref()),
            successes: raw.successes.as_ref().map(|s| *s.get_ref()),
        };
        match validate_check(&input) {
            Ok(check) => Some(check),
            Err(errors) => {
                for (field, message) in errors {
                    let span = match field {
                        CheckField::Whole => None,
                        CheckField::Tcp => raw.tcp.as_ref().map(Spanned::span),
                        CheckField::Http => raw.http.as_ref().map(Spanned::span),
                        CheckField::Interval => raw.interval.as_ref().map(Spanned::span),
                        CheckField::Timeout => raw.timeout.as_ref().map(Spanned::span),
                        CheckField::Failures => raw.failures.as_ref().map(Spanned::span),
                        CheckField::Successes => raw.successes.as_ref().map(Spanned::span),
                    };
                    self.error(
                        &span.unwrap_or_else(|| v.span()),
                        format!("check of {owner}: {message}"),
                    );
                }
                None
            }
        }
    }

    /// DNS-SD metadata: each `key=value` becomes one TXT string (RFC 6763
    /// section 6), so keys are checked by [`check_metadata`].
    fn metadata(&mut self, owner: &str, raw: Option<&Entries<String>>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (key, value) in raw.iter().flat_map(|e| e.0.iter()) {
            let (k, v) = (key.get_ref(), value.get_ref());
            if let Err(msg) = check_metadata(k, v) {
                let span = if msg.contains("bytes") {
                    value.span()
                } else {
                    key.span()
                };
                self.error(&span, format!("{owner}: {msg}"));
            } else if out.iter().any(|(o, _)| o.eq_ignore_ascii_case(k)) {
                self.error(
                    &key.span(),
                    format!(
                        "{owner}: metadata key \"{k}\" is given twice (keys are case-insensitive)"
                    ),
                );
            } else {
                out.push((k.clone(), v.clone()));
            }
        }
        if let (Err(msg), Some(first)) = (
            check_metadata_total(out.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            raw.and_then(|e| e.0.first()),
        ) {
            self.error(&first.0.span(), format!("{owner}: {msg}"));
        }
        out
    }

    /// Turns the raw file into a zone, recording every problem. Returns `None`
    /// when the zone can't be built at all (bad apex); other errors are only
    /// recorded, and the caller discards the zone if there are any.
    fn build(&mut self, raw: RawZone, apex: Option<&Name>) -> Option<Zone> {
        let ttl = match &raw.ttl {
            None => DEFAULT_TTL,
            Some(v) => self
                .int("ttl", v, 0, MAX_TTL)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(DEFAULT_TTL),
        };

        let mut nameservers: Vec<Name> = Vec::new();
        for ns in raw.nameservers.iter().flatten() {
            if let Some(name) = self.name("nameserver", ns, apex) {
                if nameservers.contains(&name) {
                    self.error(&ns.span(), format!("nameserver \"{name}\" is listed twice"));
                } else {
                    nameservers.push(name);
                }
            }
        }

        let soa = self.soa(raw.soa.as_ref(), apex, &nameservers, ttl);

        // Every name the zone's records own, for conflict checks: the owner and
        // the line it was first given on.
        let mut hosts: Vec<Host> = Vec::new();
        // Name compares and hashes case-insensitively.
        let mut host_lines: Seen<Name, (Name, Range<usize>)> =
            Seen::with_capacity(raw.hosts.as_ref().map_or(0, |h| h.0.len()));
        for (key, value) in raw.hosts.iter().flat_map(|e| e.0.iter()) {
            let k = key.get_ref();
            let addresses = self.addresses(&format!("host \"{k}\""), value);
            let Some(name) = self.name("host name", key, apex) else {
                continue;
            };
            let Some(apex) = apex else { continue };
            if !apex.zone_of(&name) {
                self.error(
                    &key.span(),
                    format!("host \"{name}\" is not under the zone \"{apex}\""),
                );
                continue;
            }
            // Labels below the apex must be plain host-name labels.
            // (iter, not num_labels, which does not count a '*' label.)
            let below = name.iter().count().saturating_sub(apex.iter().count());
            let bad = name
                .iter()
                .take(below)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .find_map(|l| check_label("host name label", &l).err());
            if let Some(msg) = bad {
                self.error(&key.span(), format!("host \"{k}\": {msg}"));
                continue;
            }
            if let Some((_, first)) = host_lines.get(&name) {
                let first_line = self.line(first);
                self.error(
                    &key.span(),
                    format!("host \"{name}\" is given twice (first at line {first_line})"),
                );
                continue;
            }
            host_lines.insert(name.clone(), (name.clone(), key.span()));
            hosts.push(Host { name, addresses });
        }

        let raw_services = raw.services.as_deref().unwrap_or_default();
        let instance_count = raw_services
            .iter()
            .map(|s| s.get_ref().instances.as_ref().map_or(0, Vec::len))
            .sum();
        let mut services: Vec<Service> = Vec::with_capacity(raw_services.len());
        // (service name, protocol, span of the name), by (lowercased name, protocol).
        let mut service_keys: ServiceKeys = Seen::with_capacity(raw_services.len());
        // (instance name, span of the name), by lowercased name.
        let mut instance_names: InstanceNames = Seen::with_capacity(instance_count);
        for svc in raw_services {
            if let Some(service) = self.service(svc, apex, &mut service_keys, &mut instance_names) {
                services.push(service);
            }
        }

        self.conflicts(apex, &host_lines, &service_keys, &instance_names);

        Some(Zone {
            apex: apex?.clone(),
            ttl,
            nameservers,
            soa: soa?,
            hosts,
            services,
        })
    }

    fn soa(
        &mut self,
        raw: Option<&RawSoa>,
        apex: Option<&Name>,
        nameservers: &[Name],
        ttl: u32,
    ) -> Option<Soa> {
        let mname = match raw.and_then(|r| r.mname.as_ref()) {
            Some(v) => self.name("soa mname", v, apex),
            None => nameservers.first().cloned().or_else(|| apex.cloned()),
        };
        let rname = match raw.and_then(|r| r.rname.as_ref()) {
            Some(v) => self.rname(v, apex),
            None => apex.and_then(|a| {
                let rname = Name::from_ascii("hostmaster").ok()?.append_domain(a).ok();
                if rname.is_none() {
                    self.error(
                        &(0..0),
                        format!("the default SOA rname hostmaster.{a} is longer than 255 bytes; set rname in [soa]"),
                    );
                }
                rname
            }),
        };
        let get = |f: fn(&RawSoa) -> &Option<Spanned<i64>>| raw.and_then(|r| f(r).as_ref());
        let refresh = self.u32_or(
            "soa refresh",
            get(|r| &r.refresh),
            i64::from(u32::MAX),
            DEFAULT_REFRESH,
        );
        let retry = self.u32_or(
            "soa retry",
            get(|r| &r.retry),
            i64::from(u32::MAX),
            DEFAULT_RETRY,
        );
        let expire = self.u32_or(
            "soa expire",
            get(|r| &r.expire),
            i64::from(u32::MAX),
            DEFAULT_EXPIRE,
        );
        // `minimum` caps negative caching, so it is a TTL (RFC 2308) and has its range.
        let minimum = self.u32_or("soa minimum", get(|r| &r.minimum), MAX_TTL, ttl);
        Some(Soa {
            mname: mname?,
            rname: rname?,
            refresh,
            retry,
            expire,
            minimum,
        })
    }

    /// The SOA mailbox. Besides DNS form ("hostmaster" relative, or
    /// "hostmaster.example.com." absolute) the e-mail form "admin@example.com"
    /// is accepted and converted to admin.example.com.; a '.' in its local part
    /// stays inside the first label, as RFC 1035 requires.
    fn rname(&mut self, v: &Spanned<String>, apex: Option<&Name>) -> Option<Name> {
        let s = v.get_ref();
        let Some((local, domain)) = s.rsplit_once('@') else {
            return self.name("soa rname", v, apex);
        };
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        let built = Name::from_labels([local.as_bytes()]).and_then(|l| {
            let d = Name::from_ascii(domain)?;
            l.append_domain(&d)
        });
        match built {
            Ok(name) if !local.is_empty() && !domain.is_empty() => Some(name),
            Ok(_) | Err(_) => {
                self.error(
                    &v.span(),
                    format!("soa rname \"{s}\" is not a valid mailbox (e.g. \"hostmaster\" or \"admin@example.com\")"),
                );
                None
            }
        }
    }

    fn service<'r>(
        &mut self,
        svc: &'r Spanned<RawService>,
        apex: Option<&Name>,
        service_keys: &mut ServiceKeys<'r>,
        instance_names: &mut InstanceNames<'r>,
    ) -> Option<Service> {
        let raw = svc.get_ref();
        let name = match &raw.name {
            None => {
                self.error(&svc.span(), "service is missing required key `name`");
                None
            }
            Some(n) => match check_label("service name", n.get_ref())
                .and_then(|()| apex.map_or(Ok(()), |a| check_fits("service name", n.get_ref(), a)))
            {
                Ok(()) => Some(n),
                Err(msg) => {
                    self.error(&n.span(), msg);
                    None
                }
            },
        };
        let protocol = match &raw.protocol {
            None => Some(Protocol::Tcp),
            Some(p) => match p.get_ref().to_ascii_lowercase().as_str() {
                "tcp" => Some(Protocol::Tcp),
                "udp" => Some(Protocol::Udp),
                _ => {
                    self.error(
                        &p.span(),
                        format!(
                            "unknown protocol \"{}\" (expected \"tcp\" or \"udp\")",
                            p.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let port = raw
            .port
            .as_ref()
            .and_then(|p| self.int("port", p, 1, i64::from(u16::MAX)))
            .and_then(|n| u16::try_from(n).ok());
        let label = name.map_or("?", |n| n.get_ref().as_str()).to_owned();
        let owner = format!("service \"{label}\"");
        let tags = self.tags(&owner, raw.tags.as_ref());
        let check = raw.check.as_ref().map(|c| self.check(&owner, c));

        if let (Some(n), Some(protocol)) = (name, protocol) {
            let key = n.get_ref();
            let folded = (fold(key), protocol);
            if let Some((_, _, first)) = service_keys.get(&folded) {
                let first_line = self.line(first);
                self.error(
                    &n.span(),
                    format!(
                        "service \"{label}\" ({}) is defined twice (first at line {first_line})",
                        protocol.as_str()
                    ),
                );
            } else {
                service_keys.insert(folded, (key, protocol, n.span()));
            }
        }

        let mut instances = Vec::new();
        for inst in raw.instances.iter().flatten() {
            let service_port = raw.port.as_ref().map(|_| port);
            if let Some(i) = self.instance(inst, &label, service_port, apex, instance_names) {
                instances.push(i);
            }
        }
        let max_answers = raw
            .max_answers
            .as_ref()
            .and_then(|m| self.int("max_answers", m, 1, i64::from(u16::MAX)))
            .and_then(|n| u16::try_from(n).ok());
        Some(Service {
            name: name?.get_ref().clone(),
            protocol: protocol?,
            tags,
            check: check.flatten(),
            instances,
            max_answers,
        })
    }

    fn instance<'r>(
        &mut self,
        inst: &'r Spanned<RawInstance>,
        service: &str,
        // None: the service has no port; Some(None): it has an invalid one.
        service_port: Option<Option<u16>>,
        apex: Option<&Name>,
        instance_names: &mut InstanceNames<'r>,
    ) -> Option<Instance> {
        let raw = inst.get_ref();
        let name = match &raw.name {
            None => {
                self.error(
                    &inst.span(),
                    format!("instance of service \"{service}\" is missing required key `name`"),
                );
                None
            }
            Some(n) => match check_label("instance name", n.get_ref())
                .and_then(|()| apex.map_or(Ok(()), |a| check_fits("instance name", n.get_ref(), a)))
            {
                Ok(()) => {
                    let key = n.get_ref();
                    if let Some((_, first)) = instance_names.get(fold(key).as_ref()) {
                        let first_line = self.line(first);
                        self.error(
                            &n.span(),
                            format!(
                                "instance name \"{}\" is used twice (first at line {first_line})",
                                n.get_ref()
                            ),
                        );
                    } else {
                        instance_names.insert(fold(key), (key, n.span()));
                    }
                    Some(n.get_ref().clone())
                }
                Err(msg) => {
                    self.error(&n.span(), msg);
                    None
                }
            },
        };
        let owner = format!("instance \"{}\"", name.as_deref().unwrap_or("?"));

        let endpoint = match (&raw.address, &raw.target) {
            (Some(_), Some(t)) => {
                self.error(
                    &t.span(),
                    format!("{owner} has both `address` and `target`; give only one"),
                );
                None
            }
            (None, None) => {
                self.error(
                    &inst.span(),
                    format!(
                        "{owner} needs an `address` (its own host) or a `target` (a name elsewhere)"
                    ),
                );
                None
            }
            (Some(a), None) => Some(Endpoint::Addresses(self.addresses(&owner, a))),
            (None, Some(t)) => self.name("target", t, apex).map(Endpoint::Target),
        };

        let port = match &raw.port {
            Some(p) => self
                .int("port", p, 1, i64::from(u16::MAX))
                .and_then(|n| u16::try_from(n).ok()),
            // The service's port was invalid: already reported there.
            None if service_port.is_some() => service_port.flatten(),
            None => {
                self.error(
                    &inst.span(),
                    format!("{owner} has no port: set `port` here or on service \"{service}\""),
                );
                None
            }
        };
        let weight = self.u16_or("weight", raw.weight.as_ref(), 0, 1);
        let priority = self.u16_or("priority", raw.priority.as_ref(), 0, 0);
        let tags = self.tags(&owner, raw.tags.as_ref());
        // A target is a name elsewhere: nothing here to probe.
        let check = match (&raw.check, &raw.target) {
            (Some(c), Some(_)) => {
                self.error(
                    &c.span(),
                    format!("{owner} has a `target` and no address: there is nothing to check"),
                );
                None
            }
            (Some(c), None) => self.check(&owner, c),
            (None, _) => None,
        };
        let metadata = self.metadata(&owner, raw.metadata.as_ref());
        Some(Instance {
            name: name?,
            endpoint: endpoint?,
            port: port?,
            weight,
            priority,
            check,
            tags,
            metadata,
        })
    }

    /// Names owned twice: hosts vs services vs instances. Instance names are
    /// host names in the zone; a service owns `<service>.<zone>` and the names
    /// below it (its tags live there), so a host may not be at or under it.
    ///
    /// Every check is a hash lookup by a lowercased label (service and
    /// instance names are single labels, and every host is under the apex).
    /// The errors are pushed in another order than a scan per service would
    /// push them, but never two at the same place, and the caller sorts them
    /// by place.
    fn conflicts(
        &mut self,
        apex: Option<&Name>,
        hosts: &Seen<Name, (Name, Range<usize>)>,
        services: &ServiceKeys<'_>,
        instances: &InstanceNames<'_>,
    ) {
        let Some(apex) = apex else { return };
        let under = |label: &str| {
            Name::from_ascii(label)
                .ok()
                .and_then(|n| n.append_domain(apex).ok())
        };
        // Each service name once, at its first definition (a service defined
        // for both tcp and udp owns its name once), with `<service>.<zone>`;
        // by lowercased name. `None`: that name is invalid (too long) and so
        // owns nothing.
        let mut service_names: Vec<(&str, &Range<usize>, Name)> = Vec::new();
        let mut by_label: HashMap<Cow<'_, str>, Option<usize>> =
            HashMap::with_capacity(services.items.len());
        for (svc, _, svc_span) in &services.items {
            let Entry::Vacant(entry) = by_label.entry(fold(svc)) else {
                continue;
            };
            let svc_name = under(svc);
            entry.insert(svc_name.as_ref().map(|_| service_names.len()));
            if let Some(svc_name) = svc_name {
                service_names.push((svc, svc_span, svc_name));
            }
        }

        // The label directly below the apex, lowercased, of a host under it.
        let apex_labels = apex.iter().count();
        let label_below_apex = |host: &Name| -> Option<(usize, String)> {
            let below = host.iter().count().checked_sub(apex_labels)?;
            let label = host.iter().nth(below.checked_sub(1)?)?;
            Some((below, String::from_utf8_lossy(label).to_ascii_lowercase()))
        };

        // A host at or under `<service>.<zone>`: its label below the apex is
        // the service's name. Hosts exactly one label below the apex, by that
        // label, for the instance check below.
        let mut host_by_label: HashMap<String, &Range<usize>> = HashMap::new();
        for (host, host_span) in &hosts.items {
            let Some((below, label)) = label_below_apex(host) else {
                continue;
            };
            if let Some(&Some(k)) = by_label.get(label.as_str()) {
                let (svc, svc_span, _) = &service_names[k];
                let line = self.line(svc_span);
                self.error(
                    host_span,
                    format!(
                        "host \"{host}\" is at or under the name of service \"{svc}\" (line {line}); rename one of them"
                    ),
                );
            }
            if below == 1 {
                // Hosts are distinct names, so each label is here once.
                host_by_label.insert(label, host_span);
            }
        }

        for (svc, svc_span, svc_name) in &service_names {
            if let Some((inst, inst_span)) = instances.get(fold(svc).as_ref()) {
                let line = self.line(svc_span);
                self.error(
                    inst_span,
                    format!(
                        "instance name \"{inst}\" is also the name of service \"{svc}\" (line {line}); both would own {svc_name}"
                    ),
                );
            }
        }

        // An instance named like a host: `<instance>.<zone>` is that host.
        if host_by_label.is_empty() {
            return;
        }
        for (inst, inst_span) in &instances.items {
            let Some(&host_span) = host_by_label.get(fold(inst).as_ref()) else {
                continue;
            };
            let Some(inst_name) = under(inst) else {
                continue;
            };
            let line = self.line(host_span);
            self.error(
                inst_span,
                format!(
                    "instance name \"{inst}\" is also a host (line {line}); both would own addresses at {inst_name}"
                ),
            );
        }
    }
}

/// A name with its ASCII letters lowercased: the key that service and
/// instance names are compared by. Borrowed when already lowercase.
fn fold(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Things named in a file, in file order, with an index from a
/// case-insensitive key to the first one given under it.
struct Seen<K, T> {
    items: Vec<T>,
    index: HashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq, T> Seen<K, T> {
    /// Room for `n` items without rehashing.
    fn with_capacity(n: usize) -> Self {
        Seen {
            items: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
        }
    }

    /// The first item given under `key`.
    fn get<Q>(&self, key: &Q) -> Option<&T>
    where
        K: Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.index.get(key).map(|&i| &self.items[i])
    }

    /// Adds an item under a key not given before (check with [`Seen::get`]).
    fn insert(&mut self, key: K, item: T) {
        debug_assert!(!self.index.contains_key(&key));
        self.index.insert(key, self.items.len());
        self.items.push(item);
    }
}

/// (service name, protocol, span of the name) by (lowercased name, protocol).
type ServiceKeys<'r> = Seen<(Cow<'r, str>, Protocol), (&'r str, Protocol, Range<usize>)>;

/// (instance name, span of the name) by lowercased name.
type InstanceNames<'r> = Seen<Cow<'r, str>, (&'r str, Range<usize>)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn ok(text: &str) -> Zone {
        match parse(Path::new("z.toml"), text) {
            Ok(zone) => zone,
            Err(errors) => panic!("unexpected errors: {errors:#?}"),
        }
    }

    /// The errors as `line:column: message` strings.
    fn errs(text: &str) -> Vec<String> {
        match parse(Path::new("z.toml"), text) {
            Ok(zone) => panic!("expected errors, got {zone:#?}"),
            Err(errors) => errors
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect(),
        }
    }

    #[test]
    fn metadata_beyond_a_dns_sd_txt_record_is_an_error() {
        let mut text = String::from(
            "zone = \"a.test\"\n[[services]]\nname = \"web\"\nport = 80\n[[services.instances]]\nname = \"w\"\naddress = \"10.0.0.1\"\n[services.instances.metadata]\n",
        );
        for i in 0..40 {
            text.push_str(&format!("k{i} = \"{}\"\n", "v".repeat(240)));
        }
        let e = one_err(&text);
        assert!(e.starts_with("9:1: ") && e.contains("at most 8900"), "{e}");
    }

    #[test]
    fn a_63_character_service_name_is_an_error() {
        let name = "s".repeat(63);
        let text = format!("zone = \"a.test\"\n[[services]]\nname = \"{name}\"\nport = 80\n");
        assert!(
            one_err(&text).starts_with("3:8: service name"),
            "{}",
            one_err(&text)
        );
        let ok = format!(
            "zone = \"a.test\"\n[[services]]\nname = \"{}\"\nport = 80\n",
            &name[..62]
        );
        parse(Path::new("z.toml"), &ok).unwrap();
    }

    #[test]
    fn names_that_would_not_fit_in_255_bytes_are_errors() {
        // A 245-byte apex leaves room for neither `_webx._tcp.` nor `instance-12.`.
        let apex = vec!["a".repeat(60); 4].join(".");
        let text = format!(
            "zone = \"{apex}\"\n[[services]]\nname = \"webx\"\nport = 80\n\
             [[services.instances]]\nname = \"instance-12\"\naddress = \"10.0.0.1\"\n"
        );
        let errors = errs(&text);
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("3:8: service name \"webx\" is too long")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("6:8: instance name \"instance-12\" is too long")),
            "{errors:?}"
        );
    }

    fn one_err(text: &str) -> String {
        let e = errs(text);
        assert_eq!(e.len(), 1, "{e:#?}");
        e[0].clone()
    }

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/svc.example.toml")
    }

    fn inst(name: &str, endpoint: Endpoint, port: u16, weight: u16, priority: u16) -> Instance {
        Instance {
            name: name.into(),
            endpoint,
            port,
            weight,
            priority,
            check: None,
            tags: vec![],
            metadata: vec![],
        }
    }

    fn addrs(list: &[&str]) -> Endpoint {
        Endpoint::Addresses(list.iter().map(|s| ip(s)).collect())
    }

    #[test]
    fn example_file_parses_to_expected_model() {
        let zone = load_file(&example_path()).expect("example zone loads");
        let expected = Zone {
            apex: name("svc.example."),
            ttl: 30,
            nameservers: vec![name("ns1.svc.example.")],
            soa: Soa {
                mname: name("ns1.svc.example."),
                rname: name("hostmaster.svc.example."),
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minimum: 30,
            },
            hosts: vec![
                Host {
                    name: name("ns1.svc.example."),
                    addresses: vec![ip("127.0.0.1")],
                },
                Host {
                    name: name("db.svc.example."),
                    addresses: vec![ip("10.0.0.21"), ip("fd00::21")],
                },
                Host {
                    name: name("cache.svc.example."),
                    addresses: vec![ip("10.0.0.31")],
                },
            ],
            services: vec![
                Service {
                    name: "web".into(),
                    protocol: Protocol::Tcp,
                    tags: vec!["http".into()],
                    check: None,
                    instances: vec![
                        Instance {
                            metadata: vec![
                                ("version".into(), "2".into()),
                                ("path".into(), "/".into()),
                            ],
                            ..inst("web-1", addrs(&["10.0.0.11", "fd00::11"]), 8080, 1, 0)
                        },
                        inst("web-2", addrs(&["10.0.0.12", "fd00::12"]), 8080, 20, 0),
                        inst("web-3", addrs(&["10.0.0.13"]), 8080, 1, 1),
                    ],
                    max_answers: None,
                },
                Service {
                    name: "api".into(),
                    protocol: Protocol::Tcp,
                    tags: vec![],
                    check: None,
                    instances: vec![
                        inst("api-1", addrs(&["10.0.0.41"]), 9000, 1, 0),
                        inst("api-2", addrs(&["10.0.0.42"]), 9001, 1, 0),
                    ],
                    max_answers: None,
                },
                Service {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    tags: vec![],
                    check: None,
                    instances: vec![inst("resolver-1", addrs(&["10.0.0.53"]), 53, 1, 0)],
                    max_answers: None,
                },
                Service {
                    name: "mail".into(),
                    protocol: Protocol::Tcp,
                    tags: vec![],
                    check: None,
                    instances: vec![inst(
                        "mx-external",
                        Endpoint::Target(name("mx.example.net.")),
                        25,
                        1,
                        0,
                    )],
                    max_answers: None,
                },
            ],
        };
        assert_eq!(zone, expected);
        assert!(zone.apex.is_fqdn());
    }

    #[test]
    fn defaults() {
        let zone = ok("zone = \"a.test\"\n");
        assert_eq!(zone.apex, name("a.test."));
        assert!(zone.apex.is_fqdn());
        assert_eq!(zone.ttl, DEFAULT_TTL);
        assert!(zone.nameservers.is_empty());
        assert!(zone.hosts.is_empty() && zone.services.is_empty());
        assert_eq!(
            zone.soa,
            Soa {
                mname: name("a.test."),
                rname: name("hostmaster.a.test."),
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minimum: DEFAULT_TTL,
            }
        );

        let zone = ok(r#"
zone = "a.test."
ttl = 120
[[services]]
name = "x"
port = 1
[[services.instances]]
name = "x-1"
address = "::1"
"#);
        assert_eq!(zone.ttl, 120);
        assert_eq!(zone.soa.minimum, 120);
        let s = &zone.services[0];
        assert_eq!(s.protocol, Protocol::Tcp);
        let i = &s.instances[0];
        assert_eq!((i.port, i.weight, i.priority), (1, 1, 0));
    }

    #[test]
    fn soa_fields_and_rname_forms() {
        let zone = ok(r#"
zone = "a.test"
ttl = 60
nameservers = ["ns.other.test.", "ns2"]
[soa]
rname = "admin@Example.com"
refresh = 1
retry = 2
expire = 3
minimum = 4
"#);
        assert_eq!(
            zone.nameservers,
            vec![name("ns.other.test."), name("ns2.a.test.")]
        );
        assert_eq!(zone.soa.mname, name("ns.other.test."));
        assert!(zone.soa.rname.eq_case(&name("admin.Example.com.")));
        assert_eq!(
            (
                zone.soa.refresh,
                zone.soa.retry,
                zone.soa.expire,
                zone.soa.minimum
            ),
            (1, 2, 3, 4)
        );

        // A dot in the local part stays inside the first label.
        let zone = ok("zone = \"a.test\"\n[soa]\nrname = \"first.last@example.com\"\n");
        assert_eq!(zone.soa.rname, name("first\\.last.example.com."));
        assert_eq!(zone.soa.rname.iter().count(), 3);

        let zone = ok("zone = \"a.test\"\n[soa]\nrname = \"hm\"\nmname = \"x.elsewhere.\"\n");
        assert_eq!(zone.soa.rname, name("hm.a.test."));
        assert_eq!(zone.soa.mname, name("x.elsewhere."));

        let zone = ok("zone = \"a.test\"\n[soa]\nrname = \"hostmaster.example.com.\"\n");
        assert_eq!(zone.soa.rname, name("hostmaster.example.com."));

        assert_eq!(
            one_err("zone = \"a.test\"\n[soa]\nrname = \"@example.com\"\n"),
            "3:9: soa rname \"@example.com\" is not a valid mailbox (e.g. \"hostmaster\" or \"admin@example.com\")"
        );
    }

    #[test]
    fn relative_and_absolute_names_keep_case() {
        let zone = ok(r#"
zone = "Svc.Example"
nameservers = ["NS1", "ns.Other.net."]
[hosts]
"db.EU" = "10.0.0.1"
"abs.svc.example." = "10.0.0.2"
"svc.example." = "10.0.0.3"
[[services]]
name = "Web"
port = 80
[[services.instances]]
name = "Web-1"
target = "Back"
[[services.instances]]
name = "web-2"
target = "far.away."
"#);
        assert!(zone.apex.eq_case(&name("Svc.Example.")));
        assert!(zone.nameservers[0].eq_case(&name("NS1.Svc.Example.")));
        assert!(zone.nameservers[1].eq_case(&name("ns.Other.net.")));
        assert!(zone.hosts[0].name.eq_case(&name("db.EU.Svc.Example.")));
        assert!(zone.hosts[1].name.eq_case(&name("abs.svc.example.")));
        assert_eq!(zone.hosts[2].name, name("svc.example."));
        assert!(zone.hosts.iter().all(|h| h.name.is_fqdn()));
        let s = &zone.services[0];
        assert_eq!(s.name, "Web");
        assert_eq!(s.instances[0].name, "Web-1");
        match &s.instances[0].endpoint {
            Endpoint::Target(t) => assert!(t.eq_case(&name("Back.Svc.Example."))),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.instances[1].endpoint, Endpoint::Target(name("far.away.")));
    }

    #[test]
    fn hosts_keep_file_order() {
        let zone = ok(
            "zone = \"a.test\"\n[hosts]\nzz = \"10.0.0.1\"\naa = \"10.0.0.2\"\nmm = \"10.0.0.3\"\n",
        );
        let names: Vec<String> = zone.hosts.iter().map(|h| h.name.to_string()).collect();
        assert_eq!(names, ["zz.a.test.", "aa.a.test.", "mm.a.test."]);
    }

    #[test]
    fn syntax_error_has_position() {
        assert_eq!(
            one_err("zone = \"a.test\"\nttl = = 3\n"),
            "2:7: extra `=`, expected nothing"
        );
    }

    #[test]
    fn unknown_keys_point_at_the_key() {
        assert!(one_err("zone = \"a.test\"\nttls = 3\n").starts_with("2:1: unknown field `ttls`"));
        assert!(
            one_err("zone = \"a.test\"\n[[services]]\nname = \"w\"\nport = 1\n[[services.instances]]\nname = \"w-1\"\n  adress = \"10.0.0.1\"\n")
                .starts_with("7:3: unknown field `adress`")
        );
        assert!(
            one_err("zone = \"a.test\"\n[soa]\nserial = 3\n")
                .starts_with("3:1: unknown field `serial`")
        );
    }

    #[test]
    fn wrong_type_is_reported() {
        assert_eq!(
            one_err("zone = \"a.test\"\n[hosts]\nx = 3\n"),
            "3:5: invalid type: integer `3`, expected an address string or a list of address strings"
        );
    }

    #[test]
    fn missing_required_keys() {
        assert_eq!(
            one_err("ttl = 3\n"),
            "1:1: missing required key `zone` (the zone's apex, e.g. zone = \"svc.example\")"
        );
        assert_eq!(
            errs(
                "zone = \"a.test\"\n[[services]]\nport = 1\n[[services.instances]]\naddress = \"10.0.0.1\"\n"
            ),
            [
                "2:1: service is missing required key `name`",
                "4:1: instance of service \"?\" is missing required key `name`",
            ]
        );
    }

    #[test]
    fn bad_zone_apex() {
        assert!(one_err("zone = \".\"\n").starts_with("1:8: zone \".\" is the root"));
        assert!(one_err("zone = \"\"\n").starts_with("1:8: zone \"\" is the root"));
        assert!(
            one_err("zone = \"a..b\"\n")
                .starts_with("1:8: zone \"a..b\" is not a valid domain name")
        );
    }

    #[test]
    fn bad_addresses() {
        assert_eq!(
            errs(
                "zone = \"a.test\"\n[hosts]\nx = \"10.0.0.300\"\ny = [\"10.0.0.1\", \"fd00::zz\"]\nz = []\n"
            ),
            [
                "3:5: invalid IP address \"10.0.0.300\"",
                "4:18: invalid IP address \"fd00::zz\"",
                "5:5: host \"z\" has an empty address list; give at least one address",
            ]
        );
        assert_eq!(
            one_err(
                "zone = \"a.test\"\n[[services]]\nname = \"w\"\nport = 1\n[[services.instances]]\nname = \"w-1\"\naddress = []\n"
            ),
            "7:11: instance \"w-1\" has an empty address list; give at least one address"
        );
    }

    #[test]
    fn ports_ttl_weights_out_of_range() {
        let text = r#"zone = "a.test"
ttl = 2147483648
[[services]]
name = "w"
port = 0
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
port = 65536
weight = -1
priority = 70000
"#;
        assert_eq!(
            errs(text),
            [
                "2:7: ttl 2147483648 is out of range (0..=2147483647)",
                "5:8: port 0 is out of range (1..=65535)",
                "9:8: port 65536 is out of range (1..=65535)",
                "10:10: weight -1 is out of range (0..=65535)",
                "11:12: priority 70000 is out of range (0..=65535)",
            ]
        );
        // Extremes that are allowed.
        let zone = ok(
            "zone = \"a.test\"\nttl = 0\n[[services]]\nname = \"w\"\nport = 65535\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\nweight = 0\npriority = 65535\n",
        );
        let i = &zone.services[0].instances[0];
        assert_eq!(
            (zone.ttl, i.port, i.weight, i.priority),
            (0, 65535, 0, 65535)
        );
        assert_eq!(
            one_err("zone = \"a.test\"\nttl = -1\n"),
            "2:7: ttl -1 is out of range (0..=2147483647)"
        );
    }

    #[test]
    fn missing_port() {
        assert_eq!(
            one_err(
                "zone = \"a.test\"\n[[services]]\nname = \"w\"\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\n"
            ),
            "4:1: instance \"w-1\" has no port: set `port` here or on service \"w\""
        );
    }

    #[test]
    fn invalid_service_port_is_reported_once() {
        assert_eq!(
            one_err(
                "zone = \"a.test\"\n[[services]]\nname = \"w\"\nport = 0\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\n"
            ),
            "4:8: port 0 is out of range (1..=65535)"
        );
    }

    #[test]
    fn bad_protocol() {
        assert_eq!(
            one_err("zone = \"a.test\"\n[[services]]\nname = \"w\"\nprotocol = \"sctp\"\n"),
            "4:12: unknown protocol \"sctp\" (expected \"tcp\" or \"udp\")"
        );
    }

    #[test]
    fn bad_labels() {
        let text = r#"zone = "a.test"
[[services]]
name = "_web"
tags = ["ok", "", "a.b", "x_y"]
[[services]]
name = "-w"
[[services.instances]]
name = "w.1"
target = "x."
port = 1
"#;
        assert_eq!(
            errs(text),
            [
                "3:8: service name \"_web\" must not start with '_' (the underscore of SRV names is added automatically)",
                "4:15: tag must not be empty",
                "4:19: tag \"a.b\" must be a single DNS label, without '.'",
                "4:26: tag \"x_y\" contains '_'; only letters, digits and '-' are allowed",
                "6:8: service name \"-w\" must not start or end with '-'",
                "8:8: instance name \"w.1\" must be a single DNS label, without '.'",
            ]
        );
    }

    #[test]
    fn metadata_and_max_answers() {
        let zone = ok(r#"zone = "a.test"
[[services]]
name = "w"
port = 1
max_answers = 2
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
metadata = { version = "2", "Path Name" = "/a=b", empty = "" }
"#);
        let s = &zone.services[0];
        assert_eq!(s.max_answers, Some(2));
        assert_eq!(
            s.instances[0].metadata,
            [
                ("version".to_string(), "2".to_string()),
                ("Path Name".to_string(), "/a=b".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        assert_eq!(
            ok("zone = \"a.test\"\n[[services]]\nname = \"w\"\n").services[0].max_answers,
            None
        );

        let long = "x".repeat(253);
        let text = format!(
            r#"zone = "a.test"
[[services]]
name = "w"
port = 1
max_answers = 0
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
metadata = {{ "a=b" = "1", "" = "2", "é" = "3", key = "{long}", KEY = "4" }}
[[services.instances]]
name = "w-2"
address = "10.0.0.2"
metadata = {{ a = "1", A = "2" }}
"#
        );
        assert_eq!(
            errs(&text),
            [
                "5:15: max_answers 0 is out of range (1..=65535)",
                "9:14: instance \"w-1\": metadata key \"a=b\" contains '='; keys are printable ASCII without '='",
                "9:27: instance \"w-1\": metadata key must not be empty",
                "9:37: instance \"w-1\": metadata key \"é\" contains 'é'; keys are printable ASCII without '='",
                "9:54: instance \"w-1\": metadata \"key=...\" is 257 bytes long; a TXT string holds at most 255",
                "13:23: instance \"w-2\": metadata key \"A\" is given twice (keys are case-insensitive)",
            ]
        );
        assert!(
            one_err("zone = \"a.test\"\n[[services]]\nname = \"w\"\nport = 1\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\nmetadata = { v = 2 }\n")
                .starts_with("8:18: invalid type: integer `2`, expected a string")
        );
    }

    #[test]
    fn check_label_rules() {
        assert!(check_label("service name", "web").is_ok());
        assert!(check_label("service name", "a-1").is_ok());
        assert!(check_label("service name", "1a").is_ok());
        assert!(check_label("tag", &"a".repeat(63)).is_ok());
        assert!(
            check_label("tag", &"a".repeat(64))
                .unwrap_err()
                .contains("at most 63")
        );
        assert!(check_label("tag", "").is_err());
        assert!(check_label("tag", "a-").is_err());
        assert!(check_label("tag", "a b").is_err());
        assert!(check_label("tag", "é").is_err());
        assert!(
            check_label("service name", "_w")
                .unwrap_err()
                .contains("'_'")
        );
    }

    #[test]
    fn address_and_target_exclusive() {
        let text = r#"zone = "a.test"
[[services]]
name = "w"
port = 1
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
target = "x.test."
[[services.instances]]
name = "w-2"
"#;
        assert_eq!(
            errs(text),
            [
                "8:10: instance \"w-1\" has both `address` and `target`; give only one",
                "9:1: instance \"w-2\" needs an `address` (its own host) or a `target` (a name elsewhere)",
            ]
        );
    }

    #[test]
    fn health_checks_on_services_and_instances() {
        let zone = ok(r#"zone = "a.test"
[[services]]
name = "w"
port = 1
check = { tcp = true, interval = 0.5, failures = 1 }
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
[[services.instances]]
name = "w-2"
address = "10.0.0.2"
check = { http = "/healthz", interval = 10, timeout = 1.5, successes = 4 }
"#);
        let s = &zone.services[0];
        let c = s.check.as_ref().unwrap();
        assert_eq!(c.kind, crate::model::CheckKind::Tcp);
        assert_eq!(c.interval, std::time::Duration::from_millis(500));
        assert_eq!(c.timeout, std::time::Duration::from_millis(500));
        assert_eq!((c.failures, c.successes), (1, 2));
        assert_eq!(s.instances[0].check, None);
        let c = s.instances[1].check.as_ref().unwrap();
        assert_eq!(c.kind, crate::model::CheckKind::Http("/healthz".into()));
        assert_eq!(c.timeout, std::time::Duration::from_millis(1500));
        assert_eq!((c.failures, c.successes), (3, 4));
    }

    #[test]
    fn bad_health_checks_point_at_the_value() {
        let text = r#"zone = "a.test"
[[services]]
name = "w"
port = 1
check = { tcp = true, http = "/" }
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
check = { http = "healthz", interval = 0, failures = 0 }
[[services.instances]]
name = "w-2"
target = "x.test."
check = { tcp = true }
[[services.instances]]
name = "w-3"
address = "10.0.0.3"
check = { interval = 1, timeout = 2 }
"#;
        assert_eq!(
            errs(text),
            [
                "5:30: check of service \"w\": a check has either `tcp = true` or `http = \"/path\"`, not both",
                "9:18: check of instance \"w-1\": http path \"healthz\" must start with '/'",
                "9:40: check of instance \"w-1\": interval 0 is out of range (0.01..=86400 seconds)",
                "9:54: check of instance \"w-1\": failures 0 is out of range (1..=100)",
                "13:9: instance \"w-2\" has a `target` and no address: there is nothing to check",
                "17:9: check of instance \"w-3\": a check needs `tcp = true` (connect to the port) or `http = \"/path\"` (GET, 2xx is healthy)",
                "17:35: check of instance \"w-3\": timeout 2 is longer than the interval 1 seconds",
            ]
        );
        assert!(
            one_err(
                "zone = \"a.test\"\n[[services]]\nname = \"w\"\ncheck = { tcp = true, every = 3 }\n"
            )
            .starts_with("4:23: unknown field `every`")
        );
        assert!(
            one_err("zone = \"a.test\"\n[[services]]\nname = \"w\"\ncheck = { tcp = false }\n")
                .contains("`tcp = false` checks nothing")
        );
    }

    #[test]
    fn name_conflicts() {
        let text = r#"zone = "a.test"
[hosts]
web = "10.0.0.1"
"x.web" = "10.0.0.2"
w-1 = "10.0.0.3"
[[services]]
name = "web"
port = 1
[[services.instances]]
name = "w-1"
address = "10.0.0.4"
[[services.instances]]
name = "W-1"
target = "x."
[[services]]
name = "api"
port = 1
[[services.instances]]
name = "web"
address = "10.0.0.5"
[[services]]
name = "web"
protocol = "udp"
port = 2
[[services]]
name = "Web"
port = 3
"#;
        assert_eq!(
            errs(text),
            [
                "3:1: host \"web.a.test.\" is at or under the name of service \"web\" (line 7); rename one of them",
                "4:1: host \"x.web.a.test.\" is at or under the name of service \"web\" (line 7); rename one of them",
                "10:8: instance name \"w-1\" is also a host (line 5); both would own addresses at w-1.a.test.",
                "13:8: instance name \"W-1\" is used twice (first at line 10)",
                "19:8: instance name \"web\" is also the name of service \"web\" (line 7); both would own web.a.test.",
                "19:8: instance name \"web\" is also a host (line 3); both would own addresses at web.a.test.",
                "26:8: service \"Web\" (tcp) is defined twice (first at line 7)",
            ]
        );
    }

    #[test]
    fn host_name_problems() {
        let text = r#"zone = "a.test"
[hosts]
"x.other.test." = "10.0.0.1"
"db" = "10.0.0.2"
"DB.a.test." = "10.0.0.3"
"_x" = "10.0.0.4"
"#;
        assert_eq!(
            errs(text),
            [
                "3:1: host \"x.other.test.\" is not under the zone \"a.test.\"",
                "5:1: host \"DB.a.test.\" is given twice (first at line 4)",
                "6:1: host \"_x\": host name label \"_x\" must not start with '_' (the underscore of SRV names is added automatically)",
            ]
        );
    }

    #[test]
    fn all_semantic_errors_reported_with_path() {
        let text = "zone = \"a.test\"\nttl = -5\n[hosts]\n\"bad\" = \"1.2.3\"\n[[services]]\nname = \"w\"\nport = 99999\n";
        let errors = parse(Path::new("dir/z.toml"), text).unwrap_err();
        assert_eq!(errors.len(), 3);
        assert_eq!(
            errors[0].to_string(),
            "dir/z.toml:2:7: ttl -5 is out of range (0..=2147483647)"
        );
        assert_eq!(
            errors[1].to_string(),
            "dir/z.toml:4:9: invalid IP address \"1.2.3\""
        );
        assert_eq!(
            errors[2].to_string(),
            "dir/z.toml:7:8: port 99999 is out of range (1..=65535)"
        );
    }

    #[test]
    fn column_counts_characters() {
        // "é" is two bytes but one column.
        assert_eq!(
            one_err("zone = \"a.test\" # é\n[hosts] # é\n\"x\" = \"é\"\n"),
            "3:7: invalid IP address \"é\""
        );
        assert_eq!(
            one_err("# ééé\nttl = 3 # é\n"),
            "1:1: missing required key `zone` (the zone's apex, e.g. zone = \"svc.example\")"
        );
        assert_eq!(
            one_err("# é\nzone = \"a.test\"\nttl = -1\n"),
            "3:7: ttl -1 is out of range (0..=2147483647)"
        );
        assert_eq!(
            one_err("zone = \"é\"  \n")
                .split(':')
                .take(2)
                .collect::<Vec<_>>(),
            ["1", "8"]
        );
    }

    #[test]
    fn load_file_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.toml");
        let errors = load_file(&path).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].column), (1, 1));
        assert_eq!(errors[0].path, path);
    }

    #[test]
    fn load_dir_sorted_and_duplicate_zones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |n: &str, t: &str| std::fs::write(dir.path().join(n), t).expect("write");
        write("b.toml", "zone = \"one.test\"\n");
        write("a.toml", "zone = \"two.test\"\n");
        write("c.toml", "# same zone, other case\nzone = \"ONE.test.\"\n");
        write("d.toml", "zone = \"bad.test\"\nttl = -1\n");
        write(".hidden.toml", "this is not toml");
        write("notes.txt", "this is not toml");
        std::fs::create_dir(dir.path().join("sub.toml")).expect("mkdir");

        let loaded = load_dir(dir.path()).expect("dir readable");
        let files: Vec<_> = loaded
            .zones
            .iter()
            .map(|(p, z)| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    z.apex.to_string(),
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                ("a.toml".to_owned(), "two.test.".to_owned()),
                ("b.toml".to_owned(), "one.test.".to_owned()),
            ]
        );
        assert_eq!(loaded.errors.len(), 2, "{:#?}", loaded.errors);
        let dup = &loaded.errors[0];
        assert_eq!(dup.path, dir.path().join("c.toml"));
        assert_eq!((dup.line, dup.column), (2, 8));
        assert!(
            dup.message.contains("already loaded from"),
            "{}",
            dup.message
        );
        assert!(dup.message.contains("b.toml"), "{}", dup.message);
        assert_eq!(loaded.errors[1].path, dir.path().join("d.toml"));

        assert!(load_dir(&dir.path().join("nope")).is_err());
    }
}
