//! What the server counts, and its rendering in the Prometheus text format.
//!
//! Query counters are per thread ([`dns`]) and folded when scraped. The
//! rarer events (forwarded queries, registrations, zone reloads, health
//! checks) use prometheus-client's own counters in one process-wide
//! [`Global`]. Gauges of the registry (zones, instances, serials) are not
//! kept at all: each scrape asks the registry's writer for its status and
//! renders that, so they cannot drift from what is served.
//!
//! Label values are fixed words or zone names, never anything a client
//! sends, so the number of series stays bounded.

pub mod dns;
pub mod process;
pub mod rates;

use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::registry::writer::Status;

/// Label sets of one or two fixed words.
type Words1 = [(&'static str, &'static str); 1];
type Words2 = [(&'static str, &'static str); 2];
/// A zone and a fixed word.
type ZoneWord = [(&'static str, String); 2];

/// Buckets for waits on the network or the disk, in seconds.
const SLOW_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The counters of events too rare to need per-thread counting.
#[derive(Debug)]
pub struct Global {
    /// Forwarded queries by `result`: `cached`, `answered`,
    /// `upstream_error`, `failed`, `overloaded`.
    pub forward_requests: Family<Words1, Counter>,
    /// Time spent waiting for the upstreams of one forwarded query.
    pub forward_duration: Histogram,
    /// Zone file reads after start-up by `zone` and `result` (`ok`, `error`).
    pub zone_reloads: Family<ZoneWord, Counter>,
    /// Admin requests that change the registry, by `op` and `result`.
    pub registrations: Family<Words2, Counter>,
    /// From a registration request to its reply, which comes once the
    /// change is durable and answered.
    pub registration_duration: Histogram,
    /// Health probes by `result` (`pass`, `fail`).
    pub health_checks: Family<Words1, Counter>,
    /// Query log lines dropped because the writer fell behind.
    pub query_log_dropped: Counter,
}

static GLOBAL: LazyLock<Global> = LazyLock::new(|| {
    let global = Global {
        forward_requests: Family::default(),
        forward_duration: Histogram::new(SLOW_BUCKETS),
        zone_reloads: Family::default(),
        registrations: Family::default(),
        registration_duration: Histogram::new(SLOW_BUCKETS),
        health_checks: Family::default(),
        query_log_dropped: Counter::default(),
    };
    // Every fixed label set starts at 0, so that rates and alerts on them
    // see a series from the first scrape rather than none until the first
    // event.
    for result in [
        "cached",
        "answered",
        "upstream_error",
        "failed",
        "overloaded",
    ] {
        let _ = global.forward_requests.get_or_create(&[("result", result)]);
    }
    for op in ["register", "deregister", "heartbeat"] {
        for result in ["ok", "error"] {
            let _ = global
                .registrations
                .get_or_create(&[("op", op), ("result", result)]);
        }
    }
    for result in ["pass", "fail"] {
        let _ = global.health_checks.get_or_create(&[("result", result)]);
    }
    global
});

/// The process-wide counters.
pub fn global() -> &'static Global {
    &GLOBAL
}

/// Counts a forwarded query's `result`.
pub fn forward_result(result: &'static str) {
    global()
        .forward_requests
        .get_or_create(&[("result", result)])
        .inc();
}

/// What a scrape renders besides the counters.
pub struct Scrape {
    /// The registry's status; `None` when the writer has stopped.
    pub status: Option<Status>,
    /// Entries in the forwarding cache, when forwarding is on.
    pub forward_cache_entries: Option<usize>,
}

/// Renders every metric in the Prometheus text format (version 0.0.4).
pub fn render(scrape: Scrape) -> String {
    let g = global();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DnsCollector));
    registry.register(
        "signpost_forward_requests",
        "Queries for names outside the zones, by how they were answered",
        g.forward_requests.clone(),
    );
    registry.register(
        "signpost_forward_duration_seconds",
        "Time spent waiting for the upstreams, per forwarded query that missed the cache",
        g.forward_duration.clone(),
    );
    registry.register(
        "signpost_zone_reloads",
        "Zone file reads after start-up, by zone and result",
        g.zone_reloads.clone(),
    );
    registry.register(
        "signpost_registrations",
        "Register, deregister and heartbeat requests, by operation and result",
        g.registrations.clone(),
    );
    registry.register(
        "signpost_registration_duration_seconds",
        "From a registration request to its reply, sent once the change is durable and answered",
        g.registration_duration.clone(),
    );
    registry.register(
        "signpost_health_checks",
        "Health probes, by result",
        g.health_checks.clone(),
    );
    registry.register(
        "signpost_query_log_dropped",
        "Query log lines dropped because the log writer fell behind",
        g.query_log_dropped.clone(),
    );
    registry.register_collector(Box::new(StateCollector {
        status: scrape.status,
        forward_cache_entries: scrape.forward_cache_entries,
    }));
    registry.register_collector(Box::new(process::ProcessCollector));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The per-thread query counters, folded.
