//! Responses per second over the last minute, by response code, for
//! `signpost status`: the folded counters are sampled every few seconds and
//! a rate is the difference between now and the sample a minute old.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::dns::{self, RCODE_SLOTS};

/// The window the rate is taken over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Time between samples.
const EVERY: Duration = Duration::from_secs(5);

/// Samples of the responses by rcode, oldest first, covering a little more
/// than [`WINDOW`]. A std mutex: touched every few seconds and by `status`.
static SAMPLES: Mutex<VecDeque<(Instant, [u64; RCODE_SLOTS])>> = Mutex::new(VecDeque::new());

/// Takes the first sample now, before queries are answered, so the first
/// minute's counts are exact; then samples every few seconds until
/// `shutdown`.
pub fn spawn(shutdown: CancellationToken) {
    take_sample();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + EVERY;
        let mut tick = tokio::time::interval_at(start, EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => take_sample(),
                () = shutdown.cancelled() => return,
            }
        }
    });
}

fn take_sample() {
    let now = Instant::now();
    let by_rcode = dns::totals().responses_by_rcode();
    let mut samples = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    samples.push_back((now, by_rcode));
    // Keep the newest sample at least a window old, drop older ones.
    while samples
        .get(1)
        .is_some_and(|&(at, _)| now.duration_since(at) >= WINDOW)
    {
        samples.pop_front();
    }
}

/// Responses sent recently, by response code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recent {
    /// The seconds covered: a minute, or less while the server is younger.
    pub seconds: u64,
    /// Responses by rcode label, leaving out codes not sent in that time.
    pub by_rcode: Vec<(&'static str, u64)>,
}

/// The responses of the last minute (or since the first sample, when the
/// server is younger); nothing before the first sample.
pub fn last_minute() -> Recent {
    let oldest = SAMPLES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .front()
        .copied();
    let Some((at, then)) = oldest else {
        return Recent::default();
    };
    let now = dns::totals().responses_by_rcode();
    Recent {
        seconds: at.elapsed().as_secs().max(1),
        by_rcode: (0..RCODE_SLOTS)
            .filter(|&i| now[i] > then[i])
            .map(|i| (dns::rcode_label(i), now[i] - then[i]))
            .collect(),
    }
}
