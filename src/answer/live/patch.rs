//! Changes to a large service made by editing the RRsets of its names in
//! place, instead of gathering every instance's records again: what keeps
//! a change to one instance of a service with thousands from costing the
//! whole service. Used only where the result is provably the one a build
//! gives; anything else is gathered as before.

use std::ops::Range;

use super::holdings::{Holdings, Shared, shared};
use super::*;
use crate::answer::build::address_share;
use crate::model::names::check_label;

/// Services with fewer instances are gathered again whole on a change:
/// that is as cheap as patching, and one path less to keep right.
pub(super) const PATCH_FROM: usize = 16;

/// How far [`runs`] looks ahead for the next instance that did
/// not change: a longer run of changed instances is gathered instead.
const PATCH_LOOK_AHEAD: usize = 16;

/// How many instances before the changed ones are looked at to find where
/// a new instance's records go in an RRset.
const PATCH_LOOK_BACK: usize = 32;

#[cfg(test)]
thread_local! {
    /// How many changes this thread patched in, so tests know they tried
    /// the patching (per thread: tests run side by side).
    pub(super) static PATCHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One run of a change to a service's instances: the old instances
/// `start..start + remove` replaced by the new instances `insert`.
pub(super) struct Run {
    start: usize,
    remove: usize,
    insert: Range<usize>,
}

/// How `old`'s instances become `new`'s as runs of instances replaced, in
/// order; `None` when a run is longer than is worth patching. Instances
/// match when equal, looking a few ahead for the next match: changes to a
/// service's instances are registrations, removals or updates, each in its
/// place in the order.
pub(super) fn runs(old: &Service, new: &Service) -> Option<Vec<Run>> {
    let (a, b) = (&old.instances, &new.instances);
    // Past the common start and end, walked in order (looking an instance
    // up by its place costs more than stepping to the next).
    let (start, end) = differing_bounds(old, new);
    let (a_end, b_end) = (a.len() - end, b.len() - end);
    let (mut i, mut j) = (start, start);
    let mut runs = Vec::new();
    while i < a_end || j < b_end {
        if i < a_end && j < b_end && same_instance(&a[i], &b[j]) {
            i += 1;
            j += 1;
            continue;
        }
        // The nearest next match: x of a's removed, y of b's put in.
        let (x, y) = (1..=PATCH_LOOK_AHEAD).find_map(|d| {
            (0..=d).find_map(|x| {
                let y = d - x;
                let (k, l) = (i + x, j + y);
                let end = k == a_end && l == b_end;
                (end || (k < a_end && l < b_end && same_instance(&a[k], &b[l]))).then_some((x, y))
            })
        })?;
        runs.push(Run {
            start: i,
            remove: x,
            insert: j..j + y,
        });
        i += x;
        j += y;
    }
    Some(runs)
}

/// What a patch did.
pub(super) struct Patched {
    /// The names touched whose records were not edited in place.
    pub(super) touched: HashSet<Vec<u8>>,
    /// The records of those of them that still exist.
    pub(super) fresh: HashMap<Vec<u8>, NodeRecords>,
    /// The names whose records were edited in place.
    pub(super) in_place: Vec<Vec<u8>>,
    pub(super) changed: ChangedInstances,
}

/// The instances a patch put into a service: every name they have records
/// at is among the names it changed (each is edited in place or settled),
/// so the names whose answers read a changed name need no look at them
/// (see [`LiveZone::readers`]).
pub(super) struct ChangedInstances {
    pub(super) service: ServiceKey,
    /// What they hold.
    pub(super) inserted: Holdings,
}

/// An edit of one RRset of a name: `remove` records from `at` (in the
/// RRset before the change) replaced by `insert` (with their weights, for
/// a service name's addresses).
struct Splice {
    rtype: u16,
    at: usize,
    remove: usize,
    insert: Vec<RData>,
    weights: Option<Vec<(u16, f64)>>,
}

/// An instance the change looks at closely: a changed one, whose records
/// must be its run's alone, or the one just before a run, where a new
/// instance's records most often go after (see `records_before`), whose
/// records must be its own alone.
struct Subject<'a> {
    instance: &'a Instance,
    /// The key of its host name.
    host: Vec<u8>,
    run: usize,
    /// The instance before the run (at its start less one), not in it.
    prior: bool,
}

