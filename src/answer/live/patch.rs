//! Changes to a large service made by editing the RRsets of its names in
//! place, instead of gathering every instance's records again: what keeps
//! a change to one instance of a service with thousands from costing the
//! whole service. Used only where the result is provably the one a build
//! gives; anything else is gathered as before.

use super::*;

/// Services with fewer instances are gathered again whole on a change:
/// that is as cheap as patching, and one path less to keep right.
pub(super) const PATCH_FROM: usize = 16;

/// At most this many instances changed at once are patched in.
pub(super) const PATCH_CHANGED: usize = 8;

/// How many instances before the changed ones are looked at to find where
/// a new instance's records go in an RRset.
const PATCH_LOOK_BACK: usize = 32;

/// How many changes were patched in, so tests know they tried the patching.
#[cfg(test)]
pub(super) static PATCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An edit of one RRset of a name: `remove` records from `at` replaced by
/// `insert` (with their weights, for a service name's addresses).
struct Splice {
    rtype: u16,
    at: usize,
    remove: usize,
    insert: Vec<RData>,
    weights: Option<Vec<(u16, f64)>>,
}

impl LiveZone {
    /// A change to the instances of a large service, `new` replacing the
    /// service of the same key, made by editing the RRsets of its names in
    /// place: the records of the instances that differ are taken out and
    /// those of their replacements put in where a build would put them.
    /// Returns the names touched, the records of those whose node is
    /// replaced whole, and those edited in place; `None` (nothing done) when
    /// the change is not one this can do exactly, and the service is to be
    /// gathered again.
    ///
    /// Exact when the instances that differ share no record with the
    /// others (no name, address, SRV target or tag spelled otherwise), and
    /// no other service or host has records at the names they touch: then
    /// every RRset is the unchanged instances' records before them, theirs,
    /// and the unchanged instances' records after them.
    #[allow(clippy::type_complexity)]
    pub(super) fn patch(
        &mut self,
        key: &ServiceKey,
        old: &Service,
        start: usize,
        remove: usize,
        insert: &[Arc<Instance>],
    ) -> Option<(
        HashSet<Vec<u8>>,
        HashMap<Vec<u8>, NodeRecords>,
        Vec<Vec<u8>>,
    )> {
        let apex = &self.zone.apex;
        let part = |instances: &[Arc<Instance>]| Service {
            instances: instances.to_vec(),
            ..old.clone_without_instances()
        };
        let (before, after) = (part(&old.instances[start..start + remove]), part(insert));
        let changed: Vec<&Instance> = (before.instances.iter())
            .chain(&after.instances)
            .map(|i| &**i)
            .collect();
        if changed.len() > PATCH_CHANGED
            || changed
                .iter()
                .any(|i| !matches!(i.endpoint, Endpoint::Addresses(_)))
        {
            return None;
        }
        // The changed instances' records are theirs alone.
        let hosts: Vec<Vec<u8>> = changed
            .iter()
            .map(|i| target_key(apex, i))
            .collect::<Option<_>>()?;
        // The instance just before the change is where a new instance's
        // records most often go after (see `records_before`), which needs
        // it to share no record with the others either: both are worked
        // out in this one look at the service's instances.
        let prior = start.checked_sub(1).and_then(|i| {
            let instance = &*old.instances[i];
            let host = target_key(apex, instance)?;
            matches!(instance.endpoint, Endpoint::Addresses(_)).then_some((i, instance, host))
        });
        let mut prior_alone = prior.is_some();
        for (j, other) in old.instances.iter().enumerate() {
            let is_changed = (start..start + remove).contains(&j);
            if !is_changed && shares(&changed, &hosts, self.apex_len, other) {
                return None;
            }
            if let Some((i, instance, host)) = &prior
                && prior_alone
                && j != *i
                && shares(
                    &[instance],
                    std::slice::from_ref(host),
                    self.apex_len,
                    other,
                )
            {
                prior_alone = false;
            }
        }
        let mut alone: HashMap<usize, bool> = HashMap::new();
        if let Some((i, ..)) = prior {
            alone.insert(i, prior_alone);
        }
        let own: Vec<Vec<u8>> = service_names(apex, old)
            .map(|(a, b)| vec![lower_wire(&a), lower_wire(&b)])
            .unwrap_or_default();
        // An instance named like its service has its host name there.
        if hosts.iter().any(|h| own.contains(h)) {
            return None;
        }
        let gone = gathered(apex, &before);
        let come = gathered(apex, &after);
        let mut seen = HashSet::new();
        let mut looked_back: Vec<(usize, HashMap<Vec<u8>, NodeRecords>)> = Vec::new();
        let mut fresh: HashMap<Vec<u8>, NodeRecords> = HashMap::new();
        let mut edits: Vec<(Vec<u8>, Vec<Splice>, bool)> = Vec::new();
        let mut touched: HashSet<Vec<u8>> = HashSet::new();
        for name in gone.keys().chain(come.keys()) {
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
            let (was, will) = (gone.get(name), come.get(name));
            let Some(node) = self.names.get(name) else {
                // A name of the new instances alone.
                if was.is_some() {
                    return None;
                }
                fresh.insert(name.clone(), will?.clone());
                continue;
            };
            if [was, will]
                .into_iter()
                .flatten()
                .any(|n| n.name != node.name)
            {
                return None;
            }
            let mut types: Vec<u16> = [was, will]
                .into_iter()
                .flatten()
                .flat_map(|n| n.rrsets.keys().copied())
                .collect();
            types.sort_unstable();
            types.dedup();
            let mut splices = Vec::new();
            let mut left = 0;
            for &rtype in &types {
                let current = node.rrsets.get(&rtype).map_or(&[][..], Vec::as_slice);
                let out = was
                    .and_then(|n| n.rrsets.get(&rtype))
                    .map_or(&[][..], Vec::as_slice);
                let insert = will
                    .and_then(|n| n.rrsets.get(&rtype))
                    .cloned()
                    .unwrap_or_default();
                let at = match out.first() {
                    Some(first) => {
                        let at = current.iter().position(|r| r.same(first))?;
                        let run = current.get(at..at + out.len())?;
                        if !run.iter().zip(out).all(|(a, b)| a.same(b)) {
                            return None;
                        }
                        at
                    }
                    None => self.records_before(
                        apex,
                        old,
                        start,
                        name,
                        rtype,
                        current,
                        &mut looked_back,
                        &mut alone,
                    )?,
                };
                left += current.len() - out.len() + insert.len();
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
            let others_left = node.rrsets.keys().filter(|t| !types.contains(t)).count();
            // A name left without records stays when a build would still
            // make it: the service's own names, or a new instance's.
            let keep = left > 0 || others_left > 0 || will.is_some() || own.contains(name);
            if !keep {
                let was_theirs = hosts.contains(name)
                    || before.instances.iter().any(|i| {
                        service_names(apex, &before)
                            .and_then(|(_, srv)| try_child(&srv, &i.name))
                            .is_some_and(|n| lower_wire(&n) == *name)
                    });
                if !was_theirs {
                    return None;
                }
            }
            edits.push((name.clone(), splices, keep));
        }

        // Exact: now change.
        index(&mut self.by_target, apex, key, &before.instances, false);
        index(&mut self.by_target, apex, key, &after.instances, true);
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
            for s in splices {
                if s.remove > 0 || !s.insert.is_empty() {
                    edited.push((name.clone(), s.rtype, s.at));
                }
                let mut records = node.rrsets.take(s.rtype);
                if let Some(seen) = &mut seen {
                    for r in &records[s.at..s.at + s.remove] {
                        seen.remove(&r.key());
                    }
                    seen.extend(s.insert.iter().map(RData::key));
                }
                records.splice(s.at..s.at + s.remove, s.insert);
                let empty = records.is_empty();
                node.rrsets.set(s.rtype, records);
                if let Some(weights) = s.weights {
                    let weighted = node.weighted.get_or_insert_with(|| {
                        Box::new(Weighted {
                            max_answers,
                            by_type: Default::default(),
                        })
                    });
                    let list = weighted.by_type.or_default(s.rtype);
                    list.splice(s.at..s.at + s.remove, weights);
                    if empty {
                        weighted.by_type.remove(&s.rtype);
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
        PATCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((touched, fresh, changed_names))
    }

    /// How many records of `rtype` at `name` the service's instances before
    /// `start` make: just past the last record of the last of them with one
    /// there. `None` when it is not among the few looked at.
    #[allow(clippy::too_many_arguments)]
    fn records_before(
        &self,
        apex: &Name,
        service: &Service,
        start: usize,
        name: &[u8],
        rtype: u16,
        current: &[RData],
        looked_back: &mut Vec<(usize, HashMap<Vec<u8>, NodeRecords>)>,
        alone: &mut HashMap<usize, bool>,
    ) -> Option<usize> {
        for i in (start.saturating_sub(PATCH_LOOK_BACK)..start).rev() {
            let at = match looked_back.iter().position(|(j, _)| *j == i) {
                Some(at) => at,
                None => {
                    let one = Service {
                        instances: vec![service.instances[i].clone()],
                        ..service.clone_without_instances()
                    };
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
            let alone = *alone.entry(i).or_insert_with(|| {
                service.instances.iter().enumerate().all(|(j, other)| {
                    j == i
                        || !shares(
                            &[instance],
                            std::slice::from_ref(&host),
                            self.apex_len,
                            other,
                        )
                })
            });
            if !alone {
                return None;
            }
            let mut last = 0;
            for r in mine {
                last = last.max(current.iter().rposition(|c| c.same(r))?);
            }
            return Some(last + 1);
        }
        (start <= PATCH_LOOK_BACK).then_some(0)
    }
}

/// Whether `other` may have a record that one of `these` instances (all with
/// addresses; `hosts` their host names' keys) also has: the same name, an
/// address, an SRV target at one of their host names, or a tag spelled
/// otherwise (whose name takes the letter case of its first instance).
fn shares(these: &[&Instance], hosts: &[Vec<u8>], apex_len: usize, other: &Instance) -> bool {
    these.iter().any(|c| {
        c.name.eq_ignore_ascii_case(&other.name)
            || other.tags.iter().any(|tag| {
                c.tags
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(tag) && t != tag)
            })
            || match (&c.endpoint, &other.endpoint) {
                (Endpoint::Addresses(mine), Endpoint::Addresses(theirs)) => {
                    mine.iter().any(|a| theirs.contains(a))
                }
                (_, Endpoint::Target(_)) => hosts.iter().any(|h| points_at(h, apex_len, other)),
                (Endpoint::Target(_), _) => true,
            }
    })
}

/// The weights of a node's addresses of this type, if it has them.
fn weights_of(node: Option<&NodeRecords>, rtype: u16) -> Option<&Vec<(u16, f64)>> {
    node?.weighted.as_ref()?.by_type.get(&rtype)
}
