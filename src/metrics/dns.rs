//! DNS query counters kept per thread and folded at scrape time.
//!
//! Each thread that answers queries owns a [`Shard`]: counters that only
//! that thread writes, with a plain load and store (no locked
//! read-modify-write, no cache line shared with another writer). A scrape
//! sums every shard ever created; a shard outlives its thread, so totals
//! never go back. Label values come from fixed tables (query types,
//! response codes, transports), so the number of series is bounded
//! whatever clients send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::answer::wire::HEADER_LEN;

/// How a query arrived, as a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// UDP.
    Udp = 0,
    /// TCP.
    Tcp = 1,
}

/// The `proto` label values, by [`Proto`].
pub const PROTOS: [&str; 2] = ["udp", "tcp"];

/// The query types with a label of their own; every other type counts as
/// `other`.
pub const TYPES: [(&str, u16); 18] = [
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
    ("NAPTR", 35),
    ("DS", 43),
    ("DNSKEY", 48),
    ("SVCB", 64),
    ("HTTPS", 65),
    ("IXFR", 251),
    ("AXFR", 252),
    ("ANY", 255),
    ("CAA", 257),
];
/// Label slots for query types: [`TYPES`] and `other`.
pub const TYPE_SLOTS: usize = TYPES.len() + 1;

/// The response codes of the header (RFC 1035, 2136) with a label of their
/// own; codes 11 to 15 count as `other`.
pub const RCODES: [&str; 11] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE",
];
/// Label slots for response codes: [`RCODES`] and `other`.
pub const RCODE_SLOTS: usize = RCODES.len() + 1;

/// Upper bounds of the duration histogram's buckets, in seconds: from
/// answers copied from the snapshot (microseconds) to forwarded ones
/// (up to the forward timeout).
pub const BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0, 5.0,
];

/// One thread's counters.
// Aligned so that two shards never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct Shard {
    requests: [[AtomicU64; TYPE_SLOTS]; 2],
    responses: [[AtomicU64; RCODE_SLOTS]; 2],
    /// Per transport: the count in each bucket (not cumulative), then the
    /// `+Inf` bucket.
    buckets: [[AtomicU64; BUCKETS.len() + 1]; 2],
    /// Per transport: the sum of durations in nanoseconds.
    sum_nanos: [AtomicU64; 2],
}

/// Adds to a counter that only the current thread writes: a load and a
/// store, which compile to plain moves, where `fetch_add` would lock the
/// bus. Scrapes read it concurrently and see either value.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Every shard ever created, for scrapes. Locked when a thread first counts
/// and at each scrape, never per query.
static SHARDS: Mutex<Vec<Arc<Shard>>> = Mutex::new(Vec::new());

thread_local! {
    static SHARD: Arc<Shard> = {
        let shard = Arc::new(Shard::default());
        SHARDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(shard.clone());
        shard
    };
}

/// Runs `f` with the current thread's shard. Everything counted inside must
/// happen on this thread, which holds as long as `f` does not await.
pub fn with<R>(f: impl FnOnce(&Shard) -> R) -> R {
    SHARD.with(|shard| f(shard))
}

impl Shard {
    /// Counts one query received.
    pub fn request(&self, proto: Proto, query: &[u8]) {
        bump(
            &self.requests[proto as usize][type_slot(query_type(query))],
            1,
        );
    }

    /// Counts one response sent.
    pub fn response(&self, proto: Proto, response: &[u8]) {
        bump(&self.responses[proto as usize][rcode_slot(response)], 1);
    }

    /// Records `queries` queries that each spent `spent` in the server.
    pub fn duration(&self, proto: Proto, spent: Duration, queries: u64) {
        if queries == 0 {
            return;
        }
        let seconds = spent.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        bump(&self.buckets[proto as usize][bucket], queries);
        let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        bump(
            &self.sum_nanos[proto as usize],
            nanos.saturating_mul(queries),
        );
    }
}

