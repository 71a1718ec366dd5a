//! Weighted orders of a service's address records (RFC 2782 weights and
//! priorities): drawn once when a zone is built, picked per query.

use std::collections::BTreeMap;

/// [`ORDER_VARIANTS`] orders of `n` records, drawn once for a list of
/// (priority, weight): by weighted random sampling without replacement within
/// each priority level, lowest priority first. The first record of each
/// level is drawn by stratified sampling (the i-th order uses the point
/// (i + 1/2) / [`ORDER_VARIANTS`] of the cumulative weight), so a record comes
/// first in a share of the orders that matches its weight; the rest are drawn
/// with a fixed-seed generator, so a zone's answers are the same at every build.
///
/// 32 orders alone would leave instances of a large service out: with 100
/// equal instances, most would never come first. So the first record is
/// drawn per query from the lowest priority level with an alias table
/// (Vose), which gives every record exactly its weight's share of first
/// places at any size; the rest of the answer follows one of the orders.
#[derive(PartialEq)]
pub(super) struct Orders {
    /// Records per order.
    pub(super) n: usize,
    pub(super) indexes: Box<[u16]>,
    /// Alias table over the lowest priority level: (record index,
    /// threshold out of 2^32 to keep it, record index of its alias).
    pub(super) first: Box<[(u16, u32, u16)]>,
}

impl Orders {
    #[cfg(test)]
    pub(super) fn draw(weights: &[(u16, f64)]) -> Orders {
        Orders::draw_prefix(weights, weights.len())
    }

    /// Orders of only their first `len` records (at most all): no answer
    /// can carry more than a message holds, or than a service's
    /// `max_answers`, so drawing the rest would be wasted.
    pub(super) fn draw_prefix(weights: &[(u16, f64)], len: usize) -> Orders {
        let n = weights.len();
        let len = len.min(n);
        let mut indexes = Vec::with_capacity(len * ORDER_VARIANTS);
        let mut levels: BTreeMap<u16, Vec<(u16, f64)>> = BTreeMap::new();
        for (i, &(p, w)) in weights.iter().enumerate() {
            levels.entry(p).or_default().push((i as u16, w));
        }
        let by_level: Vec<Vec<(u16, f64)>> = levels.into_values().collect();
        let mut rng = SplitMix(0x5167_6e70_6f73_7400 ^ n as u64);
        let mut race: Vec<(f64, u16)> = Vec::with_capacity(n);
        let mut rest: Vec<u16> = Vec::with_capacity(n);
        for v in 0..ORDER_VARIANTS {
            let stratum = (v as f64 + 0.5) / ORDER_VARIANTS as f64;
            let end = indexes.len() + len;
            for level in &by_level {
                if indexes.len() >= end {
                    break;
                }
                // The first record: where the stratum falls in the level's
                // cumulative weight.
                let total: f64 = level.iter().map(|&(_, w)| w).sum();
                let mut point = stratum * total;
                let mut first = level.len() - 1;
                for (k, &(_, w)) in level.iter().enumerate() {
                    if point < w {
                        first = k;
                        break;
                    }
                    point -= w;
                }
                indexes.push(level[first].0);
                let wanted = (end - indexes.len()).min(level.len() - 1);
                if level.iter().all(|&(_, w)| w == level[0].1) {
                    // Equal weights: weighted sampling is a uniform shuffle
                    // (Fisher and Yates), of only the places wanted.
                    rest.clear();
                    rest.extend(
                        level
                            .iter()
                            .enumerate()
                            .filter(|&(k, _)| k != first)
                            .map(|(_, &(i, _))| i),
                    );
                    for k in 0..wanted {
                        let j = k + (rng.next_u64() % (rest.len() - k) as u64) as usize;
                        rest.swap(k, j);
                    }
                    indexes.extend_from_slice(&rest[..wanted]);
                    continue;
                }
                // The others: weighted sampling without replacement as a race
                // of exponential clocks (Efraimidis and Spirakis), n log n.
                race.clear();
                for (k, &(i, w)) in level.iter().enumerate() {
                    if k != first {
                        let u = 1.0 - rng.next_f64(); // in (0, 1]
                        race.push((-u.ln() / w, i));
                    }
                }
                let by_clock = |a: &(f64, u16), b: &(f64, u16)| a.0.total_cmp(&b.0);
                if wanted < race.len() {
                    race.select_nth_unstable_by(wanted, by_clock);
                    race.truncate(wanted);
                }
                race.sort_unstable_by(by_clock);
                indexes.extend(race.iter().map(|&(_, i)| i));
            }
        }
        Orders {
            n: len,
            indexes: indexes.into(),
            first: alias_table(by_level.first().map_or(&[][..], Vec::as_slice)),
        }
    }

