//! Runtime registrations: validating what a client sent into the model, and
//! deciding which names a registration may take.
//!
//! The rules mirror the zone file's: an instance name is a host name in the
//! zone and is unique there; a service owns `<service>.<zone>` and the names
//! below it. On top of that the zone file owns its names: a registration can
//! add an instance to a service the file declares, or create a new service,
//! but never take a name the file uses. When a file later takes a name that a
//! registration holds, the file wins and the registration is kept but not
//! served ("shadowed"), so reverting the file brings it back.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use hickory_proto::rr::Name;

use crate::api::proto::Registration;
use crate::model::check::{CheckInput, validate_check};
use crate::model::names::{Owner, check_fits, check_label, parse_apex};
use crate::model::{Endpoint, Instance, Protocol, ServiceKey, Zone};

/// Longest TTL a registration may ask for: a day. Longer is almost certainly
/// a unit mistake (milliseconds), and such an instance would in effect never expire.
pub(super) const MAX_INSTANCE_TTL: u32 = 86_400;

/// A registration, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RuntimeInstance {
    /// The zone's apex.
    pub apex: Name,
    /// Service name.
    pub service: String,
    /// Service protocol.
    pub protocol: Protocol,
    /// The instance as the snapshot serves it.
    pub instance: Arc<Instance>,
    /// Seconds without a heartbeat before it leaves answers.
    pub ttl: Option<u32>,
}

impl RuntimeInstance {
    /// Whether it is registered into service `key`.
    pub(super) fn in_service(&self, key: &ServiceKey) -> bool {
        self.protocol == key.protocol && self.service.eq_ignore_ascii_case(&key.name)
    }

    /// The key of the service it is registered into.
    pub(super) fn service_key(&self) -> ServiceKey {
        ServiceKey {
            name: self.service.to_ascii_lowercase(),
            protocol: self.protocol,
        }
    }
}

/// Checks a registration the way the zone parser checks a file's instance.
/// The message says what is wrong in words a client can act on.
pub(super) fn validate(reg: &Registration) -> Result<RuntimeInstance, String> {
    let apex = parse_apex(&reg.zone)?;
    check_label("service name", &reg.service)?;
    check_label("instance name", &reg.instance)?;
    check_fits(Owner::Service, &reg.service, &apex)?;
    check_fits(Owner::Instance, &reg.instance, &apex)?;
    if reg.instance.eq_ignore_ascii_case(&reg.service) {
        return Err(format!(
            "instance name \"{}\" is also its service's name; both would own {}.{}",
            reg.instance, reg.instance, reg.zone
        ));
    }
    let endpoint = match (reg.address.is_empty(), &reg.target) {
        (false, Some(_)) => {
            return Err("give either `address` or `target`, not both".into());
        }
        (true, None) => {
            return Err(
                "missing `address` (the instance's own addresses) or `target` (a name elsewhere)"
                    .into(),
            );
        }
        (false, None) => {
            let mut addrs: Vec<IpAddr> = Vec::new();
            for a in &reg.address {
                let ip: IpAddr = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid IP address \"{a}\""))?;
                if addrs.contains(&ip) {
                    return Err(format!("address {ip} is listed twice"));
                }
                addrs.push(ip);
            }
            Endpoint::Addresses(addrs)
        }
        (true, Some(t)) => {
            let name = if t.is_empty() {
                Err("target must not be empty".to_string())
            } else {
                Name::from_ascii(t)
                    .map_err(|e| format!("target \"{t}\" is not a valid domain name: {e}"))
            }?;
            let name = if name.is_fqdn() {
                name
            } else {
                name.append_domain(&apex)
                    .map_err(|e| format!("target \"{t}\" is too long under the zone: {e}"))?
            };
            Endpoint::Target(Box::new(name))
        }
    };
    if reg.port == 0 {
        return Err("port 0 is out of range (1..=65535)".into());
    }
    let mut tags: Vec<String> = Vec::new();
    for t in &reg.tags {
        check_label("tag", t)?;
        if tags.iter().any(|o| o.eq_ignore_ascii_case(t)) {
            return Err(format!("tag \"{t}\" is listed twice"));
        }
        tags.push(t.clone());
    }
    let mut metadata: Vec<(String, String)> = Vec::new();
    for (k, v) in &reg.metadata {
        crate::model::names::check_metadata(k, v).map_err(|bad| bad.message)?;
        if metadata.iter().any(|(o, _)| o.eq_ignore_ascii_case(k)) {
            return Err(format!(
                "metadata key \"{k}\" is given twice (keys are case-insensitive)"
            ));
        }
        metadata.push((k.clone(), v.clone()));
    }
    crate::model::names::check_metadata_total(
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    if let Some(ttl) = reg.ttl
        && !(1..=MAX_INSTANCE_TTL).contains(&ttl)
    {
        return Err(format!(
            "ttl {ttl} is out of range (1..={MAX_INSTANCE_TTL} seconds)"
        ));
    }
    let check = match &reg.check {
        None => None,
        Some(_) if reg.target.is_some() => {
            return Err(
                "a `check` needs `address`: an instance with a `target` has nothing to probe"
                    .into(),
            );
        }
        Some(c) => Some(
            validate_check(&CheckInput {
                tcp: c.tcp,
                http: c.http.as_deref(),
                interval: c.interval,
                timeout: c.timeout,
                failures: c.failures.map(i64::from),
                successes: c.successes.map(i64::from),
            })
            .map_err(|errors| {
                let messages: Vec<String> = errors.into_iter().map(|(_, m)| m).collect();
                format!("check: {}", messages.join("; "))
            })?,
        ),
    };
    Ok(RuntimeInstance {
        apex,
        service: reg.service.clone(),
        protocol: reg.protocol,
        instance: Arc::new(Instance {
            name: reg.instance.clone(),
            endpoint,
            port: reg.port,
            weight: reg.weight.unwrap_or(1),
            priority: reg.priority.unwrap_or(0),
            check: check.map(Box::new),
            tags,
            metadata,
        }),
        ttl: reg.ttl,
    })
}

