//! Zone transfers: signpost as a primary that stock secondaries (Knot DNS,
//! NSD, BIND) follow.
//!
//! - [`serve`] answers AXFR (RFC 5936) and IXFR (RFC 1995) from the snapshot
//!   and the journal, after the access check, and signs what needs signing.
//! - [`journal`] keeps each zone's recent differences, fed by the registry's
//!   publish hook ([`Transfers::publish_hook`]), which also tells the NOTIFY
//!   sender (`crate::net::notify`) about zones whose records changed.
//! - [`tsig`] checks and makes TSIG signatures (RFC 8945).
//!
//! Nothing here is on the path of ordinary queries: the query path hands a
//! query over only when it is a transfer or carries a TSIG record.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ipnet::IpNet;
use tokio::sync::mpsc::UnboundedSender;

use crate::answer::records::{self, WireRecord};
use crate::answer::snapshot::Snapshot;
use crate::registry::PublishHook;

pub mod journal;
pub mod serve;
pub mod tsig;

use journal::{Journal, Step};
use tsig::Key;

/// Who may transfer zones, whom to notify, and how much history to keep.
#[derive(Clone, Debug, Default)]
pub struct TransferConfig {
    /// Networks allowed to transfer. With keys too, a client needs both.
    pub allow: Vec<IpNet>,
    /// TSIG keys; once there is one, transfers must be signed with one.
    pub keys: Vec<Key>,
    /// Secondaries told of changes (NOTIFY), signed with the first key.
    pub notify: Vec<SocketAddr>,
    /// Changes kept per zone for IXFR.
    pub journal: usize,
}

impl TransferConfig {
    /// Whether anything about transfers is configured: without it there is
    /// no journal to keep and every transfer is refused.
    pub fn is_enabled(&self) -> bool {
        !self.allow.is_empty() || !self.keys.is_empty() || !self.notify.is_empty()
    }

    /// Whether a client may transfer: from an allowed network when no key
    /// is configured; signed with a key (and from an allowed network, if
    /// any is listed) once one is.
    pub fn allows(&self, client: IpAddr, signed: bool) -> bool {
        let listed = self.allow.iter().any(|n| n.contains(&client));
        if self.keys.is_empty() {
            listed
        } else {
            signed && (self.allow.is_empty() || listed)
        }
    }
}

/// A zone whose records changed, for the NOTIFY sender.
#[derive(Clone, Debug)]
pub struct Notice {
    /// The apex, lowercased wire form.
    pub apex: Vec<u8>,
    /// The new serial.
    pub serial: u32,
    /// The new SOA record.
    pub soa: WireRecord,
}

/// What `status` shows of one secondary for one zone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecondaryStatus {
    /// The serial of the last NOTIFY it acknowledged, and when.
    pub acknowledged: Option<(u32, SystemTime)>,
    /// A serial being notified and not acknowledged yet, and attempts so far.
    pub pending: Option<(u32, u32)>,
}

/// The state transfers share between the writer (journal), the listeners
/// (serving) and the NOTIFY sender. Each lock is held for a few map
/// operations, never across an `.await`: a std `Mutex` is enough.
pub struct Transfers {
    /// The configuration.
    pub config: TransferConfig,
    journals: Mutex<HashMap<Vec<u8>, Journal>>,
    /// By zone apex (lowercased wire form), then secondary.
    pub(crate) secondaries: Mutex<BTreeMap<Vec<u8>, BTreeMap<SocketAddr, SecondaryStatus>>>,
}

/// One zone's transfer state for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneTransferStatus {
    /// The serials the IXFR journal reaches from and to.
    pub journal: Option<(u32, u32)>,
    /// Changes in the journal.
    pub journal_len: usize,
    /// Each secondary notified.
    pub secondaries: Vec<(SocketAddr, SecondaryStatus)>,
}

impl Transfers {
    /// Shared transfer state for `config`.
    pub fn new(config: TransferConfig) -> Arc<Transfers> {
        Arc::new(Transfers {
            config,
            journals: Mutex::new(HashMap::new()),
            secondaries: Mutex::new(BTreeMap::new()),
        })
    }