    /// The record that goes first, from two random numbers.
    pub(super) fn pick_first(&self, r1: u32, r2: u32) -> u16 {
        let (index, keep, alias) = self.first[r1 as usize % self.first.len()];
        if r2 < keep { index } else { alias }
    }

    pub(super) fn variants(&self) -> usize {
        ORDER_VARIANTS
    }

    pub(super) fn get(&self, variant: usize) -> &[u16] {
        &self.indexes[variant * self.n..(variant + 1) * self.n]
    }
}

/// Vose's alias table over (record index, weight): each slot keeps its own
/// record with probability threshold/2^32 and otherwise gives its alias.
fn alias_table(level: &[(u16, f64)]) -> Box<[(u16, u32, u16)]> {
    let k = level.len();
    let total: f64 = level.iter().map(|&(_, w)| w).sum();
    let mut scaled: Vec<f64> = level.iter().map(|&(_, w)| w * k as f64 / total).collect();
    let mut table: Vec<(u16, u32, u16)> = level.iter().map(|&(i, _)| (i, u32::MAX, i)).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..k).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        table[s] = (level[s].0, (scaled[s] * u32::MAX as f64) as u32, level[l].0);
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    table.into()
}

/// A small deterministic generator (SplitMix64) for drawing orders.
struct SplitMix(u64);

impl SplitMix {
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The weights of a service name's address records, in RRset order.
#[derive(Clone, PartialEq)]
pub(super) struct Weighted {
    pub(super) max_answers: Option<u16>,
    pub(super) by_type: ByType,
}

/// The weights by record type (A, AAAA), in type order: a name has one or
/// two types, and a map's smallest node takes some 300 bytes, for each
/// service name of a zone.
#[derive(Clone, Default, PartialEq)]
pub(super) struct ByType(Vec<(u16, Vec<(u16, f64)>)>);

impl ByType {
    pub(super) fn get(&self, rtype: &u16) -> Option<&Vec<(u16, f64)>> {
        let at = self.0.binary_search_by_key(rtype, |(t, _)| *t).ok()?;
        Some(&self.0[at].1)
    }

    /// The weights of this type, an empty list added if there are none.
    pub(super) fn or_default(&mut self, rtype: u16) -> &mut Vec<(u16, f64)> {
        let at = match self.0.binary_search_by_key(&rtype, |(t, _)| *t) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (rtype, Vec::new()));
                at
            }
        };
        &mut self.0[at].1
    }

    pub(super) fn remove(&mut self, rtype: &u16) {
        if let Ok(at) = self.0.binary_search_by_key(rtype, |(t, _)| *t) {
            self.0.remove(at);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How many weighted orders each multi-address A/AAAA answer of a service
/// has. The first position of the orders is drawn by stratified sampling, so
/// an instance's share of first places is its share of the weight to within
/// 1/32 (exactly, for weights such as 1:3 or 1:1:2); a query picks one of the
/// orders at random. 32 keeps that error small while the orders stay cheap:
/// they are shared by every answer with the same weights (see [`Orders`]).
pub(super) const ORDER_VARIANTS: usize = 32;

/// The weight that a weight-0 instance counts for when orders are drawn:
/// RFC 2782 gives such targets "a very small chance" of being chosen.
pub(super) const ZERO_WEIGHT: f64 = 0.01;
