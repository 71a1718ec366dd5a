//! What the instances of a large service hold that makes records shared
//! with another instance, counted: kept beside the service while it is
//! patched, so that whether a changed instance shares a record is a few
//! lookups, not a look at every instance of the service.

use std::collections::hash_map::Entry;
use std::net::IpAddr;

use foldhash::HashMap;

use crate::answer::wire::lower_wire;
use crate::model::{Endpoint, Instance};

/// One thing an instance holds that another may hold too.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Held {
    /// Its name, lowercase: its host and DNS-SD names are made of it.
    Name(Vec<u8>),
    /// A tag, lowercase, however it is spelled.
    Tag(Vec<u8>),
    /// A tag as it is spelled (the name it makes takes the letter case of
    /// its first instance).
    Spelled(String),
    /// An address: the service's names list it once.
    Address(IpAddr),
    /// The key of the name its SRV record points at, when not its own host.
    Target(Vec<u8>),
}

/// How much of a record one instance shares with others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Shared {
    Nothing,
    /// Address records of the service's names.
    Addresses,
    /// Records of any kind.
    Records,
}

/// How many of some instances hold each thing (each held once per time an
/// instance holds it, so that adding and taking away stay exact).
#[derive(Default, PartialEq)]
pub(super) struct Holdings(HashMap<Held, i64>);

impl Holdings {
    /// What `instances` hold.
    pub(super) fn of<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Holdings {
        let mut holdings = Holdings::default();
        for instance in instances {
            holdings.add(instance, 1);
        }
        holdings
    }

    /// Counts what `instance` holds `times` more times (-1: once less).
    pub(super) fn add(&mut self, instance: &Instance, times: i64) {
        let mut count = |held: Held| match self.0.entry(held) {
            Entry::Occupied(mut n) => {
                *n.get_mut() += times;
                if *n.get() == 0 {
                    n.remove();
                }
            }
            Entry::Vacant(n) => {
                n.insert(times);
            }
        };
        count(Held::Name(instance.name.to_ascii_lowercase().into_bytes()));
        for tag in &instance.tags {
            count(Held::Tag(tag.to_ascii_lowercase().into_bytes()));
            count(Held::Spelled(tag.clone()));
        }
        match &instance.endpoint {
            Endpoint::Addresses(addresses) => {
                for a in addresses {
                    count(Held::Address(*a));
                }
            }
            Endpoint::Target(t) => count(Held::Target(lower_wire(t))),
        }
    }

    fn count(&self, held: &Held) -> i64 {
        self.0.get(held).copied().unwrap_or(0)
    }

    /// How many of the instances are named this (lowercase).
    pub(super) fn named(&self, name: &[u8]) -> i64 {
        self.count(&Held::Name(name.to_vec()))
    }

    /// How many of the instances have an SRV target at this key.
    pub(super) fn targeting(&self, key: &[u8]) -> i64 {
        self.count(&Held::Target(key.to_vec()))
    }
}

/// What `instance` (with addresses, its host name's key `host`) shares
/// with the instances counted by `holdings` plus `more` less `less`: by
/// the same name, an SRV target at its host name, or a tag spelled
/// otherwise, records of all kinds; by an address, the address records of
/// the service's names.
pub(super) fn shared(
    instance: &Instance,
    host: &[u8],
    holdings: &Holdings,
    more: &[&Holdings],
    less: &[&Holdings],
) -> Shared {
    let count = |held: &Held| {
        holdings.count(held) + more.iter().map(|h| h.count(held)).sum::<i64>()
            - less.iter().map(|h| h.count(held)).sum::<i64>()
    };
    let records = count(&Held::Name(instance.name.to_ascii_lowercase().into_bytes())) > 0
        || count(&Held::Target(host.to_vec())) > 0
        || instance.tags.iter().any(|tag| {
            // Its tag, spelled otherwise.
            count(&Held::Tag(tag.to_ascii_lowercase().into_bytes()))
                > count(&Held::Spelled(tag.clone()))
        });
    let Endpoint::Addresses(addresses) = &instance.endpoint else {
        return Shared::Records;
    };
    if records {
        Shared::Records
    } else if addresses.iter().any(|a| count(&Held::Address(*a)) > 0) {
        Shared::Addresses
    } else {
        Shared::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    fn instance(name: &str, endpoint: Endpoint, tags: &[&str]) -> Instance {
        Instance {
            name: name.into(),
            endpoint,
            port: 80,
            weight: 1,
            priority: 0,
            check: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            metadata: Vec::new(),
        }
    }

    fn at(address: &str) -> Endpoint {
        Endpoint::Addresses(vec![address.parse().unwrap()])
    }

    #[test]
    fn each_thing_held_is_shared_with_the_instances_counted_and_no_others() {
        let host =
            |name: &str| lower_wire(&Name::from_ascii(format!("{name}.svc.example.")).unwrap());
        let me = instance("a", at("10.0.0.1"), &["blue"]);
        let mine = |holdings: &Holdings| {
            let less = Holdings::of([&me]);
            shared(&me, &host("a"), holdings, &[], &[&less])
        };
        let target = Endpoint::Target(Box::new(Name::from_ascii("A.svc.example.").unwrap()));
        let cases = [
            (instance("b", at("10.0.0.2"), &["blue"]), Shared::Nothing),
            (instance("A", at("10.0.0.2"), &[]), Shared::Records),
            (instance("b", target, &[]), Shared::Records),
            (instance("b", at("10.0.0.2"), &["Blue"]), Shared::Records),
            (instance("b", at("10.0.0.1"), &["blue"]), Shared::Addresses),
        ];
        for (other, expected) in &cases {
            let mut holdings = Holdings::of([&me, other]);
            assert_eq!(mine(&holdings), *expected, "with {}", other.name);
            // Counted in `less` (its run), or taken away: not shared.
            assert_eq!(
                shared(
                    &me,
                    &host("a"),
                    &holdings,
                    &[],
                    &[&Holdings::of([&me, other])]
                ),
                Shared::Nothing
            );
            holdings.add(other, -1);
            assert_eq!(mine(&holdings), Shared::Nothing);
            assert!(holdings == Holdings::of([&me]));
            // Counted in `more` (put in by another run): shared.
            let more = Holdings::of([other]);
            let less = Holdings::of([&me]);
            assert_eq!(
                shared(&me, &host("a"), &holdings, &[&more], &[&less]),
                *expected
            );
        }
    }
}