    /// What the registry calls with each snapshot before publishing it:
    /// records each changed zone's difference in its journal (before, so an
    /// IXFR for the new serial finds it), and once the snapshot is published
    /// tells `notify` about zones whose records changed (not about a new
    /// serial alone). Costs what changed (see [`records::diff`]).
    pub fn publish_hook(self: &Arc<Self>, notify: Option<UnboundedSender<Notice>>) -> PublishHook {
        let transfers = self.clone();
        Box::new(move |old: &Snapshot, new: &Snapshot| {
            let mut notices = Vec::new();
            for (before, zone) in records::changed_zones(old, new) {
                let apex = records::apex(zone).to_vec();
                let soa = records::soa(zone);
                let changed = match before {
                    None => {
                        transfers.journal(|j| j.entry(apex.clone()).or_default().clear());
                        true
                    }
                    Some(before) => {
                        let diff = records::diff(before, zone);
                        let from_soa = records::soa(before);
                        let changed = !diff.is_empty() || !same_but_serial(&from_soa, &soa);
                        let step = Step {
                            from: before.serial,
                            to: zone.serial,
                            from_soa,
                            diff: Arc::new(diff),
                        };
                        let limit = transfers.config.journal;
                        transfers.journal(|j| j.entry(apex.clone()).or_default().push(step, limit));
                        changed
                    }
                };
                if changed {
                    notices.push(Notice {
                        apex,
                        serial: zone.serial,
                        soa,
                    });
                }
            }
            // Sent once the new serial is served: a secondary that asks for
            // the SOA at once must see it.
            let tx = notify.clone().filter(|_| !notices.is_empty())?;
            Some(Box::new(move || {
                for notice in notices {
                    let _ = tx.send(notice);
                }
            }) as Box<dyn FnOnce() + Send>)
        })
    }

    fn journal<T>(&self, f: impl FnOnce(&mut HashMap<Vec<u8>, Journal>) -> T) -> T {
        f(&mut self.journals.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The condensed difference from serial `from` to `to`, if the journal
    /// reaches back that far.
    pub(crate) fn between(
        &self,
        apex: &[u8],
        from: u32,
        to: u32,
    ) -> Option<(WireRecord, records::Diff)> {
        self.journal(|j| j.get(apex)?.between(from, to))
    }

    /// A zone's journal range and its secondaries, for `status`.
    pub fn status(&self, apex: &[u8]) -> ZoneTransferStatus {
        let (journal, journal_len) =
            self.journal(|j| j.get(apex).map_or((None, 0), |j| (j.range(), j.len())));
        let secondaries = self
            .secondaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(apex)
            .map(|s| s.iter().map(|(a, s)| (*a, s.clone())).collect())
            .unwrap_or_default();
        ZoneTransferStatus {
            journal,
            journal_len,
            secondaries,
        }
    }
}

/// Two SOA records (wire form) that differ at most in their serial, which
/// is the fifth field from the end: a new serial alone is not a change
/// worth a NOTIFY, new timers are.
fn same_but_serial(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    n == b.len() && n >= 20 && a[..n - 20] == b[..n - 20] && a[n - 16..] == b[n - 16..]
}

/// Seconds since the Unix epoch, as TSIG counts time.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::Name;

    use super::*;
    use crate::answer::build::build_zone;
    use crate::model::{Host, Soa, Zone};

    fn zone(hosts: usize, refresh: u32) -> Zone {
        let ns = Name::from_ascii("ns1.svc.example.").unwrap();
        Zone {
            apex: Name::from_ascii("svc.example.").unwrap(),
            ttl: 30,
            nameservers: vec![ns.clone()],
            soa: Soa {
                mname: ns.clone(),
                rname: ns,
                refresh,
                retry: 1,
                expire: 1,
                minimum: 1,
            },
            hosts: (0..hosts)
                .map(|i| Host {
                    name: Name::from_ascii(format!("h{i}.svc.example.")).unwrap(),
                    addresses: vec![[10, 0, 0, i as u8].into()],
                })
                .collect(),
            services: vec![],
        }
    }

    #[test]
    fn the_hook_journals_every_new_serial_and_notifies_only_changed_records() {
        let transfers = Transfers::new(TransferConfig {
            journal: 10,
            ..TransferConfig::default()
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut hook = transfers.publish_hook(Some(tx));
        let publish = |hook: &mut PublishHook, old: &Snapshot, new: &Snapshot| {
            if let Some(after) = hook(old, new) {
                after();
            }
        };
        let v1 = Arc::new(build_zone(&zone(2, 1), 1, None));
        let v2 = Arc::new(build_zone(&zone(2, 1), 2, Some(&v1)));
        let v3 = Arc::new(build_zone(&zone(3, 1), 3, Some(&v2)));
        let v4 = Arc::new(build_zone(&zone(3, 60), 4, Some(&v3)));
        let snap = |z: &Arc<crate::answer::snapshot::ZoneSnapshot>| Snapshot::new([z.clone()]);
        publish(&mut hook, &Snapshot::default(), &snap(&v1));
        assert_eq!(rx.try_recv().unwrap().serial, 1, "a new zone is announced");
        publish(&mut hook, &snap(&v1), &snap(&v2));
        assert!(rx.try_recv().is_err(), "a new serial alone is not");
        publish(&mut hook, &snap(&v2), &snap(&v3));
        assert_eq!(rx.try_recv().unwrap().serial, 3);
        publish(&mut hook, &snap(&v3), &snap(&v4));
        assert_eq!(
            rx.try_recv().unwrap().serial,
            4,
            "new SOA timers are a change"
        );
        let apex = records::apex(&v1).to_vec();
        assert_eq!(transfers.status(&apex).journal, Some((1, 4)));
        let (_, diff) = transfers.between(&apex, 1, 4).unwrap();
        assert_eq!((diff.removed.len(), diff.added.len()), (0, 1));
    }
}