/// The query type of a query with one question, if it can be read.
pub fn query_type(query: &[u8]) -> Option<u16> {
    if query.len() < HEADER_LEN || query[4..6] != [0, 1] {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = *query.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len & 0xC0 != 0 {
            // A pointer in a question is legal, if odd: it ends the name.
            at += 2;
            break;
        }
        at += 1 + len;
    }
    let bytes = query.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn type_slot(qtype: Option<u16>) -> usize {
    qtype
        .and_then(|t| TYPES.iter().position(|&(_, code)| code == t))
        .unwrap_or(TYPES.len())
}

fn rcode_slot(response: &[u8]) -> usize {
    let rcode = response
        .get(3)
        .map_or(RCODES.len(), |b| usize::from(b & 0x0F));
    rcode.min(RCODES.len())
}

/// The name of a response's code, as the `rcode` label has it.
pub fn rcode_name(response: &[u8]) -> &'static str {
    RCODES.get(rcode_slot(response)).copied().unwrap_or("other")
}

/// The name of a query type, as the `type` label has it.
pub fn type_name(qtype: Option<u16>) -> &'static str {
    TYPES
        .get(type_slot(qtype))
        .map_or("other", |&(name, _)| name)
}

/// Every shard summed.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Queries by transport and type slot.
    pub requests: [[u64; TYPE_SLOTS]; 2],
    /// Responses by transport and rcode slot.
    pub responses: [[u64; RCODE_SLOTS]; 2],
    /// Per transport: bucket counts, not cumulative, `+Inf` last.
    pub buckets: [[u64; BUCKETS.len() + 1]; 2],
    /// Per transport: the sum of durations in seconds.
    pub sum_seconds: [f64; 2],
}

/// Sums every shard.
pub fn totals() -> Totals {
    let shards = SHARDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut t = Totals::default();
    let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for shard in &shards {
        for p in 0..2 {
            for (i, c) in shard.requests[p].iter().enumerate() {
                t.requests[p][i] += read(c);
            }
            for (i, c) in shard.responses[p].iter().enumerate() {
                t.responses[p][i] += read(c);
            }
            for (i, c) in shard.buckets[p].iter().enumerate() {
                t.buckets[p][i] += read(c);
            }
            t.sum_seconds[p] += read(&shard.sum_nanos[p]) as f64 / 1e9;
        }
    }
    t
}

impl Totals {
    /// Responses by rcode label, both transports together.
    pub fn responses_by_rcode(&self) -> [u64; RCODE_SLOTS] {
        let mut by = [0; RCODE_SLOTS];
        for p in &self.responses {
            for (i, n) in p.iter().enumerate() {
                by[i] += n;
            }
        }
        by
    }
}

/// The label of rcode slot `i`.
pub fn rcode_label(i: usize) -> &'static str {
    RCODES.get(i).copied().unwrap_or("other")
}

/// The label of type slot `i`.
pub fn type_label(i: usize) -> &'static str {
    TYPES.get(i).map_or("other", |&(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn query_types_map_to_bounded_labels() {
        assert_eq!(type_name(query_type(&query(&["web", "svc"], 33))), "SRV");
        assert_eq!(type_name(query_type(&query(&["a"], 28))), "AAAA");
        assert_eq!(type_name(query_type(&query(&["a"], 4242))), "other");
        assert_eq!(type_name(query_type(&[0; 5])), "other");
        let mut truncated = query(&["web"], 1);
        truncated.truncate(truncated.len() - 3);
        assert_eq!(query_type(&truncated), None);
    }

    #[test]
    fn response_codes_map_to_bounded_labels() {
        let mut header = [0u8; 12];
        header[3] = 3;
        assert_eq!(rcode_name(&header), "NXDOMAIN");
        header[3] = 0x80 | 5;
        assert_eq!(rcode_name(&header), "REFUSED");
        header[3] = 15;
        assert_eq!(rcode_name(&header), "other");
    }

    #[test]
    fn a_scrape_sums_every_thread_including_those_that_ended() {
        // CAA over TCP: a slot no other test of this process counts in.
        let caa = query(&["x"], 257);
        let slot = type_slot(Some(257));
        let before = totals().requests[Proto::Tcp as usize][slot];
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let caa = caa.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        with(|shard| shard.request(Proto::Tcp, &caa));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(totals().requests[Proto::Tcp as usize][slot] - before, 4000);
    }

    #[test]
    fn a_batch_counts_once_per_query_in_its_bucket() {
        let shard = Shard::default();
        shard.duration(Proto::Udp, Duration::from_micros(30), 4);
        shard.duration(Proto::Tcp, Duration::from_secs(10), 1);
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(read(&shard.buckets[0][2]), 4);
        assert_eq!(read(&shard.buckets[1][BUCKETS.len()]), 1);
        assert_eq!(read(&shard.sum_nanos[0]), 120_000);
    }
}
