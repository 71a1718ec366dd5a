//! Reverse zones: PTR records under in-addr.arpa and ip6.arpa for the
//! addresses of instances and hosts, so `dig -x` and logs that print host
//! names show service instance names.
//!
//! They are derived data: the server is authoritative for the reverse zones
//! of the networks it is configured with (`--reverse 10.0.0.0/8`), and keeps
//! them up to date with the forward zones' addresses: a change to a service
//! puts in or takes out the PTR records of its instances that changed.
//! A network whose prefix is not on a label boundary (an octet for IPv4, a
//! nibble for IPv6) is split into the zones of the next boundary down, so
//! 10.0.0.0/12 gives 0.10.in-addr.arpa to 15.10.in-addr.arpa: the server is
//! never authoritative for an address outside the configured networks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;
use ipnet::IpNet;

// Keys of these maps come from zones, not queries: see Cargo.toml on foldhash.
use foldhash::HashSet;

use crate::answer::encode::RData;
use crate::answer::live::LiveZone;
use crate::answer::snapshot::ZoneSnapshot;
use crate::answer::wire::{WireName, lower_wire};
use crate::model::{
    DEFAULT_TTL, Endpoint, Instance, Instances, Service, ServiceChange, ServiceKey, Soa, Zone,
};

/// The reverse zones being served, kept up to date change by change: a
/// registration adds or takes out the PTR records of its addresses only,
/// and re-encodes those names, whatever the size of the zones.
#[derive(Default)]
pub struct ReverseZones {
    zones: Vec<ReverseZone>,
    /// Which zone an address is in: its network, for each prefix length in
    /// use, longest first (with 10.0.0.0/8 and 10.1.0.0/16 both configured,
    /// 10.1.2.3 belongs in the /16's zone, which is the one queries for it
    /// reach): one hash lookup per length, not a scan of the zones.
    by_net: HashMap<IpNet, usize>,
    prefixes: Vec<(bool, u8)>,
    /// What each forward zone gave, by zone key, with the serial it was
    /// read at: a change is applied as the difference from it.
    forward: HashMap<Vec<u8>, ForwardZone>,
}

/// The addresses a forward zone names: its hosts' and those of each
/// service's instances (zone file and runtime, health checks aside).
#[derive(Default)]
pub struct ForwardZone {
    /// The zone's serial when read.
    pub serial: u32,
    /// The zone's apex, which instance names are under.
    pub apex: Name,
    /// Each host's addresses, with its name.
    pub hosts: Vec<(IpAddr, Name)>,
    /// The services, merged from the file and registrations.
    pub services: HashMap<ServiceKey, Arc<Service>>,
}

struct ReverseZone {
    net: IpNet,
    key: Vec<u8>,
    /// SOA settings and apex; no hosts or services.
    zone: Zone,
    serial: u32,
    /// The PTR targets of each address, each with how many (address, name)
    /// pairs give it (an instance in two services gives its pair twice).
    targets: HashMap<IpAddr, Vec<(WireName, u32)>>,
    /// Addresses whose targets changed since the zone was last encoded.
    dirty: HashSet<IpAddr>,
    live: Option<LiveZone>,
}

