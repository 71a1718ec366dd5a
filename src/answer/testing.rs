//! Helpers the answer module's tests share: a small random number
//! generator for property tests, and comparing two snapshots answer for
//! answer.

use std::collections::BTreeMap;

use super::snapshot::{Answer, Cut, ZoneSnapshot};
use crate::model::{Endpoint, Instance};

pub(super) struct Rng(pub(super) u64);

/// An instance at these addresses, port 80, weight 1, priority 0, with no
/// check, tag or metadata.
pub(super) fn plain_instance(name: String, addresses: Vec<std::net::IpAddr>) -> Instance {
    Instance {
        name,
        endpoint: Endpoint::Addresses(addresses),
        port: 80,
        weight: 1,
        priority: 0,
        check: None,
        tags: Vec::new(),
        metadata: Vec::new(),
    }
}

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

pub(super) type Flat<'a> = (
    &'a [u8],
    Vec<Cut>,
    Option<(usize, usize, Option<Vec<&'a [u16]>>)>,
    &'a [u8],
);

pub(super) fn flat(a: &Answer) -> Flat<'_> {
    let shuffled = a.shuffled().map(|s| {
        let orders = s
            .drawn()
            .map(|o| (0..o.variants()).map(|v| o.get(v)).collect());
        (s.record_len(), s.count(), orders)
    });
    (a.body(), a.cuts().collect(), shuffled, a.rest())
}

/// Every name and, per name, its answers by type.
pub(super) fn answers(z: &ZoneSnapshot) -> BTreeMap<Vec<u8>, Vec<(u16, &Answer)>> {
    z.nodes
        .iter()
        .map(|(k, n)| {
            let answers = n.answers.iter().map(|e| (e.rtype, &e.answer)).collect();
            (k.to_vec(), answers)
        })
        .collect()
}

pub(super) fn assert_same(live: &ZoneSnapshot, fresh: &ZoneSnapshot, context: &str) {
    let (l, f) = (answers(live), answers(fresh));
    assert_eq!(
        l.keys().collect::<Vec<_>>(),
        f.keys().collect::<Vec<_>>(),
        "the same names, {context}"
    );
    for (key, la) in &l {
        let fa = &f[key];
        assert_eq!(
            la.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            fa.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            "the same types at {key:?}, {context}"
        );
        for ((t, a), (_, b)) in la.iter().zip(fa) {
            assert!(
                flat(a) == flat(b),
                "answer {}/{t} differs: {:?} vs {:?}, {context}",
                String::from_utf8_lossy(key),
                flat(a),
                flat(b)
            );
        }
    }
    assert_eq!(live.negative_soa, fresh.negative_soa, "{context}");
    assert_eq!(live.serial, fresh.serial, "{context}");
}
