//! The journal IXFR answers from: per zone, the record differences of its
//! recent versions, oldest first, bounded in number.
//!
//! Each published snapshot that changes a zone adds one entry (from serial,
//! to serial, the SOA records of both, and the diff). A secondary at serial S
//! gets the entries from S on condensed into one difference; a serial the
//! journal does not reach gets the whole zone.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::answer::records::{Diff, WireRecord};

/// Default number of changes kept per zone.
pub const DEFAULT_JOURNAL: usize = 1000;

/// Most bytes of records a zone's journal keeps, whatever its number of
/// changes: a zone file rewritten from end to end makes one change as big
/// as the zone, and a thousand of those must not fill the memory.
pub const MAX_JOURNAL_BYTES: usize = 64 << 20;

/// One version step of a zone.
pub struct Step {
    /// Serial before.
    pub from: u32,
    /// Serial after.
    pub to: u32,
    /// SOA record before.
    pub from_soa: WireRecord,
    /// What changed, SOA aside.
    pub diff: Arc<Diff>,
}

/// A zone's recent steps.
#[derive(Default)]
pub struct Journal {
    steps: VecDeque<Step>,
    /// Bytes of records in `steps`.
    bytes: usize,
}

impl Step {
    fn bytes(&self) -> usize {
        let records =
            |set: &std::collections::BTreeSet<WireRecord>| set.iter().map(Vec::len).sum::<usize>();
        self.from_soa.len() + records(&self.diff.removed) + records(&self.diff.added)
    }
}

impl Journal {
    /// Adds a step, dropping the oldest beyond `limit`. A step that does
    /// not start where the last one ended (the zone was rebuilt from
    /// nothing) starts the journal over.
    pub fn push(&mut self, step: Step, limit: usize) {
        if self.steps.back().is_some_and(|last| last.to != step.from) {
            self.clear();
        }
        self.bytes += step.bytes();
        self.steps.push_back(step);
        while self.steps.len() > limit || (self.bytes > MAX_JOURNAL_BYTES && self.steps.len() > 1) {
            let dropped = self.steps.pop_front().expect("not empty");
            self.bytes -= dropped.bytes();
        }
    }

    /// Forgets every step (the zone went away).
    pub fn clear(&mut self) {
        self.steps.clear();
        self.bytes = 0;
    }

    /// The serials the journal reaches from and to.
    pub fn range(&self) -> Option<(u32, u32)> {
        Some((self.steps.front()?.from, self.steps.back()?.to))
    }

    /// Number of steps kept.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether no step is kept.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The difference from serial `from` to serial `to`, condensed, with the
    /// SOA record at `from`; `None` when the journal has no path between
    /// them.
    pub fn between(&self, from: u32, to: u32) -> Option<(WireRecord, Diff)> {
        let start = self.steps.iter().position(|s| s.from == from)?;
        let mut diff = Diff::default();
        for step in self.steps.iter().skip(start) {
            diff.then(&step.diff);
            if step.to == to {
                return Some((self.steps[start].from_soa.clone(), diff));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(from: u32, to: u32, added: &[u8], removed: &[u8]) -> Step {
        Step {
            from,
            to,
            from_soa: vec![from as u8],
            diff: Arc::new(Diff {
                added: added.iter().map(|&b| vec![b]).collect(),
                removed: removed.iter().map(|&b| vec![b]).collect(),
            }),
        }
    }

    #[test]
    fn steps_condense_and_the_bound_drops_the_oldest() {
        let mut j = Journal::default();
        j.push(step(1, 2, &[10], &[]), 2);
        j.push(step(2, 3, &[11], &[10]), 2);
        let (soa, d) = j.between(1, 3).unwrap();
        assert_eq!(soa, vec![1]);
        assert_eq!(d.added, [vec![11]].into());
        assert!(d.removed.is_empty());
        j.push(step(3, 4, &[], &[]), 2);
        assert_eq!(j.range(), Some((2, 4)));
        assert!(j.between(1, 4).is_none());
        assert!(j.between(2, 9).is_none());
        // A gap starts over.
        j.push(step(7, 8, &[], &[]), 2);
        assert_eq!(j.range(), Some((7, 8)));
    }
}
