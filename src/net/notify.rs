//! NOTIFY (RFC 1996): telling secondaries that a zone changed, so they
//! transfer it at once instead of at their next refresh.
//!
//! A zone is notified at most once per [`INTERVAL`]: the first change goes
//! out at once, the changes of a burst after it wait for the interval's end
//! and go out as one NOTIFY of the latest serial. Each secondary is asked
//! again, with a growing pause ([`FIRST_RETRY`] doubling up to
//! [`MAX_RETRY`]), until it answers; a newer serial replaces the one being
//! retried. NOTIFY is signed with the first TSIG key when there is one.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::answer::wire::{CLASS_IN, HEADER_LEN, flag, rcode, rtype};
use crate::transfer::{Notice, SecondaryStatus, Transfers, unix_now};

/// At most one NOTIFY per zone per this long.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// The pause before the first retry of an unanswered NOTIFY.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest pause between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// The NOTIFY opcode (RFC 1996), in the header's flag word.
const OPCODE_NOTIFY: u16 = 4 << 11;

/// One zone's notification state.
struct Zone {
    notice: Notice,
    /// When the last NOTIFY round went out.
    last_round: Option<Instant>,
    /// When the next round is due, if a change waits for one.
    due: Option<Instant>,
}

/// A NOTIFY sent to one secondary and not answered yet.
struct Pending {
    id: u16,
    /// The MAC of the NOTIFY last sent, when signed: the answer must be
    /// signed over it.
    mac: Option<Vec<u8>>,
    serial: u32,
    attempts: u32,
    retry_at: Instant,
}

