//! Reverse zones: PTR records under in-addr.arpa and ip6.arpa for the
//! addresses of instances and hosts, so `dig -x` and logs that print host
//! names show service instance names.
//!
//! They are derived data: the server is authoritative for the reverse zones
//! of the networks it is configured with (`--reverse 10.0.0.0/8`), and builds
//! them from every forward zone's addresses whenever a forward zone changes.
//! A network whose prefix is not on a label boundary (an octet for IPv4, a
//! nibble for IPv6) is split into the zones of the next boundary down, so
//! 10.0.0.0/12 gives 0.10.in-addr.arpa to 15.10.in-addr.arpa: the server is
//! never authoritative for an address outside the configured networks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;
use ipnet::IpNet;

use crate::answer::build::build_reverse_zone;
use crate::answer::snapshot::ZoneSnapshot;
use crate::answer::wire::lower_wire;
use crate::model::{DEFAULT_TTL, Soa, Zone};

/// The reverse zones being served.
#[derive(Default)]
pub struct ReverseZones {
    zones: Vec<ReverseZone>,
    /// The (address, name) pairs of each forward zone, by zone key, with the
    /// serial they were computed at, so only changed zones are read again.
    forward: HashMap<Vec<u8>, (u32, Addresses)>,
}

/// A forward zone's (address, name) pairs.
type Addresses = Arc<[(IpAddr, Name)]>;

struct ReverseZone {
    net: IpNet,
    key: Vec<u8>,
    /// SOA settings and apex; no hosts or services.
    zone: Zone,
    serial: u32,
    built: Option<Arc<ZoneSnapshot>>,
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
                    built: None,
                });
            }
        }
        Ok(ReverseZones {
            zones,
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
            .filter(|z| z.built.is_some())
            .map(|z| (z.key.as_slice(), &z.zone.apex, z.serial))
    }

    /// Brings the reverse zones up to date with the forward zones, given as
    /// (key, serial) pairs; `addresses` reads a forward zone's (address,
    /// name) pairs, and is called only for zones whose serial changed.
    pub fn update(
        &mut self,
        current: &[(&[u8], u32)],
        mut addresses: impl FnMut(&[u8]) -> Vec<(IpAddr, Name)>,
    ) {
        if self.zones.is_empty() {
            return;
        }
        let before = self.forward.len();
        self.forward
            .retain(|k, _| current.iter().any(|(c, _)| *c == k.as_slice()));
        let mut changed = self.forward.len() != before;
        for &(key, serial) in current {
            if self.forward.get(key).is_some_and(|(s, _)| *s == serial) {
                continue;
            }
            self.forward
                .insert(key.to_vec(), (serial, addresses(key).into()));
            changed = true;
        }
        if !changed && self.zones.iter().all(|z| z.built.is_some()) {
            return;
        }

        // Which reverse zone an address is in: one hash lookup per prefix
        // length in use, not a scan of the zones.
        let mut by_net: HashMap<IpNet, usize> = HashMap::new();
        let mut prefixes: Vec<(bool, u8)> = Vec::new();
        for (i, z) in self.zones.iter().enumerate() {
            by_net.insert(z.net, i);
            let p = (z.net.addr().is_ipv4(), z.net.prefix_len());
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
        // Longest prefix first: with 10.0.0.0/8 and 10.1.0.0/16 both
        // configured, 10.1.2.3 belongs in the /16's zone, which is the one
        // queries for it reach.
        prefixes.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
        let mut ptrs: Vec<Vec<(Name, &Name)>> = vec![Vec::new(); self.zones.len()];
        for (_, list) in self.forward.values() {
            for (addr, name) in list.iter() {
                let zone = prefixes
                    .iter()
                    .filter(|(v4, _)| *v4 == addr.is_ipv4())
                    .find_map(|&(_, p)| {
                        let net = IpNet::new(*addr, p).ok()?.trunc();
                        by_net.get(&net)
                    });
                if let Some(&i) = zone {
                    ptrs[i].push((ptr_name(*addr), name));
                }
            }
        }
        for (z, ptrs) in self.zones.iter_mut().zip(ptrs) {
            // 0: never built.
            z.serial = crate::model::serial::next(Some(z.serial).filter(|&s| s != 0));
            let built = build_reverse_zone(
                &z.zone,
                ptrs.iter().map(|(o, t)| (o, *t)),
                z.serial,
                z.built.as_deref(),
            );
            z.built = Some(Arc::new(built));
        }
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
            .filter_map(|z| z.built.clone())
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
