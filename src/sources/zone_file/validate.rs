//! Validation: the raw file becomes a [`Zone`], or every problem found,
//! each at its `line:column`.

use std::borrow::{Borrow, Cow};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use hickory_proto::rr::Name;
use toml::Spanned;

use crate::model::check::{CheckField, CheckInput, validate_check};
use crate::model::names::{
    Owner, check_fits, check_label, check_metadata, check_metadata_total, parse_apex,
};
use crate::model::{Check, DEFAULT_TTL, Endpoint, Host, Instance, Protocol, Service, Soa, Zone};

use super::ZoneError;
use super::raw::*;

/// Largest TTL allowed by RFC 2181 section 8.
const MAX_TTL: i64 = 2_147_483_647;

const DEFAULT_REFRESH: u32 = 3600;
const DEFAULT_RETRY: u32 = 600;
const DEFAULT_EXPIRE: u32 = 86400;

/// Parses a file; on success also returns the line:column of the `zone` value.
pub(super) fn parse_inner(
    path: &Path,
    text: &str,
) -> Result<(Zone, (usize, usize)), Vec<ZoneError>> {
    parse_with(path, text, parse_raw)
}

/// [`parse_inner`], with the TOML parsed by `parse_raw`.
pub(super) fn parse_with(
    path: &Path,
    text: &str,
    parse_raw: impl FnOnce(&str) -> Result<RawZone, toml::de::Error>,
) -> Result<(Zone, (usize, usize)), Vec<ZoneError>> {
    let mut cx = Cx {
        path,
        text,
        newlines: OnceCell::new(),
        errors: Vec::new(),
    };
    let raw: RawZone = match parse_raw(text) {
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
        // Sized to the list: a vector grown by pushing keeps room for four,
        // and a zone has an address list for every instance.
        let mut out: Vec<IpAddr> = Vec::with_capacity(items.len());
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

    /// A health check, validated by the rules `model::check` shares with
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
            if let Err(bad) = check_metadata(k, v) {
                let span = if bad.in_value {
                    value.span()
                } else {
                    key.span()
                };
                self.error(&span, format!("{owner}: {bad}"));
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
        let mut services: Vec<Arc<Service>> = Vec::with_capacity(raw_services.len());
        // (service name, protocol, span of the name), by (lowercased name, protocol).
        let mut service_keys: ServiceKeys = Seen::with_capacity(raw_services.len());
        // (instance name, span of the name), by lowercased name.
        let mut instance_names: InstanceNames = Seen::with_capacity(instance_count);
        for svc in raw_services {
            if let Some(service) = self.service(svc, apex, &mut service_keys, &mut instance_names) {
                services.push(Arc::new(service));
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
                .and_then(|()| apex.map_or(Ok(()), |a| check_fits(Owner::Service, n.get_ref(), a)))
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

        // Sized to the list, not grown by doubling: the file's instances
        // are kept for as long as the file is served.
        let mut instances = Vec::with_capacity(raw.instances.as_ref().map_or(0, Vec::len));
        for inst in raw.instances.iter().flatten() {
            let service_port = raw.port.as_ref().map(|_| port);
            if let Some(i) = self.instance(inst, &label, service_port, apex, instance_names) {
                instances.push(Arc::new(i));
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
            instances: instances.into(),
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
                .and_then(|()| apex.map_or(Ok(()), |a| check_fits(Owner::Instance, n.get_ref(), a)))
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
            (None, Some(t)) => self
                .name("target", t, apex)
                .map(|n| Endpoint::Target(Box::new(n))),
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
            check: check.map(Box::new),
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
