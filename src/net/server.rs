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
//! hickory-server's `Server` is not used for serving: it spawns a task per UDP
//! query and decodes every request into an allocated message, and it has no
//! cap on concurrent TCP connections. The loops below are small and keep the
//! query path to a hash lookup and a copy.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::answer::respond::{self, Outcome, Transport};
use crate::answer::snapshot::Snapshot;
use crate::answer::snapshot::SnapshotHandle;
use crate::net::forward::{self, Forwarder};
use crate::net::udp_batch::{Outgoing, Received};

/// Limits of the TCP listener (RFC 7766 section 6.2).
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// A connection with no complete query for this long is closed.
    pub idle_timeout: Duration,
    /// Connections beyond this many are closed as soon as they are accepted.
    pub max_connections: usize,
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
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Bound> {
    let mut last_error = None;
    for _ in 0..if addr.port() == 0 { PORT_ATTEMPTS } else { 1 } {
        match try_bind(addr, workers.max(1)) {
            Ok(bound) => return Ok(bound),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && addr.port() == 0 => {
                last_error = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
}

fn try_bind(addr: SocketAddr, workers: usize) -> io::Result<Bound> {
    // With a fixed port, TCP first: its bind fails when another server has
    // the port, before a UDP socket (SO_REUSEPORT would let it share the
    // port) takes any of that server's queries.
    let early_tcp = match addr.port() {
        0 => None,
        _ => Some(tcp_listener(addr)?),
    };
    let first = udp_socket(addr)?;
    let addr = first.local_addr()?.as_socket().expect("an IP socket");
    let mut udp = vec![first.into()];
    for _ in 1..workers {
        udp.push(udp_socket(addr)?.into());
    }
    let tcp = match early_tcp {
        Some(tcp) => tcp,
        None => tcp_listener(addr)?,
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
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut tasks = JoinSet::new();
    let tcp_slots = Arc::new(Semaphore::new(limits.max_connections));
    for b in bound {
        info!(addr = %b.addr, "listening on UDP and TCP");
        for socket in b.udp {
            let socket = Arc::new(UdpSocket::from_std(socket)?);
            tasks.spawn(udp_loop(socket, snapshots.clone(), forwarder.clone()));
        }
        let listener = TcpListener::from_std(b.tcp)?;
        tasks.spawn(tcp_accept_loop(
            listener,
            snapshots.clone(),
            limits,
            tcp_slots.clone(),
            forwarder.clone(),
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
        let snapshot = snapshots.load();
        for i in 0..count {
            let (query, Some(peer)) = received.get(i) else {
                continue;
            };
            let reply = outgoing.next_buf();
            if answer_udp(query, peer, &snapshot, forwarder.as_ref(), &socket, reply) {
                outgoing.commit(peer);
            }
        }
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
    }
}

/// Answers one UDP query into `response`; false when nothing is to be sent
/// now (dropped, or handed to a task that waits for an upstream).
fn answer_udp(
    query: &[u8],
    peer: SocketAddr,
    snapshot: &Snapshot,
    forwarder: Option<&Arc<Forwarder>>,
    socket: &Arc<UdpSocket>,
    response: &mut Vec<u8>,
) -> bool {
    let outcome = respond::respond(snapshot, query, Transport::Udp, response);
    match (outcome, forwarder) {
        (Outcome::Drop, _) => return false,
        (Outcome::Reply, None) | (Outcome::NotAuthoritative, None) => {}
        (Outcome::Reply, Some(f)) => {
            if f.recursion_available(peer.ip()) {
                forward::set_recursion_available(response);
            }
        }
        (Outcome::NotAuthoritative, Some(f)) => {
            if f.allows(peer.ip()) && !f.answer_cached(query, Transport::Udp, response) {
                match f.in_flight.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let (f, socket) = (f.clone(), socket.clone());
                        let query = query.to_vec();
                        let mut out = response.clone();
                        tokio::spawn(async move {
                            f.resolve(&query, Transport::Udp, &mut out).await;
                            drop(slot);
                            if let Err(error) = socket.send_to(&out, peer).await {
                                debug!(%error, %peer, "UDP send failed");
                            }
                        });
                        return false;
                    }
                    // Too many queries waiting for upstreams: fail fast.
                    Err(_) => forward::servfail(response),
                }
            }
        }
    }
    true
}

async fn tcp_accept_loop(
    listener: TcpListener,
    snapshots: SnapshotHandle,
    limits: TcpLimits,
    slots: Arc<Semaphore>,
    forwarder: Option<Arc<Forwarder>>,
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "TCP connection limit reached; closing new connection");
            continue;
        };
        let snapshots = snapshots.clone();
        let shutdown = shutdown.clone();
        let forwarder = forwarder.clone();
        connections.spawn(async move {
            let connection = tcp_connection(
                stream,
                peer,
                &snapshots,
                forwarder.as_deref(),
                limits.idle_timeout,
            );
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        debug!(%error, %peer, "TCP connection closed");
                    }
                }
                () = shutdown.cancelled() => {}
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// Answers length-prefixed queries on one connection, in order, until the
/// client closes it or is idle for `idle_timeout`. A forwarded query is
/// resolved inline: the connection's later queries wait for it, as they would
/// on a single-threaded resolver, and other connections are unaffected.
async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    snapshots: &SnapshotHandle,
    forwarder: Option<&Forwarder>,
    idle_timeout: Duration,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut query = vec![0u8; 65535];
    let mut response = Vec::with_capacity(4096);
    let mut framed = Vec::with_capacity(4096);
    loop {
        let len = match tokio::time::timeout(idle_timeout, stream.read_u16()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r? as usize,
        };
        tokio::time::timeout(idle_timeout, stream.read_exact(&mut query[..len]))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "query not completed in time")
            })??;
        let outcome = respond::respond(
            &snapshots.load(),
            &query[..len],
            Transport::Tcp,
            &mut response,
        );
        match (outcome, forwarder) {
            (Outcome::Drop, _) => return Ok(()),
            (Outcome::Reply, Some(f)) if f.recursion_available(peer.ip()) => {
                forward::set_recursion_available(&mut response);
            }
            (Outcome::NotAuthoritative, Some(f))
                if f.allows(peer.ip())
                    && !f.answer_cached(&query[..len], Transport::Tcp, &mut response) =>
            {
                f.resolve(&query[..len], Transport::Tcp, &mut response)
                    .await;
            }
            _ => {}
        }
        // One write, so the length and the message leave in one segment.
        framed.clear();
        framed.extend_from_slice(&(response.len() as u16).to_be_bytes());
        framed.extend_from_slice(&response);
        // A client that stops reading must not hold its connection slot
        // forever: a write that cannot finish within the idle timeout ends
        // the connection.
        tokio::time::timeout(idle_timeout, stream.write_all(&framed))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client not reading answers"))??;
    }
}