impl LiveZone {
    /// A change to the instances of a large service, `new` replacing `old`
    /// (of the same key and fields) by these runs, made by editing the
    /// RRsets of its names in place: the records of the instances that
    /// differ are taken out and those of their replacements put in where a
    /// build would put them, all runs at once, in one pass over each
    /// RRset. Returns what it did (see [`Patched`]); `None` (nothing done)
    /// when the change is not one this can do exactly, and the service is
    /// to be gathered again.
    ///
    /// Exact when the instances that differ share no record with any
    /// instance outside their run (no name, address, SRV target or tag
    /// spelled otherwise), and no other service or host has records at the
    /// names they touch: then every RRset is the unchanged instances'
    /// records with each run's records in its place among them.
    pub(super) fn patch(
        &mut self,
        key: &ServiceKey,
        old: &Service,
        new: &Service,
        runs: &[Run],
    ) -> Option<Patched> {
        let apex = &self.zone.apex;
        // Each run's instances before and after, as services of their own.
        let parts: Vec<(Service, Service)> = runs
            .iter()
            .map(|r| {
                (
                    old.part(r.start..r.start + r.remove),
                    new.part(r.insert.clone()),
                )
            })
            .collect();
        // Worth it while the change is small beside the service: past a
        // quarter, gathering it whole costs about as much.
        let count: usize = (parts.iter())
            .map(|(b, a)| b.instances.len() + a.instances.len())
            .sum();
        if count * 4 > old.instances.len() {
            return None;
        }
        let mut subjects = Vec::with_capacity(count + runs.len());
        for (r, (run, (before, after))) in runs.iter().zip(&parts).enumerate() {
            for instance in before.instances.iter().chain(&after.instances) {
                // The changed instances' records are theirs alone.
                if !matches!(instance.endpoint, Endpoint::Addresses(_)) {
                    return None;
                }
                let host = target_key(apex, instance)?;
                subjects.push(Subject {
                    instance,
                    host,
                    run: r,
                    prior: false,
                });
            }
            if let Some(i) = run.start.checked_sub(1)
                && let instance = &*old.instances[i]
                && matches!(instance.endpoint, Endpoint::Addresses(_))
                && let Some(host) = target_key(apex, instance)
            {
                subjects.push(Subject {
                    instance,
                    host,
                    run: r,
                    prior: true,
                });
            }
        }
        // What the service's instances hold, counted; what each run's take
        // away and put in.
        let holdings = (self.holdings.remove(key))
            .unwrap_or_else(|| Holdings::of(old.instances.iter().map(|i| &**i)));
        let of = |instances: &Instances| Holdings::of(instances.iter().map(|i| &**i));
        let removed: Vec<Holdings> = parts.iter().map(|(b, _)| of(&b.instances)).collect();
        let inserted: Vec<Holdings> = parts.iter().map(|(_, a)| of(&a.instances)).collect();
        let all_inserted = Holdings::of(
            parts
                .iter()
                .flat_map(|(_, a)| a.instances.iter().map(|i| &**i)),
        );
        // What each run's prior instance shares; whether an instance looked
        // at shares an address with one outside its run: then the address
        // records of the service's names are made again whole.
        let mut prior_shares = vec![Shared::Nothing; runs.len()];
        let mut addresses_shared = false;
        for subject in &subjects {
            let r = subject.run;
            let (instance, host) = (subject.instance, &subject.host);
            let shares = if subject.prior {
                let me = Holdings::of([instance]);
                shared(instance, host, &holdings, &[&all_inserted], &[&me])
            } else {
                let own_run = [&removed[r], &inserted[r]];
                shared(instance, host, &holdings, &[&all_inserted], &own_run)
            };
            addresses_shared |= shares == Shared::Addresses;
            if subject.prior {
                prior_shares[r] = prior_shares[r].max(shares);
            } else if shares == Shared::Records {
                return None;
            }
        }
        let mut alone: HashMap<usize, Shared> = HashMap::new();
        for s in subjects.iter().filter(|s| s.prior) {
            alone.insert(runs[s.run].start - 1, prior_shares[s.run]);
        }
        let service_key = service_names(apex, old).map(|(name, _)| lower_wire(&name));
        let own: Vec<Vec<u8>> = service_names(apex, old)
            .map(|(a, b)| vec![lower_wire(&a), lower_wire(&b)])
            .unwrap_or_default();
        // An instance named like its service has its host name there.
        if subjects.iter().any(|s| !s.prior && own.contains(&s.host)) {
            return None;
        }
        // What each run's instances had, and have, by name.
        type ByName = HashMap<Vec<u8>, NodeRecords>;
        let records: Vec<(ByName, ByName)> = parts
            .iter()
            .map(|(before, after)| (gathered(apex, before), gathered(apex, after)))
            .collect();
        let mut seen = HashSet::new();
        let mut looked_back: Vec<(usize, HashMap<Vec<u8>, NodeRecords>)> = Vec::new();
        let mut fresh: HashMap<Vec<u8>, NodeRecords> = HashMap::new();
        let mut edits: Vec<(Vec<u8>, Vec<Splice>, bool)> = Vec::new();
        let mut touched: HashSet<Vec<u8>> = HashSet::new();
        let names = records
            .iter()
            .flat_map(|(gone, come)| gone.keys().chain(come.keys()));
        for name in names {
            if !touched.insert(name.clone()) {
                continue;
            }
            // Nobody else has records here.
            if self.base_keys.contains(name) {
                return None;
            }
            let mut others = BTreeSet::new();
            self.contributors(name, &mut seen, &mut others);
            if others.iter().any(|k| k != key) {
                return None;
            }
            // The runs with records here, in order: what each had, and has.
            let here: Vec<(usize, Option<&NodeRecords>, Option<&NodeRecords>)> = (records.iter())
                .enumerate()
                .filter_map(|(r, (gone, come))| {
                    let (was, will) = (gone.get(name), come.get(name));
                    (was.is_some() || will.is_some()).then_some((r, was, will))
                })
                .collect();
            let Some(node) = self.names.get(name) else {
                // A name of one run's new instances alone.
                let [(_, None, Some(will))] = here[..] else {
                    return None;
                };
                fresh.insert(name.clone(), will.clone());
                continue;
            };
            if (here.iter())
                .flat_map(|&(_, was, will)| [was, will])
                .flatten()
                .any(|n| n.name != node.name)
            {
                return None;
            }
            let mut types: Vec<u16> = (here.iter())
                .flat_map(|&(_, was, will)| [was, will])
                .flatten()
                .flat_map(|n| n.rrsets.keys().copied())
                .collect();
            types.sort_unstable();
            types.dedup();
            let mut splices = Vec::new();
            let mut left = 0;
            for &rtype in &types {
                let current = node.rrsets.get(&rtype).map_or(&[][..], Vec::as_slice);
                let mut positions = Positions::new(current, here.len());
                left += current.len();
                // Addresses a changed instance shares with another: their
                // records at the service's names are made again whole.
                if addresses_shared
                    && (rtype == rtype::A || rtype == rtype::AAAA)
                    && let Some(tag) = tag_of(name, service_key.as_deref()?)
                {
                    if weights_of(Some(node), rtype).map_or(0, Vec::len) != current.len() {
                        return None;
                    }
                    let (insert, weights) = addresses_at(new, self.apex_len, tag, rtype)?;
                    left = left - current.len() + insert.len();
                    splices.push(Splice {
                        rtype,
                        at: 0,
                        remove: current.len(),
                        insert,
                        weights: Some(weights),
                    });
                    continue;
                }
                // Where the splice before ended: the next starts after it.
                let mut end = 0;
                for &(r, was, will) in &here {
                    let out =
                        (was.and_then(|n| n.rrsets.get(&rtype))).map_or(&[][..], Vec::as_slice);
                    let insert = (will.and_then(|n| n.rrsets.get(&rtype)))
                        .cloned()
                        .unwrap_or_default();
                    if out.is_empty() && insert.is_empty() {
                        continue;
                    }
                    let at = match out.first() {
                        Some(first) => {
                            let at = positions.find(first, runs[r].start)?;
                            let run = current.get(at..at + out.len())?;
                            if !run.iter().zip(out).all(|(a, b)| a.same(b)) {
                                return None;
                            }
                            at
                        }
                        None => self.records_before(
                            apex,
                            old,
                            runs,
                            r,
                            name,
                            rtype,
                            &mut positions,
                            &mut looked_back,
                            &mut alone,
                            &holdings,
                        )?,
                    };
                    if at < end {
                        return None;
                    }
                    end = at + out.len();
                    left = left - out.len() + insert.len();
                    let weights = match (weights_of(Some(node), rtype), weights_of(will, rtype)) {
                        (None, None) if weights_of(was, rtype).is_none() => None,
                        (current_weights, new_weights) => {
                            // Weights go with the addresses, one for one.
                            if current_weights.map_or(0, Vec::len) != current.len()
                                || new_weights.map_or(0, Vec::len) != insert.len()
                                || weights_of(was, rtype).map_or(0, Vec::len) != out.len()
                            {
                                return None;
                            }
                            Some(new_weights.cloned().unwrap_or_default())
                        }
                    };
                    splices.push(Splice {
                        rtype,
                        at,
                        remove: out.len(),
                        insert,
                        weights,
                    });
                }
            }
            let others_left = node.rrsets.keys().filter(|t| !types.contains(t)).count();
            // A name left without records stays when a build would still
            // make it: the service's own names, or a new instance's.
            let keep = left > 0
                || others_left > 0
                || here.iter().any(|(_, _, will)| will.is_some())
                || own.contains(name);
            if !keep {
                let was_theirs = subjects.iter().any(|s| !s.prior && s.host == *name)
                    || parts.iter().any(|(before, _)| {
                        let srv = service_names(apex, before).map(|(_, srv)| srv);
                        before.instances.iter().any(|i| {
                            (srv.as_ref())
                                .and_then(|srv| try_child(srv, &i.name))
                                .is_some_and(|n| lower_wire(&n) == *name)
                        })
                    });
                if !was_theirs {
                    return None;
                }
            }
            edits.push((name.clone(), splices, keep));
        }

        // Exact: now change.
        let changed = ChangedInstances {
            service: key.clone(),
            inserted: all_inserted,
        };
        let mut holdings = holdings;
        for (before, after) in &parts {
            (before.instances.iter()).for_each(|i| holdings.add(i, -1));
            (after.instances.iter()).for_each(|i| holdings.add(i, 1));
        }
        self.holdings.insert(key.clone(), holdings);
        for (before, after) in &parts {
            index(&mut self.by_target, apex, key, &before.instances, false);
            index(&mut self.by_target, apex, key, &after.instances, true);
        }
        let max_answers = old.max_answers;
        let mut changed_names = Vec::new();
        let mut edited = Vec::new();
        for (name, splices, keep) in edits {
            if !keep {
                // Gone: `apply` finds it absent from `fresh`.
                continue;
            }
            touched.remove(&name);
            let node = self.names.get_mut(&name).expect("a name with records");
            let mut seen = node.seen.take();
            for of_type in splices.chunk_by(|a, b| a.rtype == b.rtype) {
                let rtype = of_type[0].rtype;
                edited.push((name.clone(), rtype, of_type[0].at));
                let mut records = node.rrsets.take(rtype);
                if let Some(seen) = &mut seen {
                    for s in of_type {
                        for r in &records[s.at..s.at + s.remove] {
                            seen.remove(&r.key());
                        }
                        seen.extend(s.insert.iter().map(RData::key));
                    }
                }
                splice_all(
                    &mut records,
                    of_type.iter().map(|s| (s.at, s.remove, &s.insert[..])),
                );
                let empty = records.is_empty();
                node.rrsets.set(rtype, records);
                if of_type.iter().any(|s| s.weights.is_some()) {
                    let weighted = node.weighted.get_or_insert_with(|| {
                        Box::new(Weighted {
                            max_answers,
                            by_type: Default::default(),
                        })
                    });
                    let list = weighted.by_type.or_default(rtype);
                    let none = Vec::new();
                    splice_all(
                        list,
                        (of_type.iter())
                            .map(|s| (s.at, s.remove, &s.weights.as_ref().unwrap_or(&none)[..])),
                    );
                    if empty {
                        weighted.by_type.remove(&rtype);
                    }
                    if weighted.by_type.is_empty() {
                        node.weighted = None;
                    }
                }
            }
            node.seen = seen;
            changed_names.push(name);
        }
        for (name, rtype, at) in edited {
            self.edited_from(name, rtype, at);
        }
        #[cfg(test)]
        PATCHED.set(PATCHED.get() + 1);
        Some(Patched {
            touched,
            fresh,
            in_place: changed_names,
            changed,
        })
    }