#[derive(Debug)]
struct DnsCollector;

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = dns::totals();
        let mut m = encoder.encode_descriptor(
            "signpost_dns_requests",
            "DNS queries received, by transport and query type",
            None,
            MetricType::Counter,
        )?;
        for (p, proto) in dns::PROTOS.iter().enumerate() {
            for (i, &n) in t.requests[p].iter().enumerate() {
                let labels = [("proto", *proto), ("type", dns::type_label(i))];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "signpost_dns_responses",
            "DNS responses sent, by transport and response code",
            None,
            MetricType::Counter,
        )?;
        for (p, proto) in dns::PROTOS.iter().enumerate() {
            for (i, &n) in t.responses[p].iter().enumerate() {
                let labels = [("proto", *proto), ("rcode", dns::rcode_label(i))];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "signpost_dns_request_duration_seconds",
            "Time a query spends in the server, from its receipt to its answer's sending. \
             UDP queries are read and answered in batches: each query of a batch is \
             counted with the batch's time, from the read to the send",
            None,
            MetricType::Histogram,
        )?;
        for (p, proto) in dns::PROTOS.iter().enumerate() {
            let buckets: Vec<(f64, u64)> = dns::BUCKETS
                .iter()
                .copied()
                .zip(t.buckets[p].iter().copied())
                .collect();
            let count = t.buckets[p].iter().sum();
            m.encode_family(&[("proto", *proto)])?
                .encode_histogram::<NoLabelSet>(t.sum_seconds[p], count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Gauges read from the registry's status at scrape time.
#[derive(Debug)]
struct StateCollector {
    status: Option<Status>,
    forward_cache_entries: Option<usize>,
}

/// Encodes one gauge family: `rows` of (labels, value).
fn gauges<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let build = ConstGauge::new(1i64);
        let mut m = encoder.encode_descriptor(
            "signpost_build_info",
            "Always 1; the labels say which build is running",
            None,
            MetricType::Gauge,
        )?;
        build.encode(m.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        if let Some(entries) = self.forward_cache_entries {
            let m = encoder.encode_descriptor(
                "signpost_forward_cache_entries",
                "Forwarded answers in the cache",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(entries as i64).encode(m)?;
        }
        let Some(status) = &self.status else {
            return Ok(());
        };
        let zones = &status.zones;
        let n = |v: usize| v as i64;
        gauges(
            &mut encoder,
            "signpost_registry_instances",
            "Instances by zone, source (file, runtime) and state (serving, not_serving: \
             a runtime registration expired or shadowed)",
            zones.iter().flat_map(|z| {
                [
                    ("file", "serving", z.instances),
                    ("runtime", "serving", z.runtime_serving),
                    ("runtime", "not_serving", z.runtime_not_serving),
                ]
                .map(|(source, state, v)| {
                    (
                        [
                            ("zone", z.zone.clone()),
                            ("source", source.into()),
                            ("state", state.into()),
                        ],
                        n(v),
                    )
                })
            }),
        )?;
        gauges(
            &mut encoder,
            "signpost_registry_services",
            "Services served, from the file and registered at runtime, by zone",
            zones
                .iter()
                .map(|z| ([("zone", z.zone.clone())], n(z.services_served))),
        )?;
        gauges(
            &mut encoder,
            "signpost_registry_orphaned_registrations",
            "Runtime registrations for zones that no zone file declares",
            [(NoLabels, n(status.orphaned))],
        )?;
        gauges(
            &mut encoder,
            "signpost_zone_serial",
            "The SOA serial of each zone",
            zones
                .iter()
                .map(|z| ([("zone", z.zone.clone())], i64::from(z.serial))),
        )?;
        gauges(
            &mut encoder,
            "signpost_zone_stale",
            "1 while a zone file's current version is invalid and its last good version is served",
            zones
                .iter()
                .map(|z| ([("zone", z.zone.clone())], i64::from(z.stale.is_some()))),
        )?;
        gauges(
            &mut encoder,
            "signpost_health_unhealthy_instances",
            "Instances left out of answers because every address fails its health check",
            zones
                .iter()
                .map(|z| ([("zone", z.zone.clone())], n(z.unhealthy))),
        )?;
        Ok(())
    }
}

/// An empty label set that can be named as a type.
struct NoLabels;

impl prometheus_client::encoding::EncodeLabelSet for NoLabels {
    fn encode(
        &self,
        _: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}
