//! The registry's model of a zone: what a zone file (or, later, a runtime
//! registration) describes, already validated and with every name absolute.
//!
//! Nothing here knows about DNS wire format, files or sockets: the zone file
//! source and the registry produce these values, and `answer` turns them
//! into pre-encoded answers. [`names`] and [`check`] hold the validation rules
//! that zone files and registrations share.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

pub mod check;
pub mod names;
pub mod serial;

/// Default TTL of a zone's records, in seconds.
pub const DEFAULT_TTL: u32 = 30;

/// One authoritative zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// The apex, absolute (ends in '.'), with the letter case the file used.
    pub apex: Name,
    /// TTL of every record in the zone.
    pub ttl: u32,
    /// Absolute names of the zone's name servers (NS records at the apex).
    pub nameservers: Vec<Name>,
    /// SOA fields other than the serial, which the registry manages.
    pub soa: Soa,
    /// Plain host names with their addresses.
    pub hosts: Vec<Host>,
    /// Services and their instances. Shared: the registry serves a file's
    /// service as it is unless registrations add to it, so a zone file's
    /// services exist once, however many places hold them.
    pub services: Vec<Arc<Service>>,
}

/// The SOA fields a zone file may set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Soa {
    /// Primary name server.
    pub mname: Name,
    /// Responsible mailbox, in domain-name form.
    pub rname: Name,
    /// Seconds between secondaries' refreshes.
    pub refresh: u32,
    /// Seconds before a failed refresh is retried.
    pub retry: u32,
    /// Seconds after which a secondary stops answering.
    pub expire: u32,
    /// Upper bound for negative caching (RFC 2308).
    pub minimum: u32,
}

/// A host name with one or more addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Absolute name, under the zone's apex.
    pub name: Name,
    /// IPv4 and IPv6 addresses, in the order given.
    pub addresses: Vec<IpAddr>,
}

/// Transport protocol of a service, the `_tcp` / `_udp` label of its SRV name.
/// In JSON (registrations, `list`) it is `"tcp"` or `"udp"`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `_tcp`
    #[default]
    Tcp,
    /// `_udp`
    Udp,
}

impl Protocol {
    /// The label as it appears in an SRV owner name, without the underscore.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A service's instances: a persistent vector, so that a change to one
/// instance of a service of thousands (a registration, an expiry) copies
/// a few chunks of 64 and shares the rest with the version before, instead
/// of taking a reference to every instance again; a service of a few
/// instances keeps them inline, with no allocation of their own.
pub type Instances = imbl::Vector<Arc<Instance>>;

/// The instances of `instances` in `range`, sharing its chunks.
pub fn instances_in(instances: &Instances, range: std::ops::Range<usize>) -> Instances {
    // Split off, not sliced: `slice` joins the rest back together, work
    // thrown away here.
    let mut part = instances.skip(range.start);
    part.truncate(range.len());
    part
}

/// A service: a name under the zone, a protocol, and its instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// A single DNS label, e.g. `web`.
    pub name: String,
    /// `_tcp` or `_udp`.
    pub protocol: Protocol,
    /// Tags of the service; they apply to all its instances.
    pub tags: Vec<String>,
    /// The active health check of its instances that have addresses, unless
    /// an instance gives its own.
    pub check: Option<Check>,
    /// The instances, in the order given.
    pub instances: Instances,
    /// At most this many A/AAAA records per answer (`None`: all that fit),
    /// taken from the weighted order.
    pub max_answers: Option<u16>,
}

/// A service as it now is under its key; `None`: gone.
pub type ServiceChange = (ServiceKey, Option<Arc<Service>>);

/// A service's identity in its zone: lowercased name and protocol; the
/// canonical order of services.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The service's name, lowercased.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
}

impl Service {
    /// The service's own fields with these instances.
    pub fn with_instances(&self, instances: Instances) -> Service {
        Service {
            instances,
            ..self.clone()
        }
    }

    /// The service with only its instances in `range`, which share the
    /// chunks of its list.
    pub fn part(&self, range: std::ops::Range<usize>) -> Service {
        self.with_instances(instances_in(&self.instances, range))
    }
}

impl ServiceKey {
    /// The key of this service.
    pub fn of(service: &Service) -> ServiceKey {
        ServiceKey {
            name: service.name.to_ascii_lowercase(),
            protocol: service.protocol,
        }
    }
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// A single DNS label; with addresses it is also the host name `<name>.<zone>`.
    pub name: String,
    /// Where the instance is.
    pub endpoint: Endpoint,
    /// Port (the instance's own, or the service's default).
    pub port: u16,
    /// SRV weight.
    pub weight: u16,
    /// SRV priority.
    pub priority: u16,
    /// The instance's own health check, overriding the service's (only
    /// instances with addresses have one: a target has nothing to probe).
    /// Boxed, as a target is: most instances have neither.
    pub check: Option<Box<Check>>,
    /// Tags of the instance itself (the service's tags are not repeated here).
    pub tags: Vec<String>,
    /// DNS-SD metadata (RFC 6763 TXT `key=value` strings), in the order given.
    pub metadata: Vec<(String, String)>,
}

/// Where an instance lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The instance is its own host, `<instance>.<zone>`, with these addresses.
    /// Zone files and registrations always give at least one; an empty list
    /// is what health filtering leaves when every address fails its check
    /// (the instance's names then exist but answer nothing).
    Addresses(Vec<IpAddr>),
    /// The SRV record points at this absolute name; no addresses are served for it.
    Target(Box<Name>),
}

/// An active health check, validated (see `sources::health_probe` for how it runs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Check {
    /// What a probe does.
    pub kind: CheckKind,
    /// Time from the end of one probe to the start of the next.
    pub interval: Duration,
    /// Longest a probe may take, connection included; longer is a failure.
    pub timeout: Duration,
    /// Consecutive failures that make a healthy address unhealthy.
    pub failures: u32,
    /// Consecutive successes that make an unhealthy address healthy.
    pub successes: u32,
}

/// The check an instance runs: its own, or else its service's. Takes the
/// fields rather than the instance, so a caller may hold the instance's
/// other fields mutably meanwhile.
pub fn effective_check<'a>(
    instance: Option<&'a Check>,
    service: Option<&'a Check>,
) -> Option<&'a Check> {
    instance.or(service)
}

/// What a health probe does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckKind {
    /// Connect to the port over TCP; a completed handshake is healthy.
    Tcp,
    /// `GET` this path over HTTP/1.1; a 2xx status is healthy.
    Http(String),
}