    /// How many records of `rtype` at `name` the service's instances before
    /// run `r` make: just past the last record of the last of them with one
    /// there. `None` when it is not among the few unchanged instances
    /// looked at.
    #[allow(clippy::too_many_arguments)]
    fn records_before(
        &self,
        apex: &Name,
        service: &Service,
        runs: &[Run],
        r: usize,
        name: &[u8],
        rtype: u16,
        positions: &mut Positions,
        looked_back: &mut Vec<(usize, HashMap<Vec<u8>, NodeRecords>)>,
        alone: &mut HashMap<usize, Shared>,
        holdings: &Holdings,
    ) -> Option<usize> {
        let start = runs[r].start;
        // Back to the run before, whose records may be moving.
        let after_previous = r.checked_sub(1).map(|p| runs[p].start + runs[p].remove);
        let from = start
            .saturating_sub(PATCH_LOOK_BACK)
            .max(after_previous.unwrap_or(0));
        for i in (from..start).rev() {
            let at = match looked_back.iter().position(|(j, _)| *j == i) {
                Some(at) => at,
                None => {
                    let one = service.part(i..i + 1);
                    looked_back.push((i, gathered(apex, &one)));
                    looked_back.len() - 1
                }
            };
            let Some(mine) = looked_back[at]
                .1
                .get(name)
                .and_then(|n| n.rrsets.get(&rtype))
                .filter(|r| !r.is_empty())
            else {
                continue;
            };
            // Its last record ends the records before only if it placed
            // it, not an instance before it with the same record.
            // Worked out once per instance, however many RRsets ask.
            let instance = &service.instances[i];
            if !matches!(instance.endpoint, Endpoint::Addresses(_)) {
                return None;
            }
            let host = target_key(apex, instance)?;
            let shared = *(alone.entry(i)).or_insert_with(|| {
                shared(
                    instance,
                    &host,
                    holdings,
                    &[],
                    &[&Holdings::of([&**instance])],
                )
            });
            // An address another instance has too may be placed by it.
            let address = rtype == rtype::A || rtype == rtype::AAAA;
            if shared == Shared::Records || (address && shared == Shared::Addresses) {
                return None;
            }
            let mut last = 0;
            for r in mine {
                last = last.max(positions.find(r, i)?);
            }
            return Some(last + 1);
        }
        (after_previous.is_none() && start <= PATCH_LOOK_BACK).then_some(0)
    }
}