/// The names a zone file uses, indexed once when the file is loaded, so a
/// registration is checked against them in constant time.
#[derive(Default)]
pub(super) struct FileNames {
    /// Instance names.
    instances: Folded,
    /// Service names (any protocol).
    services: Folded,
    /// Host names, by their first label below the apex, lowercased: a host
    /// `x.api.<zone>` is under `api`. Each with the first such host.
    hosts_under: HashMap<String, Name>,
    /// Host names that are a single label below the apex, lowercased.
    hosts: HashSet<String>,
}

impl FileNames {
    pub(super) fn of(file: &Zone) -> FileNames {
        let mut names = FileNames::default();
        for s in &file.services {
            names.services.insert(&s.name);
            for i in &s.instances {
                names.instances.insert(&i.name);
            }
        }
        let apex_labels = file.apex.num_labels() as usize;
        for h in &file.hosts {
            let labels: Vec<&[u8]> = h.name.iter().collect();
            if labels.len() <= apex_labels {
                continue;
            }
            let top = String::from_utf8_lossy(labels[labels.len() - apex_labels - 1])
                .to_ascii_lowercase();
            if labels.len() == apex_labels + 1 {
                names.hosts.insert(top.clone());
            }
            names
                .hosts_under
                .entry(top)
                .or_insert_with(|| h.name.clone());
        }
        names
    }
}

/// Names by their lowercased form, each with its letter case as written
/// only where that differs: most names are written in lowercase, and a
/// large zone file has hundreds of thousands of instance names.
#[derive(Default)]
struct Folded(HashMap<Box<str>, Option<Box<str>>>);

impl Folded {
    /// Adds a name; the first of two that differ only in case is kept.
    fn insert(&mut self, written: &str) {
        let lower = written.to_ascii_lowercase();
        let case = (lower != written).then(|| written.into());
        self.0.entry(lower.into_boxed_str()).or_insert(case);
    }

    /// The name as written, by its lowercased form.
    fn get(&self, lower: &str) -> Option<&str> {
        let (key, case) = self.0.get_key_value(lower)?;
        Some(case.as_deref().unwrap_or(key))
    }

    fn contains_key(&self, lower: &str) -> bool {
        self.0.contains_key(lower)
    }
}

