//! When runtime instances expire without a heartbeat, and when expired ones
//! are reaped: one ordered set, so the writer sleeps until the first and a
//! wake-up costs what is due, not what is registered.

use std::collections::BTreeSet;
use std::time::Instant;

/// What happens to an instance at its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// No heartbeat came within its TTL: it leaves answers.
    Expire,
    /// It stayed expired for the reaping age: it is removed for good.
    Reap,
}

/// A runtime instance's timer: when, what, and the instance (zone key, id).
type Due = (Instant, Timer, Vec<u8>, String);

/// Every pending timer, earliest first.
#[derive(Default)]
pub(super) struct Timers(BTreeSet<Due>);

impl Timers {
    /// Replaces the timer of instance `id` of zone `key`: `old` is the one it
    /// had (its entry keeps it), `new` the one it gets.
    pub(super) fn retime(
        &mut self,
        key: &[u8],
        id: &str,
        old: Option<(Instant, Timer)>,
        new: Option<(Instant, Timer)>,
    ) {
        if old == new {
            return;
        }
        if let Some((at, timer)) = old {
            self.0.remove(&(at, timer, key.to_vec(), id.to_string()));
        }
        if let Some((at, timer)) = new {
            self.0.insert((at, timer, key.to_vec(), id.to_string()));
        }
    }

    /// The earliest pending time.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.first().map(|(at, ..)| *at)
    }

    /// Takes the first timer due at `now`, if any.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Timer, Vec<u8>, String)> {
        if self.next()? > now {
            return None;
        }
        self.0
            .pop_first()
            .map(|(_, timer, key, id)| (timer, key, id))
    }
}