/// Where records are in an RRset before the change (each is there once).
/// A record is looked for first around where it most likely is: at the
/// place of its instance in the service, as most instances have one record
/// at each name (a service's SRV and PTR names) or about one (its
/// addresses). Failing that, from the end where registrations mostly go,
/// unless many will be looked for in a long RRset; then through a map
/// made once.
struct Positions<'a> {
    records: &'a [RData],
    many: bool,
    map: Option<HashMap<&'a RData, usize>>,
}

/// How far around the likely place a record is looked for.
const NEAR: usize = 64;

impl<'a> Positions<'a> {
    fn new(records: &'a [RData], lookups: usize) -> Self {
        Positions {
            records,
            many: lookups > 2 && records.len() > 64,
            map: None,
        }
    }

    /// Where `record` is; `likely`: the place of its instance.
    fn find(&mut self, record: &RData, likely: usize) -> Option<usize> {
        let records = self.records;
        let n = records.len();
        // Nearest first: outward from the likely place, both ways.
        let at = likely.min(n.saturating_sub(1));
        for d in 0..NEAR {
            if at + d < n && records[at + d].same(record) {
                return Some(at + d);
            }
            if d > 0 && d <= at && records[at - d].same(record) {
                return Some(at - d);
            }
        }
        if !self.many {
            return records.iter().rposition(|r| r.same(record));
        }
        let map = self
            .map
            .get_or_insert_with(|| records.iter().enumerate().map(|(i, r)| (r, i)).collect());
        map.get(record).copied()
    }
}

