//! The registry's record of health: which addresses of each zone are
//! checked, the known state of each, and the answers that leave out what is
//! unhealthy.
//!
//! A check belongs to a service (for all its instances with addresses) or to
//! one instance (overriding the service's). Every address of a checked
//! instance is probed on its own, on the instance's port: a [`Target`].
//! Only healthy addresses are served; an instance whose addresses are all
//! unhealthy leaves the SRV answers, and a service whose instances all did
//! answers NODATA (its names still exist).
//!
//! Health changes flow one way, like every other change: the registry's
//! owner tells the prober which targets each zone has after each change
//! ([`Book::take_updates`]); the prober reports only *flips* of a target's
//! state back to the owner ([`Flip`]), which marks the zone for rebuilding.
//! A probe result that changes nothing costs the owner nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{Check, Endpoint, Protocol, Service, effective_check};

/// One address of one checked instance: what a probe checks. Names are
/// lowercased, so that a change of letter case in a file keeps the state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The zone's key (its lowercased apex in wire form).
    pub zone: Vec<u8>,
    /// Service name, lowercased.
    pub service: String,
    /// Service protocol.
    pub protocol: Protocol,
    /// Instance name, lowercased.
    pub instance: String,
    /// The address probed.
    pub address: IpAddr,
    /// The port probed.
    pub port: u16,
    /// How.
    pub check: Check,
}

/// A target's health changed.
#[derive(Clone, Debug)]
pub struct Flip {
    /// The target.
    pub target: Target,
    /// Its new state.
    pub healthy: bool,
    /// What the last probe saw (the error, or `ok`).
    pub detail: String,
}

/// How an instance's addresses are doing, as `list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceHealth {
    /// No check (or not served for another reason, so not probed).
    Unchecked,
    /// Checked, no result yet for some address and no failure: served.
    Unknown,
    /// Every address is healthy.
    Healthy,
    /// Some addresses are unhealthy: only the others are served.
    Degraded,
    /// Every address is unhealthy: not served.
    Unhealthy,
}

impl InstanceHealth {
    /// The word `list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceHealth::Unchecked => "unchecked",
            InstanceHealth::Unknown => "unknown",
            InstanceHealth::Healthy => "healthy",
            InstanceHealth::Degraded => "degraded",
            InstanceHealth::Unhealthy => "unhealthy",
        }
    }
}

/// The registry's record of health: the targets of each service as last
/// built, the known state of each, and the target groups the checker has not
/// heard of. Kept per service, so a change to one service costs what that
/// service has.
#[derive(Default)]
pub struct Book {
    /// Targets per group (one service of one zone, see [`group_key`]), as of
    /// the service's last build.
    groups: HashMap<Vec<u8>, HashSet<Target>>,
    /// The groups of each zone, by zone key.
    zones: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// Known states; a target without one has not been probed yet (served).
    states: HashMap<Target, bool>,
    /// Groups whose target set changed since [`Book::take_updates`].
    updates: BTreeSet<Vec<u8>>,
    /// Targets that left their group since [`Book::take_updates`]: their
    /// states are forgotten then, unless they came back.
    left: Vec<Target>,
}

/// The checker's key for one service of one zone: the zone key (wire form,
/// ending in the root label), the service's lowercased name, its protocol.
fn group_key(zone: &[u8], service: &str, protocol: Protocol) -> Vec<u8> {
    let mut key = Vec::with_capacity(zone.len() + service.len() + 1);
    key.extend_from_slice(zone);
    key.extend_from_slice(service.as_bytes());
    key.push(protocol as u8);
    key
}

impl Target {
    fn group(&self) -> Vec<u8> {
        group_key(&self.zone, &self.service, self.protocol)
    }
}

/// The targets of one service of a zone: each address of each instance with
/// an effective check.
fn service_targets(key: &[u8], s: &Service) -> HashSet<Target> {
    let mut out = HashSet::new();
    for i in &s.instances {
        let Endpoint::Addresses(addrs) = &i.endpoint else {
            continue;
        };
        let Some(check) = effective_check(i.check.as_deref(), s.check.as_ref()) else {
            continue;
        };
        for a in addrs {
            out.insert(Target {
                zone: key.to_vec(),
                service: s.name.to_ascii_lowercase(),
                protocol: s.protocol,
                instance: i.name.to_ascii_lowercase(),
                address: *a,
                port: i.port,
                check: check.clone(),
            });
        }
    }
    out
}