/// Why the zone file whose names are `file` (read from `source`) does not
/// let `r` be served, if it does not.
pub(super) fn file_conflict(
    file: &FileNames,
    source: &Path,
    r: &RuntimeInstance,
) -> Option<String> {
    let source = source.display();
    let inst = r.instance.name.to_ascii_lowercase();
    let svc = r.service.to_ascii_lowercase();
    if let Some(i) = file.instances.get(&inst) {
        return Some(format!(
            "instance \"{i}\" is defined by zone file {source}; change it there"
        ));
    }
    if let Some(s) = file.services.get(&inst) {
        return Some(format!(
            "instance name \"{}\" is the name of service \"{s}\" in zone file {source}",
            r.instance.name
        ));
    }
    if file.hosts.contains(&inst) {
        let host_name = r.apex.prepend_label(r.instance.name.as_str()).ok()?;
        return Some(format!(
            "{host_name} is a host in zone file {source}; choose another instance name"
        ));
    }
    // A service the file already declares (any protocol) owns its name with
    // the file's blessing; a new one must not collide with the file's names.
    if !file.services.contains_key(&svc) {
        let svc_name = r.apex.prepend_label(r.service.as_str()).ok()?;
        if let Some(h) = file.hosts_under.get(&svc) {
            return Some(format!(
                "service \"{}\" would own {svc_name}, but zone file {source} has host {h}",
                r.service
            ));
        }
        if file.instances.contains_key(&svc) {
            return Some(format!(
                "service name \"{}\" is an instance in zone file {source}",
                r.service
            ));
        }
    }
    None
}

/// Why `r` may not be registered next to `other`, another runtime instance
/// of the same zone, if it may not.
pub(super) fn runtime_conflict(r: &RuntimeInstance, other: &RuntimeInstance) -> Option<String> {
    let inst = &r.instance.name;
    let o = &other.instance.name;
    if o.eq_ignore_ascii_case(inst)
        && !(other.service.eq_ignore_ascii_case(&r.service) && other.protocol == r.protocol)
    {
        return Some(format!(
            "instance \"{o}\" is already registered for service \"{}\" ({}); deregister it first",
            other.service,
            other.protocol.as_str()
        ));
    }
    if other.service.eq_ignore_ascii_case(inst) {
        return Some(format!(
            "instance name \"{inst}\" is the name of registered service \"{}\"",
            other.service
        ));
    }
    if o.eq_ignore_ascii_case(&r.service) {
        return Some(format!(
            "service name \"{}\" is the name of registered instance \"{o}\"",
            r.service
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(instance: &str, service: &str) -> Registration {
        Registration {
            zone: "svc.example".into(),
            service: service.into(),
            protocol: Default::default(),
            instance: instance.into(),
            address: vec!["10.0.0.9".into()],
            target: None,
            port: 80,
            weight: None,
            priority: None,
            tags: vec![],
            ttl: None,
            check: None,
            metadata: Default::default(),
        }
    }

    fn file() -> Zone {
        crate::sources::zone_file::parse(
            Path::new("z.toml"),
            r#"
zone = "svc.example"
[hosts]
db = "10.0.0.1"
"x.api" = "10.0.0.2"
[[services]]
name = "web"
port = 80
[[services.instances]]
name = "web-1"
address = "10.0.0.3"
"#,
        )
        .unwrap()
    }

    fn conflict(instance: &str, service: &str) -> Option<String> {
        file_conflict(
            &FileNames::of(&file()),
            Path::new("z.toml"),
            &validate(&reg(instance, service)).unwrap(),
        )
    }

    #[test]
    fn the_file_owns_its_names() {
        assert_eq!(conflict("web-9", "web"), None);
        assert_eq!(conflict("api-1", "api2"), None);
        assert!(
            conflict("WEB-1", "web")
                .unwrap()
                .contains("defined by zone file z.toml")
        );
        assert!(conflict("db", "web").unwrap().contains("is a host"));
        assert!(
            conflict("web", "other")
                .unwrap()
                .contains("name of service")
        );
        assert!(conflict("api-1", "api").unwrap().contains("has host x.api"));
        assert!(conflict("a-1", "web-1").unwrap().contains("is an instance"));
    }

    #[test]
    fn bad_registrations_are_explained() {
        let mut r = reg("w", "web");
        r.address = vec!["10.0.0.256".into()];
        assert_eq!(
            validate(&r).unwrap_err(),
            "invalid IP address \"10.0.0.256\""
        );
        r.address = vec![];
        assert!(validate(&r).unwrap_err().contains("missing `address`"));
        r.target = Some("elsewhere.example.".into());
        assert!(validate(&r).is_ok());
        r.ttl = Some(0);
        assert!(validate(&r).unwrap_err().contains("ttl 0"));
        let mut r = reg("w_1", "web");
        assert!(validate(&r).unwrap_err().contains("instance name"));
        r.instance = "web".into();
        assert!(
            validate(&r)
                .unwrap_err()
                .contains("also its service's name")
        );
        r.instance = "w".into();
        r.port = 0;
        assert!(validate(&r).unwrap_err().contains("port 0"));
    }
}