/// Applies edits (where, in the list before them, how many to remove, what
/// to put there) given in order: in place for one, in one pass for more.
fn splice_all<'a, T: Clone + 'a>(
    list: &mut Vec<T>,
    edits: impl IntoIterator<Item = (usize, usize, &'a [T])>,
) {
    let mut edits = edits.into_iter().peekable();
    let Some((at, remove, insert)) = edits.next() else {
        return;
    };
    if edits.peek().is_none() {
        list.splice(at..at + remove, insert.iter().cloned());
        return;
    }
    let old = std::mem::take(list);
    let mut out = Vec::with_capacity(old.len() + insert.len());
    let mut old = old.into_iter();
    let mut next = 0;
    for (at, remove, insert) in std::iter::once((at, remove, insert)).chain(edits) {
        out.extend(old.by_ref().take(at - next));
        old.by_ref().take(remove).for_each(drop);
        next = at + remove;
        out.extend(insert.iter().cloned());
    }
    out.extend(old);
    *list = out;
}

/// The address records a build makes at a name of the service (its own
/// name, `tag` none, or a tag's name) of type `rtype`, with their weights,
/// from every instance in order, each address placed by the first instance
/// with it. `None` when an instance's name or tag is not a plain label
/// (then whether a build places it is left to the build), or an instance
/// is named like the service (its host's addresses are there too).
fn addresses_at(
    service: &Service,
    apex_len: usize,
    tag: Option<&[u8]>,
    rtype: u16,
) -> Option<(Vec<RData>, Weights)> {
    let plain = |label: &str| check_label("", label).is_ok();
    let mut seen = HashSet::new();
    let (mut records, mut weights) = (Vec::new(), Vec::new());
    for instance in &service.instances {
        let Endpoint::Addresses(addrs) = &instance.endpoint else {
            continue;
        };
        if !plain(&instance.name)
            || apex_len + instance.name.len() + 1 > 255
            || instance.name.eq_ignore_ascii_case(&service.name)
        {
            return None;
        }
        if let Some(tag) = tag {
            let mut tags = service.tags.iter().chain(&instance.tags);
            if !tags.all(|t| plain(t)) {
                return None;
            }
            let mut tags = service.tags.iter().chain(&instance.tags);
            if !tags.any(|t| t.as_bytes().eq_ignore_ascii_case(tag)) {
                continue;
            }
        }
        let share = address_share(instance, addrs);
        for addr in addrs {
            let record = RData::Addr(*addr);
            if record.rtype() == rtype && seen.insert(*addr) {
                records.push(record);
                weights.push((instance.priority, share(addr)));
            }
        }
    }
    Some((records, weights))
}

/// The (priority, weight) of each record of a weighted RRset, in order.
type Weights = Vec<(u16, f64)>;

/// Which of the service's names `name` is, by its key: the service's own
/// (`Some(None)`), a tag's (`Some(Some(tag))`), or neither.
fn tag_of<'n>(name: &'n [u8], service: &[u8]) -> Option<Option<&'n [u8]>> {
    if name == service {
        return Some(None);
    }
    let label = 1 + *name.first()? as usize;
    (name.get(label..) == Some(service)).then(|| Some(&name[1..label]))
}

/// The weights of a node's addresses of this type, if it has them.
fn weights_of(node: Option<&NodeRecords>, rtype: u16) -> Option<&Vec<(u16, f64)>> {
    node?.weighted.as_ref()?.by_type.get(&rtype)
}