impl Book {
    /// Forgets the targets of the services of zone `key` that are not
    /// among `services` (they left the zone).
    pub fn retain_services<'a>(&mut self, key: &[u8], services: impl Iterator<Item = &'a Service>) {
        let current: HashSet<Vec<u8>> = services
            .map(|s| group_key(key, &s.name.to_ascii_lowercase(), s.protocol))
            .collect();
        let gone: Vec<Vec<u8>> = self
            .zones
            .get(key)
            .into_iter()
            .flatten()
            .filter(|g| !current.contains(*g))
            .cloned()
            .collect();
        for group in gone {
            self.set_group(key, group, HashSet::new());
        }
    }

    /// Records the targets of one service being built and returns the
    /// service to serve when it differs from `service`: unhealthy addresses
    /// left out, and instances without a healthy address kept with no
    /// address, so their names answer NODATA rather than NXDOMAIN.
    pub fn service_built(&mut self, key: &[u8], service: &Service) -> Option<Service> {
        let group = group_key(key, &service.name.to_ascii_lowercase(), service.protocol);
        let now = service_targets(key, service);
        self.set_group(key, group.clone(), now);
        self.filter(&group, service)
    }

    /// Forgets the targets of a service that left the zone, or has no
    /// health check (`service` lowercase).
    pub fn service_gone(&mut self, key: &[u8], service: &str, protocol: Protocol) {
        self.set_group(key, group_key(key, service, protocol), HashSet::new());
    }

    /// Replaces a group's targets, noting the change for the checker.
    fn set_group(&mut self, key: &[u8], group: Vec<u8>, now: HashSet<Target>) {
        let before = self.groups.get(&group);
        if before == Some(&now) || (before.is_none() && now.is_empty()) {
            return;
        }
        // States of targets that went away are forgotten only when the
        // checker is told (take_updates): a target that leaves and comes
        // back within one batch keeps the state the checker still has.
        if let Some(before) = before {
            self.left
                .extend(before.iter().filter(|t| !now.contains(*t)).cloned());
        }
        self.updates.insert(group.clone());
        let groups = self.zones.entry(key.to_vec()).or_default();
        if now.is_empty() {
            self.groups.remove(&group);
            groups.remove(&group);
            if groups.is_empty() {
                self.zones.remove(key);
            }
        } else {
            groups.insert(group.clone());
            self.groups.insert(group, now);
        }
    }

    /// Forgets a zone that is no longer served.
    pub fn zone_removed(&mut self, key: &[u8]) {
        for group in self.zones.remove(key).unwrap_or_default() {
            if let Some(targets) = self.groups.remove(&group) {
                self.left.extend(targets);
            }
            self.updates.insert(group);
        }
    }

    /// Zone keys with targets, for finding zones that went away.
    pub fn zone_keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.zones.keys()
    }

    /// Records a flip. Returns the previous state (`None`: not probed yet)
    /// when it is a change to a current target; `Err(())` when the target is
    /// no longer current or nothing changed.
    #[allow(clippy::result_unit_err)]
    pub fn record(&mut self, flip: &Flip) -> Result<Option<bool>, ()> {
        let current = self
            .groups
            .get(&flip.target.group())
            .is_some_and(|g| g.contains(&flip.target));
        if !current {
            return Err(());
        }
        match self.states.insert(flip.target.clone(), flip.healthy) {
            Some(prev) if prev == flip.healthy => Err(()),
            prev => Ok(prev),
        }
    }

    /// The groups (one service of one zone) whose targets changed, with
    /// their current targets (empty: none now), for the checker.
    pub fn take_updates(&mut self) -> Vec<(Vec<u8>, Vec<Target>)> {
        // The checker drops what is not in these sets; so does the book.
        for t in std::mem::take(&mut self.left) {
            if !self.groups.get(&t.group()).is_some_and(|g| g.contains(&t)) {
                self.states.remove(&t);
            }
        }
        std::mem::take(&mut self.updates)
            .into_iter()
            .map(|group| {
                let targets = self
                    .groups
                    .get(&group)
                    .map(|t| t.iter().cloned().collect())
                    .unwrap_or_default();
                (group, targets)
            })
            .collect()
    }

    /// Instances of a zone left out of answers: every address unhealthy.
    pub fn unhealthy_instances(&self, key: &[u8]) -> usize {
        let mut all_down: HashMap<(&str, Protocol, &str), bool> = HashMap::new();
        let groups = self.zones.get(key).into_iter().flatten();
        for t in groups.flat_map(|g| self.groups.get(g).into_iter().flatten()) {
            let down = self.states.get(t) == Some(&false);
            *all_down
                .entry((&t.service, t.protocol, &t.instance))
                .or_insert(true) &= down;
        }
        all_down.values().filter(|d| **d).count()
    }

    /// The state of one target: `None` if it has no result yet.
    fn state(&self, t: &Target) -> Option<bool> {
        self.states.get(t).copied()
    }

    /// How an instance of a service is doing (`check`: its effective check).
    pub fn instance_health(
        &self,
        key: &[u8],
        service: &str,
        protocol: Protocol,
        instance: &crate::model::Instance,
        check: Option<&Check>,
    ) -> (InstanceHealth, Vec<IpAddr>) {
        let (Some(check), Endpoint::Addresses(addrs)) = (check, &instance.endpoint) else {
            return (InstanceHealth::Unchecked, Vec::new());
        };
        let mut target = Target {
            zone: key.to_vec(),
            service: service.to_ascii_lowercase(),
            protocol,
            instance: instance.name.to_ascii_lowercase(),
            address: IpAddr::from([0, 0, 0, 0]),
            port: instance.port,
            check: check.clone(),
        };
        // Not among the service's targets: not served (expired, shadowed),
        // so not probed.
        let Some(zone) = self.groups.get(&target.group()) else {
            return (InstanceHealth::Unchecked, Vec::new());
        };
        if let Some(a) = addrs.first() {
            target.address = *a;
        }
        if !zone.contains(&target) {
            return (InstanceHealth::Unchecked, Vec::new());
        }
        let mut unhealthy = Vec::new();
        let mut unknown = false;
        for a in addrs {
            target.address = *a;
            match self.state(&target) {
                Some(true) => {}
                Some(false) => unhealthy.push(*a),
                None => unknown = true,
            }
        }
        let health = if unhealthy.len() == addrs.len() {
            InstanceHealth::Unhealthy
        } else if !unhealthy.is_empty() {
            InstanceHealth::Degraded
        } else if unknown {
            InstanceHealth::Unknown
        } else {
            InstanceHealth::Healthy
        };
        (health, unhealthy)
    }

    /// `service` without what is unhealthy; `None` when all is healthy.
    fn filter(&self, group: &[u8], service: &Service) -> Option<Service> {
        let targets = self.groups.get(group)?;
        if !targets.iter().any(|t| self.states.get(t) == Some(&false)) {
            return None;
        }
        let mut service = service.clone();
        let service_check = service.check.clone();
        let (name, protocol) = (service.name.to_ascii_lowercase(), service.protocol);
        let zone = targets
            .iter()
            .next()
            .map(|t| t.zone.clone())
            .unwrap_or_default();
        for i in &mut service.instances {
            let Some(check) = effective_check(i.check.as_deref(), service_check.as_ref()) else {
                continue;
            };
            let Endpoint::Addresses(addrs) = &i.endpoint else {
                continue;
            };
            let mut target = Target {
                zone: zone.clone(),
                service: name.clone(),
                protocol,
                instance: i.name.to_ascii_lowercase(),
                address: IpAddr::from([0, 0, 0, 0]),
                port: i.port,
                check: check.clone(),
            };
            let mut healthy = |a: &IpAddr| {
                target.address = *a;
                self.states.get(&target) != Some(&false)
            };
            // Only an instance that loses addresses is copied.
            if addrs.iter().all(&mut healthy) {
                continue;
            }
            // An instance with no address left stays, with an empty list:
            // the snapshot keeps its names and answers nothing.
            if let Endpoint::Addresses(addrs) = &mut Arc::make_mut(i).endpoint {
                addrs.retain(healthy);
            }
        }
        Some(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_that_leaves_and_returns_within_a_batch_keeps_its_state() {
        let zone = |with_db_1: bool| {
            let db_1 = "[[services.instances]]\nname = \"db-1\"\naddress = \"10.0.0.1\"\n";
            let text = format!(
                "zone = \"h.test\"\n[[services]]\nname = \"db\"\nport = 5432\n\
                 check = {{ tcp = true }}\n{}[[services.instances]]\nname = \"db-2\"\n\
                 address = \"10.0.0.2\"\n",
                if with_db_1 { db_1 } else { "" }
            );
            let zone = crate::sources::zone_file::parse(std::path::Path::new("h.toml"), &text);
            zone.unwrap().services.remove(0)
        };
        let key = b"\x01h\x04test\x00".to_vec();
        let mut book = Book::default();
        book.service_built(&key, &zone(true));
        let db_1 = book
            .groups
            .values()
            .flatten()
            .find(|t| t.instance == "db-1")
            .unwrap()
            .clone();
        book.take_updates();
        let flip = Flip {
            target: db_1.clone(),
            healthy: false,
            detail: "refused".into(),
        };
        assert_eq!(book.record(&flip), Ok(None));

        // Gone and back before the checker hears of it: still unhealthy,
        // as the checker (which never saw it leave) believes.
        book.service_built(&key, &zone(false));
        let filtered = book
            .service_built(&key, &zone(true))
            .expect("db-1 is filtered");
        let hidden = &filtered.instances[0];
        assert_eq!(hidden.endpoint, Endpoint::Addresses(vec![]));
        book.take_updates();
        assert_eq!(book.states.get(&db_1), Some(&false));

        // Gone when the checker is told: forgotten by both.
        book.service_built(&key, &zone(false));
        book.take_updates();
        assert_eq!(book.states.get(&db_1), None);
    }
}