impl ReverseZones {
    /// The reverse zones of these networks (each splits into at most 2^7).
    pub fn new(nets: &[IpNet]) -> Result<ReverseZones, String> {
        let mut zones: Vec<ReverseZone> = Vec::new();
        for net in nets {
            for sub in split(*net)? {
                let apex = reverse_apex(&sub);
                let key = lower_wire(&apex);
                if zones.iter().any(|z| z.key == key) {
                    continue;
                }
                zones.push(ReverseZone {
                    net: sub,
                    key,
                    zone: soa_zone(apex),
                    serial: 0,
                    targets: HashMap::new(),
                    dirty: HashSet::default(),
                    live: None,
                });
            }
        }
        let mut by_net = HashMap::new();
        let mut prefixes: Vec<(bool, u8)> = Vec::new();
        for (i, z) in zones.iter().enumerate() {
            by_net.insert(z.net, i);
            let p = (z.net.addr().is_ipv4(), z.net.prefix_len());
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
        prefixes.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
        Ok(ReverseZones {
            zones,
            by_net,
            prefixes,
            forward: HashMap::new(),
        })
    }

    /// Whether any reverse zone is configured.
    pub fn is_enabled(&self) -> bool {
        !self.zones.is_empty()
    }

    /// Makes each zone not built yet start above `floor` of its key (the
    /// serial it had before a restart), so its serials keep growing.
    pub fn seed_serials(&mut self, floor: impl Fn(&[u8]) -> Option<u32>) {
        for z in self.zones.iter_mut().filter(|z| z.serial == 0) {
            if let Some(f) = floor(&z.key).filter(|&f| f != 0) {
                z.serial = f;
            }
        }
    }

    /// Each built zone's key, apex and serial.
    pub fn serials(&self) -> impl Iterator<Item = (&[u8], &Name, u32)> {
        self.zones
            .iter()
            .filter(|z| z.live.is_some())
            .map(|z| (z.key.as_slice(), &z.zone.apex, z.serial))
    }

    /// Services of the forward zone `key` changed (`None`: gone), taking
    /// it from serial `from` to `to`: their addresses' PTR records are
    /// brought up to date. Ignored unless the zone was last read at `from`;
    /// [`ReverseZones::update`] then reads it whole.
    pub fn services_changed(
        &mut self,
        key: &[u8],
        (from, to): (u32, u32),
        changes: Vec<ServiceChange>,
    ) {
        let Some(mut forward) = self.forward.remove(key) else {
            return;
        };
        if forward.serial == from {
            for (id, new) in changes {
                let old = forward.services.remove(&id);
                self.services_differ(&forward.apex, old.as_deref(), new.as_deref());
                forward.services.extend(new.map(|s| (id, s)));
            }
            forward.serial = to;
        }
        self.forward.insert(key.to_vec(), forward);
    }

    /// Brings the reverse zones up to date with the forward zones, given as
    /// (key, serial) pairs: a zone whose serial is not the one last seen
    /// (a new zone, a file reload) is read whole with `read` and applied as
    /// the difference from what it gave before; zones not given are taken
    /// out. Only reverse zones whose records changed get a new serial.
    pub fn update(&mut self, current: &[(&[u8], u32)], mut read: impl FnMut(&[u8]) -> ForwardZone) {
        if self.zones.is_empty() {
            return;
        }
        let gone: Vec<Vec<u8>> = (self.forward.keys())
            .filter(|k| !current.iter().any(|(c, _)| c == k))
            .cloned()
            .collect();
        for key in gone {
            let old = self.forward.remove(&key).expect("listed");
            self.zone_differs(&old, &ForwardZone::default());
        }
        for &(key, serial) in current {
            if self.forward.get(key).is_some_and(|f| f.serial == serial) {
                continue;
            }
            let new = read(key);
            let old = self.forward.remove(key).unwrap_or_default();
            self.zone_differs(&old, &new);
            self.forward
                .insert(key.to_vec(), ForwardZone { serial, ..new });
        }
        for z in &mut self.zones {
            if z.live.is_none() || !z.dirty.is_empty() {
                z.publish();
            }
        }
    }

    /// Applies the difference between what a forward zone gave and gives.
    fn zone_differs(&mut self, old: &ForwardZone, new: &ForwardZone) {
        for (addr, name) in &old.hosts {
            self.pair(*addr, &WireName::new(name), false);
        }
        for (addr, name) in &new.hosts {
            self.pair(*addr, &WireName::new(name), true);
        }
        for (id, service) in &old.services {
            let other = new.services.get(id).map(|s| &**s);
            self.services_differ(&old.apex, Some(service), other);
        }
        for (id, service) in &new.services {
            if !old.services.contains_key(id) {
                self.services_differ(&new.apex, None, Some(service));
            }
        }
    }

    /// Applies the difference between two versions of a service's
    /// instances: those that are the same `Arc` in both are not looked at
    /// beyond their pointer.
    fn services_differ(&mut self, apex: &Name, old: Option<&Service>, new: Option<&Service>) {
        let none = Instances::new();
        let old = old.map_or(&none, |s| &s.instances);
        let new = new.map_or(&none, |s| &s.instances);
        let start = (old.iter().zip(new))
            .take_while(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        let end = (old.iter().rev().zip(new.iter().rev()))
            .take(old.len().min(new.len()) - start)
            .take_while(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        let old = crate::model::instances_in(old, start..old.len() - end);
        let new = crate::model::instances_in(new, start..new.len() - end);
        let mut kept: HashMap<*const Instance, usize> = HashMap::new();
        for i in &new {
            *kept.entry(Arc::as_ptr(i)).or_default() += 1;
        }
        let mut removed = Vec::new();
        for i in &old {
            match kept.get_mut(&Arc::as_ptr(i)) {
                Some(n) if *n > 0 => *n -= 1,
                _ => removed.push(i),
            }
        }
        for i in removed {
            self.instance(apex, i, false);
        }
        let mut was: HashMap<*const Instance, usize> = HashMap::new();
        for i in &old {
            *was.entry(Arc::as_ptr(i)).or_default() += 1;
        }
        for i in &new {
            match was.get_mut(&Arc::as_ptr(i)) {
                Some(n) if *n > 0 => *n -= 1,
                _ => self.instance(apex, i, true),
            }
        }
    }

    /// Adds or takes out the (address, name) pairs of an instance.
    fn instance(&mut self, apex: &Name, instance: &Instance, add: bool) {
        let Endpoint::Addresses(addrs) = &instance.endpoint else {
            return;
        };
        let Ok(name) = apex.prepend_label(instance.name.as_str()) else {
            return;
        };
        let name = WireName::new(&name);
        for addr in addrs {
            self.pair(*addr, &name, add);
        }
    }

    /// Adds or takes out one (address, name) pair, in the zone the address
    /// is in, if any.
    fn pair(&mut self, addr: IpAddr, name: &WireName, add: bool) {
        let zone = self
            .prefixes
            .iter()
            .filter(|(v4, _)| *v4 == addr.is_ipv4())
            .find_map(|&(_, p)| {
                let net = IpNet::new(addr, p).ok()?.trunc();
                self.by_net.get(&net)
            });
        let Some(&i) = zone else {
            return;
        };
        let z = &mut self.zones[i];
        let targets = z.targets.entry(addr).or_default();
        let at = (targets.iter()).position(|(t, _)| t.wire().eq_ignore_ascii_case(name.wire()));
        match (at, add) {
            (Some(at), true) => targets[at].1 += 1,
            (None, true) => targets.push((name.clone(), 1)),
            (Some(at), false) => {
                targets[at].1 -= 1;
                if targets[at].1 == 0 {
                    targets.remove(at);
                }
            }
            (None, false) => {}
        }
        if targets.is_empty() {
            z.targets.remove(&addr);
        }
        z.dirty.insert(addr);
    }

    /// The built reverse zones, except those whose apex a zone file serves
    /// (`forward` holds the forward zones' keys): the file wins.
    pub fn snapshots<'a>(
        &'a self,
        forward: impl Fn(&[u8]) -> bool + 'a,
    ) -> impl Iterator<Item = Arc<ZoneSnapshot>> + 'a {
        self.zones
            .iter()
            .filter(move |z| !forward(&z.key))
            .filter_map(|z| z.live.as_ref().map(|l| l.snapshot().clone()))
    }
}

impl ReverseZone {
    /// Encodes the names of the addresses that changed, with a new serial;
    /// builds the zone the first time.
    fn publish(&mut self) {
        // 0: never built.
        self.serial = crate::model::serial::next(Some(self.serial).filter(|&s| s != 0));
        let changes = (self.dirty.drain()).map(|addr| {
            // In lowercase order of the names: one order, whatever the
            // order the pairs came in.
            let mut targets: Vec<&(WireName, u32)> =
                self.targets.get(&addr).into_iter().flatten().collect();
            targets.sort_by_cached_key(|(t, _)| t.lower());
            let records = targets.iter().map(|(t, _)| RData::Ptr(t.clone())).collect();
            (ptr_name(addr), records)
        });
        let changes: Vec<(Name, Vec<RData>)> = changes.collect();
        match &mut self.live {
            Some(live) => live.set_names(changes, self.serial),
            // The first time, every address at once, as a build.
            None => {
                let none = Vec::<Arc<Service>>::new();
                let live =
                    LiveZone::build_with(&self.zone, none, changes, (self.serial, false), None);
                self.live = Some(live);
            }
        }
    }
}

/// The networks on a label boundary that make up `net`.
fn split(net: IpNet) -> Result<Vec<IpNet>, String> {
    let net = net.trunc();
    let step = if net.addr().is_ipv4() { 8 } else { 4 };
    let prefix = net.prefix_len();
    let boundary = prefix.div_ceil(step) * step;
    net.subnets(boundary)
        .map(Iterator::collect)
        .map_err(|e| format!("reverse network {net}: {e}"))
}

/// The reverse zone apex of a network on a label boundary:
/// 10.0.0.0/8 → 10.in-addr.arpa., fd00::/16 → 0.0.d.f.ip6.arpa.
fn reverse_apex(net: &IpNet) -> Name {
    let labels = match net.addr() {
        IpAddr::V4(a) => {
            let octets = (net.prefix_len() / 8) as usize;
            let mut l: Vec<String> = a.octets()[..octets]
                .iter()
                .rev()
                .map(u8::to_string)
                .collect();
            l.extend(["in-addr".into(), "arpa".into()]);
            l
        }
        IpAddr::V6(a) => {
            let nibbles = (net.prefix_len() / 4) as usize;
            let mut l: Vec<String> = nibbles_of(&a.octets())[..nibbles]
                .iter()
                .rev()
                .map(|n| format!("{n:x}"))
                .collect();
            l.extend(["ip6".into(), "arpa".into()]);
            l
        }
    };
    let mut name = Name::from_labels(labels.iter().map(String::as_bytes))
        .expect("reverse names are short and valid");
    name.set_fqdn(true);
    name
}

/// The PTR owner of an address: 11.0.0.10.in-addr.arpa. for 10.0.0.11.
pub fn ptr_name(addr: IpAddr) -> Name {
    let full = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    reverse_apex(&IpNet::new(addr, full).expect("a full-length prefix"))
}

fn nibbles_of(octets: &[u8]) -> Vec<u8> {
    octets.iter().flat_map(|b| [b >> 4, b & 0xF]).collect()
}

/// A reverse zone's apex and SOA, like a zone file's defaults: the apex is
/// the SOA mname (there are no NS records), `hostmaster.<apex>` the mailbox,
/// and the records have the default TTL.
fn soa_zone(apex: Name) -> Zone {
    let rname = Name::from_ascii("hostmaster")
        .and_then(|h| h.append_domain(&apex))
        .expect("a short name");
    Zone {
        apex: apex.clone(),
        ttl: DEFAULT_TTL,
        nameservers: Vec::new(),
        soa: Soa {
            mname: apex,
            rname,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: DEFAULT_TTL,
        },
        hosts: Vec::new(),
        services: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apexes(net: &str) -> Vec<String> {
        split(net.parse().unwrap())
            .unwrap()
            .iter()
            .map(|n| reverse_apex(n).to_ascii())
            .collect()
    }

    #[test]
    fn networks_become_reverse_zones_on_label_boundaries() {
        assert_eq!(apexes("10.0.0.0/8"), ["10.in-addr.arpa."]);
        assert_eq!(apexes("192.168.1.0/24"), ["1.168.192.in-addr.arpa."]);
        let split12 = apexes("10.0.0.0/12");
        assert_eq!(split12.len(), 16);
        assert_eq!(split12[0], "0.10.in-addr.arpa.");
        assert_eq!(split12[15], "15.10.in-addr.arpa.");
        assert_eq!(
            apexes("fd00::/64"),
            ["0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."]
        );
        assert_eq!(
            apexes("fd00::/15"),
            ["0.0.d.f.ip6.arpa.", "1.0.d.f.ip6.arpa."]
        );
        // At most 2^7 zones per network.
        assert_eq!(apexes("0.0.0.0/1").len(), 128);
    }

    /// After any sequence of changes, each reverse zone is the one a build
    /// from every address of the forward zone gives.
    #[test]
    fn changes_give_the_zones_a_build_from_every_address_gives() {
        use crate::answer::build::build_reverse_zone;
        use crate::answer::testing::{Rng, assert_same, plain_instance};
        use crate::model::Protocol;

        let nets: Vec<IpNet> = ["10.0.0.0/8", "10.1.0.0/16", "fd00::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let apex = Name::from_ascii("svc.example.").unwrap();
        let hosts = vec![(
            "10.1.0.1".parse().unwrap(),
            Name::from_ascii("gw.svc.example.").unwrap(),
        )];
        // Small pools: addresses shared by instances, names by services,
        // addresses outside every network.
        let addrs: Vec<IpAddr> = [
            "10.0.0.1",
            "10.0.0.2",
            "10.1.0.1",
            "10.1.2.3",
            "fd00::1",
            "192.168.0.1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let names = ["a", "b", "Web-1", "gw", "c"];
        let keys: Vec<ServiceKey> = ["web", "db", "api"]
            .iter()
            .map(|n| ServiceKey {
                name: n.to_string(),
                protocol: Protocol::Tcp,
            })
            .collect();
        for seed in 1..=4u64 {
            let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9));
            let mut reverse = ReverseZones::new(&nets).unwrap();
            let mut services: HashMap<ServiceKey, Arc<Service>> = HashMap::new();
            let mut serial = 1;
            let read = |services: &HashMap<ServiceKey, Arc<Service>>, serial| ForwardZone {
                serial,
                apex: apex.clone(),
                hosts: hosts.clone(),
                services: services.clone(),
            };
            reverse.update(&[(b"key", serial)], |_| read(&services, serial));
            for step in 0..200 {
                let key = rng.pick(&keys).clone();
                let mut instances: Instances = services
                    .get(&key)
                    .map(|s| s.instances.clone())
                    .unwrap_or_default();
                match rng.below(4) {
                    0 | 1 => {
                        let n = 1 + rng.below(2);
                        let endpoint = (0..n).map(|_| *rng.pick(&addrs)).collect();
                        let at = rng.below(instances.len() + 1);
                        instances.insert(
                            at,
                            Arc::new(plain_instance(rng.pick(&names).to_string(), endpoint)),
                        );
                    }
                    2 if !instances.is_empty() => {
                        instances.remove(rng.below(instances.len()));
                    }
                    _ => instances.clear(),
                }
                let new = (!instances.is_empty()).then(|| {
                    Arc::new(Service {
                        name: key.name.clone(),
                        protocol: key.protocol,
                        tags: Vec::new(),
                        check: None,
                        instances,
                        max_answers: None,
                    })
                });
                match &new {
                    Some(s) => services.insert(key.clone(), s.clone()),
                    None => services.remove(&key),
                };
                // Mostly told as a change; sometimes read whole, as after
                // a reload.
                if step % 7 != 0 {
                    reverse.services_changed(b"key", (serial, serial + 1), vec![(key, new)]);
                }
                serial += 1;
                reverse.update(&[(b"key", serial)], |_| read(&services, serial));

                // Every (address, name), each in the most specific zone.
                let mut pairs: Vec<(IpAddr, Name)> = hosts.clone();
                for s in services.values() {
                    for i in &s.instances {
                        let Endpoint::Addresses(a) = &i.endpoint else {
                            continue;
                        };
                        let name = apex.prepend_label(i.name.as_str()).unwrap();
                        pairs.extend(a.iter().map(|a| (*a, name.clone())));
                    }
                }
                pairs.sort_by_cached_key(|(a, n)| (*a, lower_wire(n)));
                for z in &reverse.zones {
                    let mine: Vec<(Name, &Name)> = pairs
                        .iter()
                        .filter(|(a, _)| {
                            let zone = (reverse.prefixes.iter())
                                .filter(|(v4, _)| *v4 == a.is_ipv4())
                                .find_map(|&(_, p)| {
                                    reverse.by_net.get(&IpNet::new(*a, p).ok()?.trunc())
                                });
                            zone.is_some_and(|&i| reverse.zones[i].key == z.key)
                        })
                        .map(|(a, n)| (ptr_name(*a), n))
                        .collect();
                    let fresh = build_reverse_zone(
                        &z.zone,
                        mine.iter().map(|(o, t)| (o, *t)),
                        z.serial,
                        None,
                    );
                    let live = z.live.as_ref().expect("built");
                    assert_same(
                        live.snapshot(),
                        &fresh,
                        &format!("seed {seed}, step {step}, zone {}", z.zone.apex),
                    );
                }
            }
        }
    }

    #[test]
    fn ptr_names() {
        assert_eq!(
            ptr_name("10.0.0.11".parse().unwrap()).to_ascii(),
            "11.0.0.10.in-addr.arpa."
        );
        assert_eq!(
            ptr_name("fd00::11".parse().unwrap()).to_ascii(),
            "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."
        );
    }
}