/// Sends NOTIFY for each [`Notice`] until `shutdown`.
pub async fn run(
    transfers: Arc<Transfers>,
    mut notices: UnboundedReceiver<Notice>,
    shutdown: CancellationToken,
) {
    let targets = transfers.config.notify.clone();
    if targets.is_empty() {
        // Drain, so the writer's sends never pile up.
        while notices.recv().await.is_some() {}
        return;
    }
    let v4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await;
    let v6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).await;
    let (v4, v6) = match (v4, v6) {
        (Ok(a), b) => (Some(a), b.ok()),
        (Err(e), Ok(b)) => {
            debug!(error = %e, "no IPv4 socket for NOTIFY");
            (None, Some(b))
        }
        (Err(e), Err(_)) => {
            warn!(error = %e, "cannot open a socket for NOTIFY; secondaries will only see changes at their refresh");
            return;
        }
    };
    let mut zones: BTreeMap<Vec<u8>, Zone> = BTreeMap::new();
    let mut pending: BTreeMap<(Vec<u8>, SocketAddr), Pending> = BTreeMap::new();
    let mut next_id: u16 = (unix_now() as u16) ^ (std::process::id() as u16);
    let (mut buf4, mut buf6) = (vec![0u8; 4096], vec![0u8; 4096]);
    loop {
        let now = Instant::now();
        // Rounds that are due.
        for (apex, zone) in zones.iter_mut() {
            if zone.due.is_some_and(|d| d <= now) {
                zone.due = None;
                zone.last_round = Some(now);
                for &target in &targets {
                    next_id = next_id.wrapping_add(0x9e37);
                    let p = Pending {
                        id: next_id,
                        mac: None,
                        serial: zone.notice.serial,
                        attempts: 0,
                        retry_at: now,
                    };
                    pending.insert((apex.clone(), target), p);
                }
            }
        }
        // Sends and retries that are due.
        for ((apex, target), p) in pending.iter_mut() {
            if p.retry_at > now {
                continue;
            }
            let Some(zone) = zones.get(apex) else {
                continue;
            };
            let (message, mac) = notify_message(&transfers, p.id, &zone.notice);
            p.mac = mac;
            let socket = if target.is_ipv4() {
                v4.as_ref()
            } else {
                v6.as_ref()
            };
            if let Some(socket) = socket
                && let Err(error) = socket.send_to(&message, target).await
            {
                debug!(%error, %target, "NOTIFY not sent");
            }
            p.attempts += 1;
            let pause = FIRST_RETRY
                .saturating_mul(1 << p.attempts.saturating_sub(1).min(16))
                .min(MAX_RETRY);
            p.retry_at = now + pause;
            if p.attempts > 1 {
                debug!(%target, serial = p.serial, attempt = p.attempts, "NOTIFY not answered yet; sent again");
            }
            set_status(&transfers, apex, *target, |s| {
                s.pending = Some((p.serial, p.attempts))
            });
        }
        let wake = zones
            .values()
            .filter_map(|z| z.due)
            .chain(pending.values().map(|p| p.retry_at))
            .min();
        tokio::select! {
            notice = notices.recv() => {
                let Some(notice) = notice else { return };
                let apex = notice.apex.clone();
                let now = Instant::now();
                let zone = zones.entry(apex).or_insert(Zone { notice: notice.clone(), last_round: None, due: None });
                zone.notice = notice;
                if zone.due.is_none() {
                    zone.due = Some(match zone.last_round {
                        Some(last) if now < last + INTERVAL => last + INTERVAL,
                        _ => now,
                    });
                }
            }
            received = recv(v4.as_ref(), &mut buf4) => {
                if let Some((len, from)) = received {
                    acknowledged(&transfers, &buf4[..len], from, &mut pending);
                }
            }
            received = recv(v6.as_ref(), &mut buf6) => {
                if let Some((len, from)) = received {
                    acknowledged(&transfers, &buf6[..len], from, &mut pending);
                }
            }
            () = sleep_until(wake) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// A reply from a secondary: ends the retries of the NOTIFY it answers.
fn acknowledged(
    transfers: &Transfers,
    reply: &[u8],
    from: SocketAddr,
    pending: &mut BTreeMap<(Vec<u8>, SocketAddr), Pending>,
) {
    if reply.len() < HEADER_LEN {
        return;
    }
    let id = u16::from_be_bytes([reply[0], reply[1]]);
    let flags = u16::from_be_bytes([reply[2], reply[3]]);
    if flags & flag::QR == 0 || flags & flag::OPCODE_MASK != OPCODE_NOTIFY {
        return;
    }
    let Some(key) = pending
        .iter()
        .find(|((_, target), p)| *target == from && p.id == id)
        .map(|(k, _)| k.clone())
    else {
        return;
    };
    let code = (flags & flag::RCODE_MASK) as u8;
    let p = pending.get(&key).expect("just found");
    if let (Some(signer), Some(mac)) = (transfers.config.keys.first(), &p.mac)
        && !signer.verifies_response(reply, mac, unix_now())
    {
        // Not counted: anyone can send an unsigned datagram.
        warn!(secondary = %from, serial = p.serial, "NOTIFY answer not signed with the key; asking again");
        return;
    }
    if code != rcode::NOERROR {
        // Retried on schedule: a secondary being configured may come round.
        warn!(secondary = %from, serial = p.serial, rcode = code, "secondary refused NOTIFY");
        return;
    }
    let p = pending.remove(&key).expect("just found");
    info!(secondary = %from, serial = p.serial, "NOTIFY acknowledged");
    set_status(transfers, &key.0, from, |s| {
        s.acknowledged = Some((p.serial, SystemTime::now()));
        s.pending = None;
    });
}

fn set_status(
    transfers: &Transfers,
    apex: &[u8],
    target: SocketAddr,
    f: impl FnOnce(&mut SecondaryStatus),
) {
    let mut all = transfers
        .secondaries
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    f(all
        .entry(apex.to_vec())
        .or_default()
        .entry(target)
        .or_default());
}

/// A NOTIFY for the zone (RFC 1996 section 3.7: the SOA in the answer
/// section), signed with the first key if any, and the signature's MAC.
fn notify_message(transfers: &Transfers, id: u16, notice: &Notice) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut m = Vec::with_capacity(256);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(OPCODE_NOTIFY | flag::AA).to_be_bytes());
    for count in [1u16, 1, 0, 0] {
        m.extend_from_slice(&count.to_be_bytes());
    }
    m.extend_from_slice(&notice.apex);
    m.extend_from_slice(&rtype::SOA.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    m.extend_from_slice(&notice.soa);
    let mac = transfers
        .config
        .keys
        .first()
        .map(|key| key.sign_request(&mut m, unix_now()));
    (m, mac)
}
