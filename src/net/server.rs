//! Sockets: binding, the UDP and TCP loops, and shutdown.
//!
//! Each listen address gets one UDP socket per worker thread (SO_REUSEPORT, so
//! the kernel spreads queries across them) and one TCP listener. A UDP loop
//! reads up to [`crate::net::udp_batch::BATCH`] queries per system call, answers
//! them in place and sends the answers with one call: no task per query, and
//! buffers reused for every query.
//! Only a query for a name outside every zone, from a client allowed to use
//! forwarding, leaves the loop: a cached answer is sent from the loop, a miss
//! is handed to a task (bounded by [`forward::MAX_IN_FLIGHT`]) so that waiting
//! for an upstream never stalls authoritative answers.
//!
//! TCP connections share `TcpSlots` (RFC 7766 section 6.2.3): above three
//! quarters of `--max-tcp-connections` idle connections get a short timeout,
//! and at the limit a newcomer takes the slot of the connection idle the
//! longest, so a flood of idle, slow or never-reading clients cannot shut
//! legitimate TCP out.
//!
//! hickory-server's `Server` is not used for serving: it spawns a task per UDP
//! query and decodes every request into an allocated message, and it has no
//! cap on concurrent TCP connections. The loops below are small and keep the
//! query path to a hash lookup and a copy.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::answer::respond::{self, Outcome, Transport};
use crate::answer::snapshot::Snapshot;
use crate::answer::snapshot::SnapshotHandle;
use crate::metrics::dns::{self, Proto};
use crate::net::forward::{self, Forwarder, Next};
use crate::net::query_log;
use crate::net::udp_batch::{Outgoing, Received};
use crate::transfer::{Transfers, serve as transfer};

/// Limits of the TCP listener (RFC 7766 section 6.2).
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// A connection with no complete query for this long is closed (sooner
    /// when slots run short: see [`CROWDED_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Most connections open at once; a newcomer beyond this many replaces
    /// the connection idle the longest.
    pub max_connections: usize,
}

/// The idle timeout once more than three quarters of the TCP slots are taken
/// (RFC 7766 section 6.2.3: be more aggressive about closing idle
/// connections as the limit nears). A resolver asking again reconnects in a
/// round trip; a flood of idle connections is cleared every second instead
/// of every `--tcp-idle-timeout`, which leaves room before eviction has to
/// start.
pub const CROWDED_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a connection waiting for a query looks at its deadline again,
/// which moves closer when the slots become crowded.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// The TCP connections open on all listeners. The table is locked only on
/// connect, disconnect and eviction; a query only stores its arrival time
/// in its connection's atomic.
struct TcpSlots {
    max: usize,
    idle_timeout: Duration,
    /// Connections open, read without the lock to pick the idle timeout.
    open: AtomicUsize,
    table: Mutex<Table>,
    /// What [`TcpConn::active`] counts milliseconds from.
    epoch: Instant,
}

#[derive(Default)]
struct Table {
    slots: Vec<Option<Arc<TcpConn>>>,
    free: Vec<usize>,
}

/// One connection's share of [`TcpSlots`].
struct TcpConn {
    /// Milliseconds since the epoch of the last complete query (or of the
    /// accept), or [`BUSY`] while a forwarded query waits for an upstream.
    active: AtomicU64,
    /// Closes the connection when it is evicted.
    evict: CancellationToken,
}

/// [`TcpConn::active`] of a connection that is waiting for an upstream: not
/// idle, never evicted.
const BUSY: u64 = u64::MAX;

impl TcpSlots {
    fn new(limits: TcpLimits) -> TcpSlots {
        TcpSlots {
            max: limits.max_connections,
            idle_timeout: limits.idle_timeout,
            open: AtomicUsize::new(0),
            table: Mutex::new(Table::default()),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The idle timeout now: the configured one, or a short one when more
    /// than three quarters of the slots are taken.
    fn idle_timeout(&self) -> Duration {
        if self.open.load(Ordering::Relaxed) * 4 > self.max * 3 {
            self.idle_timeout.min(CROWDED_IDLE_TIMEOUT)
        } else {
            self.idle_timeout
        }
    }

    /// Takes a slot for a new connection, closing the connection idle the
    /// longest if every slot is taken. None only when every connection is
    /// waiting for an upstream.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<TcpSlot> {
        let now = self.now_ms();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max {
            // A scan of at most max_connections atomics, on accept only.
            let (index, active) = table
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.active.load(Ordering::Relaxed))))
                .filter(|&(_, active)| active != BUSY)
                .min_by_key(|&(_, active)| active)?;
            let evicted = table.slots[index].take().expect("found above");
            table.free.push(index);
            self.open.fetch_sub(1, Ordering::Relaxed);
            evicted.evict.cancel();
            debug!(%peer, idle_ms = now.saturating_sub(active), "TCP connection limit reached; closed the connection idle the longest");
        }
        let conn = Arc::new(TcpConn {
            active: AtomicU64::new(now),
            evict: CancellationToken::new(),
        });
        let index = match table.free.pop() {
            Some(i) => {
                table.slots[i] = Some(conn.clone());
                i
            }
            None => {
                table.slots.push(Some(conn.clone()));
                table.slots.len() - 1
            }
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(TcpSlot {
            slots: self.clone(),
            index,
            conn,
        })
    }
}

/// A connection's slot, given back when dropped (unless it was evicted,
/// which gave it back already).
struct TcpSlot {
    slots: Arc<TcpSlots>,
    index: usize,
    conn: Arc<TcpConn>,
}

impl TcpSlot {
    /// Records a complete query: the connection is not idle.
    fn active(&self) {
        self.conn
            .active
            .store(self.slots.now_ms(), Ordering::Relaxed);
    }

    /// Marks the connection as waiting for an upstream.
    fn busy(&self) {
        self.conn.active.store(BUSY, Ordering::Relaxed);
    }

    /// Returns when the connection has had no complete query for the idle
    /// timeout in force, looking again every [`IDLE_CHECK`] since the
    /// timeout shortens when slots become crowded. Covers a client that
    /// sends nothing, one that sends a query byte by byte, and one that does
    /// not read its answers alike.
    async fn idle_expired(&self) {
        loop {
            let active = self.conn.active.load(Ordering::Relaxed);
            let timeout = self.slots.idle_timeout();
            let idle = if active == BUSY {
                Duration::ZERO
            } else {
                Duration::from_millis(self.slots.now_ms().saturating_sub(active))
            };
            if idle >= timeout {
                return;
            }
            tokio::time::sleep((timeout - idle).min(IDLE_CHECK)).await;
        }
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut table = self.slots.table.lock().unwrap_or_else(|e| e.into_inner());
        let mine = table.slots[self.index]
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &self.conn));
        if mine {
            table.slots[self.index] = None;
            table.free.push(self.index);
            self.slots.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Sockets bound for one listen address.
pub struct Bound {
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    udp: Vec<std::net::UdpSocket>,
    tcp: std::net::TcpListener,
}

/// How many times to look for a port free for both UDP and TCP when asked for port 0.
const PORT_ATTEMPTS: usize = 32;

/// Binds UDP (`workers` sockets sharing the port) and TCP on `addr`. With port
/// 0 the kernel picks a port, and UDP and TCP get the same one, so one number
/// serves `dig` and `dig +tcp` alike.
pub fn bind(addr: SocketAddr, workers: usize) -> Result<Bound, BindError> {
    let mut last_error = None;
    for _ in 0..if addr.port() == 0 { PORT_ATTEMPTS } else { 1 } {
        match try_bind(addr, workers.max(1)) {
            Ok(bound) => return Ok(bound),
            Err(e) if e.source.kind() == io::ErrorKind::AddrInUse && addr.port() == 0 => {
                last_error = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.expect("at least one attempt"))
}

/// A listen address that could not be bound: over which transport, and why.
#[derive(Debug, thiserror::Error)]
#[error("over {transport}: {source}")]
pub struct BindError {
    /// `UDP` or `TCP`.
    pub transport: &'static str,
    /// Why.
    pub source: io::Error,
}

fn try_bind(addr: SocketAddr, workers: usize) -> Result<Bound, BindError> {
    let tcp_error = |source| BindError {
        transport: "TCP",
        source,
    };
    let udp_error = |source| BindError {
        transport: "UDP",
        source,
    };
    // With a fixed port, TCP first: its bind fails when another server has
    // the port, before a UDP socket (SO_REUSEPORT would let it share the
    // port) takes any of that server's queries.
    let early_tcp = match addr.port() {
        0 => None,
        _ => Some(tcp_listener(addr).map_err(tcp_error)?),
    };
    let first = udp_socket(addr).map_err(udp_error)?;
    let addr = first
        .local_addr()
        .map_err(udp_error)?
        .as_socket()
        .expect("an IP socket");
    let mut udp = vec![first.into()];
    for _ in 1..workers {
        udp.push(udp_socket(addr).map_err(udp_error)?.into());
    }
    let tcp = match early_tcp {
        Some(tcp) => tcp,
        None => tcp_listener(addr).map_err(tcp_error)?,
    };
    Ok(Bound {
        addr,
        udp,
        tcp: tcp.into(),
    })
}

fn tcp_listener(addr: SocketAddr) -> io::Result<Socket> {
    let tcp = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    if addr.is_ipv6() {
        tcp.set_only_v6(true)?;
    }
    tcp.set_reuse_address(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(1024)?;
    tcp.set_nonblocking(true)?;
    Ok(tcp)
}

fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(SockProtocol::UDP),
    )?;
    if addr.is_ipv6() {
        // Let [::]:53 and 0.0.0.0:53 be listed separately.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    // Bursts queue in the kernel rather than being dropped; the kernel caps
    // these at net.core.{r,w}mem_max, which is fine.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Serves DNS on the bound sockets until `shutdown` is cancelled.
pub async fn run(
    bound: Vec<Bound>,
    snapshots: SnapshotHandle,
    limits: TcpLimits,
    forwarder: Option<Arc<Forwarder>>,
    transfers: Option<Arc<Transfers>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut tasks = JoinSet::new();
    let tcp_slots = Arc::new(TcpSlots::new(limits));
    for b in bound {
        info!(addr = %b.addr, "listening on UDP and TCP");
        for socket in b.udp {
            let socket = Arc::new(UdpSocket::from_std(socket)?);
            tasks.spawn(udp_loop(
                socket,
                snapshots.clone(),
                forwarder.clone(),
                transfers.clone(),
            ));
        }
        let listener = TcpListener::from_std(b.tcp)?;
        tasks.spawn(tcp_accept_loop(
            listener,
            snapshots.clone(),
            tcp_slots.clone(),
            forwarder.clone(),
            transfers.clone(),
            shutdown.clone(),
        ));
    }
    shutdown.cancelled().await;
    // UDP loops hold no state worth draining: stop them where they are.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn udp_loop(
    socket: Arc<UdpSocket>,
    snapshots: SnapshotHandle,
    forwarder: Option<Arc<Forwarder>>,
    transfers: Option<Arc<Transfers>>,
) {
    let fd = socket.as_raw_fd();
    let mut received = Received::new();
    let mut outgoing = Outgoing::new();
    loop {
        let count = match socket
            .async_io(Interest::READABLE, || received.recv(fd))
            .await
        {
            Ok(count) => count,
            Err(error) => {
                // ICMP errors from earlier sends surface here; keep serving.
                debug!(%error, "UDP receive failed");
                continue;
            }
        };
        outgoing.clear();
        let received_at = Instant::now();
        let snapshot = snapshots.load();
        // Counted on this thread's shard: nothing below awaits.
        let answered = dns::with(|shard| {
            let mut answered = 0;
            for i in 0..count {
                let (query, Some(peer)) = received.get(i) else {
                    continue;
                };
                shard.request(Proto::Udp, query);
                let reply = outgoing.next_buf();
                let context = (
                    forwarder.as_ref(),
                    transfers.as_deref(),
                    &socket,
                    received_at,
                );
                if answer_udp(query, peer, &snapshot, context, reply) {
                    shard.response(Proto::Udp, reply);
                    query_log::record(peer, query, reply, Proto::Udp, received_at);
                    outgoing.commit(peer);
                    answered += 1;
                }
            }
            answered
        });
        drop(snapshot);
        while !outgoing.is_done() {
            if let Err(error) = socket
                .async_io(Interest::WRITABLE, || outgoing.send(fd))
                .await
            {
                debug!(%error, "UDP send failed");
                break;
            }
        }
        // Per batch: every query in it waited from the read to the send.
        dns::with(|shard| shard.duration(Proto::Udp, received_at.elapsed(), answered));
    }
}

/// Answers one UDP query into `response`; false when nothing is to be sent
/// now (dropped, or handed to a task that waits for an upstream).
fn answer_udp(
    query: &[u8],
    peer: SocketAddr,
    snapshot: &Snapshot,
    (forwarder, transfers, socket, received_at): (
        Option<&Arc<Forwarder>>,
        Option<&Transfers>,
        &Arc<UdpSocket>,
        Instant,
    ),
    response: &mut Vec<u8>,
) -> bool {
    let outcome = respond::respond(snapshot, query, Transport::Udp, response);
    if let (Outcome::Transfer | Outcome::Signed, Some(t)) = (outcome, transfers) {
        // The rare path: one reply at most over UDP.
        let reply = transfer::answer(
            t,
            snapshot,
            query,
            peer.ip(),
            Transport::Udp,
            outcome,
            response,
        );
        return match reply.into_iter().next() {
            Some(reply) => {
                *response = reply;
                true
            }
            None => false,
        };
    }
    let next = forward::after_respond(
        outcome,
        forwarder.map(|f| &**f),
        (peer.ip(), query, Transport::Udp),
        response,
    );
    match (next, forwarder) {
        (Next::Drop, _) => return false,
        (Next::Resolve, Some(f)) => match f.in_flight.clone().try_acquire_owned() {
            Ok(slot) => {
                let (f, socket) = (f.clone(), socket.clone());
                let query = query.to_vec();
                let mut out = response.clone();
                tokio::spawn(async move {
                    f.resolve(&query, Transport::Udp, &mut out).await;
                    drop(slot);
                    dns::with(|shard| {
                        shard.response(Proto::Udp, &out);
                        shard.duration(Proto::Udp, received_at.elapsed(), 1);
                    });
                    query_log::record(peer, &query, &out, Proto::Udp, received_at);
                    if let Err(error) = socket.send_to(&out, peer).await {
                        debug!(%error, %peer, "UDP send failed");
                    }
                });
                return false;
            }
            // Too many queries waiting for upstreams: fail fast.
            Err(_) => {
                crate::metrics::forward_result("overloaded");
                forward::servfail(response)
            }
        },
        _ => {}
    }
    true
}

async fn tcp_accept_loop(
    listener: TcpListener,
    snapshots: SnapshotHandle,
    slots: Arc<TcpSlots>,
    forwarder: Option<Arc<Forwarder>>,
    transfers: Option<Arc<Transfers>>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly
                // rather than spin.
                warn!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(slot) = slots.admit(peer) else {
            debug!(%peer, "TCP connection limit reached, every connection busy; closing new connection");
            continue;
        };
        let snapshots = snapshots.clone();
        let shutdown = shutdown.clone();
        let forwarder = forwarder.clone();
        let transfers = transfers.clone();
        connections.spawn(async move {
            let context = (forwarder.as_deref(), transfers.as_deref());
            let connection = tcp_connection(stream, peer, &snapshots, context, &slot);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        debug!(%error, %peer, "TCP connection closed");
                    }
                }
                () = slot.idle_expired() => {}
                () = slot.conn.evict.cancelled() => {}
                () = shutdown.cancelled() => {}
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// Answers length-prefixed queries on one connection, in order, until the
/// client closes it. The caller closes it when `slot` is idle too long or
/// evicted. A forwarded query is resolved inline: the connection's later
/// queries wait for it, as they would on a single-threaded resolver, and
/// other connections are unaffected.
async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    snapshots: &SnapshotHandle,
    (forwarder, transfers): (Option<&Forwarder>, Option<&Transfers>),
    slot: &TcpSlot,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut query = vec![0u8; 65535];
    let mut response = Vec::with_capacity(4096);
    let mut framed = Vec::with_capacity(4096);
    loop {
        let len = match stream.read_u16().await {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            r => r? as usize,
        };
        stream.read_exact(&mut query[..len]).await?;
        slot.active();
        let received_at = Instant::now();
        dns::with(|shard| shard.request(Proto::Tcp, &query[..len]));
        let outcome = respond::respond(
            &snapshots.load(),
            &query[..len],
            Transport::Tcp,
            &mut response,
        );
        if let (Outcome::Transfer | Outcome::Signed, Some(t)) = (outcome, transfers) {
            // A transfer holds its snapshot until its last message is out.
            // Walking a large zone takes a while: off the worker, so the
            // query loops sharing it keep answering meanwhile.
            let snapshot = snapshots.load_full();
            let messages = tokio::task::block_in_place(|| {
                transfer::answer(
                    t,
                    &snapshot,
                    &query[..len],
                    peer.ip(),
                    Transport::Tcp,
                    outcome,
                    &response,
                )
            });
            for message in messages {
                framed.clear();
                framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
                framed.extend_from_slice(&message);
                stream.write_all(&framed).await?;
                // A long transfer is not an idle connection.
                slot.active();
            }
            continue;
        }
        let next = forward::after_respond(
            outcome,
            forwarder,
            (peer.ip(), &query[..len], Transport::Tcp),
            &mut response,
        );
        match (next, forwarder) {
            (Next::Drop, _) => return Ok(()),
            (Next::Resolve, Some(f)) => {
                slot.busy();
                f.resolve(&query[..len], Transport::Tcp, &mut response)
                    .await;
                slot.active();
            }
            _ => {}
        }
        // One write, so the length and the message leave in one segment.
        framed.clear();
        framed.extend_from_slice(&(response.len() as u16).to_be_bytes());
        framed.extend_from_slice(&response);
        // Counted before the write, which may wait on a slow reader.
        dns::with(|shard| shard.response(Proto::Tcp, &response));
        query_log::record(peer, &query[..len], &response, Proto::Tcp, received_at);
        // A client that stops reading does not hold its slot: the write
        // stalls, no query completes, and the idle timeout or an eviction
        // ends the connection.
        stream.write_all(&framed).await?;
        dns::with(|shard| shard.duration(Proto::Tcp, received_at.elapsed(), 1));
    }
}
