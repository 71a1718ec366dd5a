//! Names outside every zone: forwarding to upstream resolvers, a cache of
//! their answers, and the allow list that keeps the server from being an open
//! resolver.
//!
//! This is a small transparent forwarder rather than hickory-resolver: the
//! resolver returns lookups, not messages, so it would lose the authority
//! section (the SOA that negative answers carry and RFC 2308 caching needs)
//! and the exact response code. Here a query goes to each upstream in order
//! over UDP (over TCP when the answer comes back truncated); the answer is
//! parsed with hickory-proto's `Message`, cached as a message, and patched for
//! each client (ID, question case, TTLs decremented by age, EDNS, truncation).
//!
//! None of this is on the authoritative path: [`crate::answer::respond::respond`] answers
//! zone names without ever reaching here.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::answer::respond::{MAX_UDP_PAYLOAD, Outcome, Transport};
use crate::answer::wire::{flag, rcode, update_flags};

/// Longest wait for one upstream before trying the next: short enough that a
/// dead first upstream leaves time for the second within a stub resolver's
/// own timeout (glibc waits 5 s).
pub const PER_UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);
/// Forwarded UDP queries waiting for an upstream at once; beyond this they get
/// SERVFAIL at once, so a flood of queries cannot spawn unbounded tasks.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Positive answers are kept at most a day, whatever their TTL.
const MAX_CACHE_TTL: u32 = 86_400;
/// Negative answers at most three hours (RFC 2308 section 5).
const MAX_NEGATIVE_TTL: u32 = 10_800;

/// Forwarding settings, validated.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Upstream resolvers, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Client networks allowed to use forwarding; `None` means the default:
    /// loopback plus the listen addresses.
    pub allow: Option<Vec<IpNet>>,
    /// Total time to get an answer before giving SERVFAIL.
    pub timeout: Duration,
    /// Most cached answers; 0 disables the cache.
    pub cache_size: usize,
}

/// Why forwarding cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// An upstream is this server itself: every forwarded query would loop.
    #[error(
        "forwarding loop: upstream {upstream} is this server itself (listening on {listen}); \
         point --forward at another resolver"
    )]
    Loop {
        /// The upstream.
        upstream: SocketAddr,
        /// The listen address it reaches.
        listen: SocketAddr,
    },
}

/// Whether `ip` is an address of this machine. Loopback and unspecified
/// addresses always are; otherwise a UDP socket "connected" to it (a route
/// lookup, no packet sent) picks `ip` itself as its source only when `ip` is
/// local. Binding to `ip` would also tell, but not on hosts with
/// `ip_nonlocal_bind` set, where it succeeds for any address.
pub fn is_local(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    let any: SocketAddr = match ip {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    StdUdpSocket::bind(any)
        .and_then(|s| s.connect((ip, 9)).and_then(|()| s.local_addr()))
        .is_ok_and(|local| local.ip() == ip)
}

/// Refuses upstreams that are this server: the same address as a listen
/// address, or a local address on the port of a wildcard listen address.
pub fn check_loop(upstreams: &[SocketAddr], listen: &[SocketAddr]) -> Result<(), ForwardError> {
    for &upstream in upstreams {
        for &l in listen {
            let same_family = upstream.is_ipv4() == l.is_ipv4();
            let reaches = upstream == l
                || (upstream.port() == l.port()
                    && same_family
                    && (l.ip().is_unspecified() || upstream.ip().is_unspecified())
                    && is_local(upstream.ip()));
            if reaches {
                return Err(ForwardError::Loop {
                    upstream,
                    listen: l,
                });
            }
        }
    }
    Ok(())
}

/// Which clients may have names outside our zones resolved.
#[derive(Debug)]
pub struct AllowList {
    nets: Vec<IpNet>,
    /// Also any local address: the server listens on a wildcard address.
    local: bool,
    /// Recent answers of [`is_local`], which costs a few system calls: a
    /// flood of queries from remote addresses must not pay them per packet
    /// in the UDP loop. Bounded, and entries age out as addresses change.
    local_seen: std::sync::Mutex<std::collections::HashMap<IpAddr, (bool, std::time::Instant)>>,
}

/// How long a "local or not" answer is trusted.
const LOCAL_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Most addresses remembered; the memory is cleared when full.
const LOCAL_ENTRIES: usize = 4096;

impl AllowList {
    /// `configured`, or by default loopback and the listen addresses (a
    /// wildcard listen address meaning any address of this machine).
    pub fn new(configured: Option<&[IpNet]>, listen: &[SocketAddr]) -> AllowList {
        if let Some(nets) = configured {
            return AllowList {
                nets: nets.to_vec(),
                local: false,
                local_seen: Default::default(),
            };
        }
        let mut nets: Vec<IpNet> = vec![
            "127.0.0.0/8".parse().expect("valid"),
            "::1/128".parse().expect("valid"),
        ];
        let mut local = false;
        for l in listen {
            if l.ip().is_unspecified() {
                local = true;
            } else {
                nets.push(IpNet::from(l.ip()));
            }
        }
        AllowList {
            nets,
            local,
            local_seen: Default::default(),
        }
    }

    /// The listed networks only: cheap enough for every query (no syscall).
    pub fn listed(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether `ip` may use forwarding.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.listed(ip) || (self.local && self.is_local_cached(ip))
    }

    fn is_local_cached(&self, ip: IpAddr) -> bool {
        let now = std::time::Instant::now();
        // A short critical section with no await: a std Mutex is right here.
        let mut seen = self.local_seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(local, at)) = seen.get(&ip)
            && now.duration_since(at) < LOCAL_TTL
        {
            return local;
        }
        let local = is_local(ip);
        if seen.len() >= LOCAL_ENTRIES {
            seen.clear();
        }
        seen.insert(ip, (local, now));
        local
    }
}

/// The cache key: the question, lowercased, whether DNSSEC records were
/// asked for, and whether validation was turned off (CD): a validating
/// upstream's answers differ with both, and an unvalidated answer must not
/// reach a client that wants validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    name: String,
    qtype: RecordType,
    qclass: DNSClass,
    dnssec_ok: bool,
    checking_disabled: bool,
}

struct Entry {
    message: Message,
    stored: Instant,
    ttl: u32,
}

/// A bounded cache with first-in first-out eviction: simple, O(1), and good
/// enough for a forwarder on one machine, where the hot names are re-fetched
/// as soon as they expire anyway. Expired entries stay until they are
/// replaced or evicted, so the map and the queue always hold the same keys.
struct Cache {
    entries: HashMap<Key, Entry>,
    order: VecDeque<Key>,
    capacity: usize,
}

impl Cache {
    fn get(&self, key: &Key, now: Instant) -> Option<(Message, u32)> {
        let entry = self.entries.get(key)?;
        let age = now.saturating_duration_since(entry.stored).as_secs();
        (age < u64::from(entry.ttl)).then(|| (entry.message.clone(), age as u32))
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        if self.capacity == 0 {
            return;
        }
        if let Some(slot) = self.entries.get_mut(&key) {
            *slot = entry;
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.order.push_back(key.clone());
        self.entries.insert(key, entry);
    }
}

/// Forwards queries for names outside our zones.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    allow: AllowList,
    /// A std mutex: held only to look up or insert, never across an await.
    cache: Mutex<Cache>,
    /// Slots for forwarded UDP queries in flight.
    pub in_flight: Arc<Semaphore>,
}

/// What the client asked, as far as forwarding needs it.
struct ClientQuery {
    message: Message,
    key: Key,
    /// The UDP payload size the client accepts, or 64 KiB over TCP.
    limit: usize,
}

impl Forwarder {
    /// A forwarder for a server listening on `listen`.
    pub fn new(config: &ForwardConfig, listen: &[SocketAddr]) -> Forwarder {
        Forwarder {
            upstreams: config.upstreams.clone(),
            timeout: config.timeout,
            allow: AllowList::new(config.allow.as_deref(), listen),
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                order: VecDeque::new(),
                capacity: config.cache_size,
            }),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Whether to set RA on authoritative answers to `ip`. Only the listed
    /// networks are checked, so that the authoritative path makes no syscall;
    /// a client allowed only as a local address of a wildcard listener gets
    /// RA on forwarded answers alone.
    pub fn recursion_available(&self, ip: IpAddr) -> bool {
        self.allow.listed(ip)
    }

    /// Whether `ip` may use forwarding.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.allows(ip)
    }

    /// Answers in the cache, for the metrics.
    pub fn cache_entries(&self) -> usize {
        self.cache
            .lock()
            .expect("cache lock poisoned")
            .entries
            .len()
    }

    /// Answers `query` from the cache into `out`; false on a miss.
    pub fn answer_cached(&self, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> bool {
        let Some(client) = ClientQuery::parse(query, transport) else {
            return false;
        };
        let hit = self
            .cache
            .lock()
            .expect("cache lock poisoned")
            .get(&client.key, Instant::now());
        let Some((mut message, age)) = hit else {
            return false;
        };
        crate::metrics::forward_result("cached");
        for record in message
            .answers
            .iter_mut()
            .chain(message.authorities.iter_mut())
            .chain(message.additionals.iter_mut())
        {
            record.decrement_ttl(age);
        }
        client.write_response(message, out)
    }

    /// Resolves `query` through the upstreams and writes the answer into
    /// `out`, which holds the REFUSED response [`crate::answer::respond::respond`] made:
    /// on failure it becomes SERVFAIL.
    pub async fn resolve(&self, query: &[u8], transport: Transport, out: &mut Vec<u8>) {
        let Some(client) = ClientQuery::parse(query, transport) else {
            crate::metrics::forward_result("failed");
            servfail(out);
            return;
        };
        let asked = Instant::now();
        let answer = self.ask_upstreams(&client).await;
        crate::metrics::global()
            .forward_duration
            .observe(asked.elapsed().as_secs_f64());
        crate::metrics::forward_result(match &answer {
            Some(m)
                if matches!(
                    m.metadata.response_code,
                    ResponseCode::NoError | ResponseCode::NXDomain
                ) =>
            {
                "answered"
            }
            Some(_) => "upstream_error",
            None => "failed",
        });
        if let Some(message) = answer {
            if let Some(ttl) = cache_ttl(&message) {
                let entry = Entry {
                    message: message.clone(),
                    stored: Instant::now(),
                    ttl,
                };
                self.cache
                    .lock()
                    .expect("cache lock poisoned")
                    .insert(client.key.clone(), entry);
            }
            if client.write_response(message, out) {
                return;
            }
        }
        servfail(out);
    }

    /// Tries each upstream in order, twice round, within the total timeout.
    /// Returns the first usable answer, or the last error answer (SERVFAIL,
    /// REFUSED...) if every upstream gave one.
    async fn ask_upstreams(&self, client: &ClientQuery) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut upstream_query = Message::query();
        upstream_query.metadata.recursion_desired = true;
        upstream_query.metadata.checking_disabled = client.message.metadata.checking_disabled;
        upstream_query.add_queries(client.message.queries.iter().cloned());
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        edns.set_dnssec_ok(client.key.dnssec_ok);
        upstream_query.set_edns(edns);

        let mut last_error_answer = None;
        for upstream in self.upstreams.iter().chain(self.upstreams.iter()) {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let attempt_deadline = deadline.min(now + PER_UPSTREAM_TIMEOUT);
            // A fresh ID and source port for every attempt (RFC 5452).
            upstream_query.metadata.id = Message::query().metadata.id;
            match exchange(*upstream, &upstream_query, attempt_deadline).await {
                Ok(answer) => match answer.metadata.response_code {
                    ResponseCode::NoError | ResponseCode::NXDomain => return Some(answer),
                    code => {
                        debug!(%upstream, %code, "upstream gave an error");
                        last_error_answer = Some(answer);
                    }
                },
                Err(error) => debug!(%upstream, %error, "upstream failed"),
            }
        }
        last_error_answer
    }
}

/// What the server loop does with a response once [`respond`] wrote it.
///
/// [`respond`]: crate::answer::respond::respond
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send it.
    Send,
    /// Send nothing.
    Drop,
    /// Ask the upstreams, and send what they answer.
    Resolve,
}

/// The forwarding decision, one for UDP and TCP: an authoritative answer
/// gets RA for a client that may recurse through this server; a name
/// outside every zone, from a client allowed to forward and not answered
/// from the cache, goes upstream.
pub fn after_respond(
    outcome: Outcome,
    forwarder: Option<&Forwarder>,
    (client, query, transport): (IpAddr, &[u8], Transport),
    response: &mut Vec<u8>,
) -> Next {
    match (outcome, forwarder) {
        (Outcome::Drop, _) => Next::Drop,
        (Outcome::Reply, Some(f)) if f.recursion_available(client) => {
            set_recursion_available(response);
            Next::Send
        }
        (Outcome::NotAuthoritative, Some(f))
            if f.allows(client) && !f.answer_cached(query, transport, response) =>
        {
            Next::Resolve
        }
        _ => Next::Send,
    }
}

/// Turns the REFUSED response in `out` into SERVFAIL (header and question,
/// OPT echoed), with RA set.
pub fn servfail(out: &mut [u8]) {
    update_flags(out, u16::from(rcode::SERVFAIL) | flag::RA, flag::RCODE_MASK);
}

/// Sets RA in a response already written.
pub fn set_recursion_available(out: &mut [u8]) {
    update_flags(out, flag::RA, 0);
}

impl ClientQuery {
    fn parse(query: &[u8], transport: Transport) -> Option<ClientQuery> {
        let message = Message::from_vec(query).ok()?;
        let question = message.queries.first()?;
        let dnssec_ok = message.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let limit = match (transport, &message.edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, None) => 512,
            (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
        };
        let key = Key {
            name: question.name().to_lowercase().to_ascii(),
            qtype: question.query_type(),
            qclass: question.query_class(),
            dnssec_ok,
            checking_disabled: message.metadata.checking_disabled,
        };
        Some(ClientQuery {
            message,
            key,
            limit,
        })
    }

    /// Patches an upstream answer for this client and encodes it into `out`.
    fn write_response(&self, mut answer: Message, out: &mut Vec<u8>) -> bool {
        let asked = &self.message.metadata;
        answer.metadata.id = asked.id;
        answer.metadata.message_type = MessageType::Response;
        answer.metadata.op_code = OpCode::Query;
        // Our answer is not authoritative, whatever the upstream's was.
        answer.metadata.authoritative = false;
        answer.metadata.truncation = false;
        answer.metadata.recursion_desired = asked.recursion_desired;
        answer.metadata.recursion_available = true;
        answer.metadata.checking_disabled = asked.checking_disabled;
        // RFC 6840 5.8: AD only for clients that asked for it.
        answer.metadata.authentic_data &= asked.authentic_data || self.key.dnssec_ok;
        // Echo the client's question, letter case included.
        answer.queries = self.message.queries.clone();
        answer.edns = self.message.edns.as_ref().map(|_| {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            edns.set_dnssec_ok(self.key.dnssec_ok);
            edns
        });
        if answer.edns.is_none() && answer.metadata.response_code.high() > 0 {
            // An extended code cannot be told to a client without EDNS.
            answer.metadata.response_code = ResponseCode::ServFail;
        }
        let Ok(mut bytes) = answer.to_vec() else {
            return false;
        };
        if bytes.len() > self.limit {
            // Additional records may go without TC (RFC 2181 section 9); if
            // the rest still does not fit, send it empty with TC so the
            // client retries over TCP.
            answer.additionals.clear();
            bytes = match answer.to_vec() {
                Ok(b) if b.len() <= self.limit => b,
                _ => {
                    answer.answers.clear();
                    answer.authorities.clear();
                    answer.metadata.truncation = true;
                    match answer.to_vec() {
                        Ok(b) => b,
                        Err(_) => return false,
                    }
                }
            };
        }
        out.clear();
        out.extend_from_slice(&bytes);
        true
    }
}

/// How long an upstream answer may be cached, if at all: the smallest TTL of
/// a positive answer; for NXDOMAIN and NODATA min(SOA TTL, SOA MINIMUM) from
/// the authority section (RFC 2308 section 5), and not at all without an SOA.
/// Errors are not cached: the next query tries the upstreams again.
fn cache_ttl(message: &Message) -> Option<u32> {
    if message.metadata.truncation {
        return None;
    }
    let records = || {
        message
            .answers
            .iter()
            .chain(message.authorities.iter())
            .filter(|r| r.record_type() != RecordType::OPT)
    };
    let ttl = match message.metadata.response_code {
        ResponseCode::NoError if has_answer(message) => {
            records().map(|r| r.ttl).min()?.min(MAX_CACHE_TTL)
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            let soa = message.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some((r.ttl, soa.minimum)),
                _ => None,
            })?;
            let answers = message.answers.iter().map(|r| r.ttl).min();
            soa.0
                .min(soa.1)
                .min(answers.unwrap_or(u32::MAX))
                .min(MAX_NEGATIVE_TTL)
        }
        _ => return None,
    };
    (ttl > 0).then_some(ttl)
}

/// Whether the answer section answers the question (not just a CNAME chain
/// ending nowhere, which is NODATA for the final name).
fn has_answer(message: &Message) -> bool {
    let Some(q) = message.queries.first() else {
        return !message.answers.is_empty();
    };
    message
        .answers
        .iter()
        .any(|r: &Record| r.record_type() == q.query_type() || q.query_type() == RecordType::ANY)
        || (!message.answers.is_empty()
            && !message
                .authorities
                .iter()
                .any(|r| r.record_type() == RecordType::SOA))
}

/// One query to one upstream: UDP, then TCP if the answer is truncated.
async fn exchange(
    upstream: SocketAddr,
    query: &Message,
    deadline: tokio::time::Instant,
) -> io::Result<Message> {
    let bytes = query
        .to_vec()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let answer = tokio::time::timeout_at(deadline, exchange_udp(upstream, query, &bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))??;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    tokio::time::timeout_at(deadline, exchange_tcp(upstream, query, &bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no TCP answer in time"))?
}

async fn exchange_udp(upstream: SocketAddr, query: &Message, bytes: &[u8]) -> io::Result<Message> {
    let any: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    // Connected: the kernel drops datagrams from anyone else, and a closed
    // port is reported at once (ICMP) instead of waiting for the timeout.
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buf).await?;
        if let Some(answer) = matching_answer(query, &buf[..len]) {
            return Ok(answer);
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, query: &Message, bytes: &[u8]) -> io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    matching_answer(query, &buf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "answer does not match query"))
}

/// Parses `bytes` if they answer `query`: same ID, a response, same question.
/// Anything else is ignored (late answers, spoofing attempts).
fn matching_answer(query: &Message, bytes: &[u8]) -> Option<Message> {
    let answer = Message::from_vec(bytes).ok()?;
    let same_question = match (answer.queries.first(), query.queries.first()) {
        (Some(a), Some(q)) => {
            a.query_type() == q.query_type()
                && a.query_class() == q.query_class()
                && a.name() == q.name()
        }
        _ => false,
    };
    (answer.metadata.id == query.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && same_question)
        .then_some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_allow_list_is_loopback_and_listen_addresses() {
        let listen = ["10.1.2.3:53".parse().unwrap()];
        let allow = AllowList::new(None, &listen);
        assert!(allow.allows("127.0.0.1".parse().unwrap()));
        assert!(allow.allows("127.9.9.9".parse().unwrap()));
        assert!(allow.allows("::1".parse().unwrap()));
        assert!(allow.allows("10.1.2.3".parse().unwrap()));
        assert!(!allow.allows("10.1.2.4".parse().unwrap()));
        assert!(!allow.allows("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn with_a_wildcard_listen_address_remote_clients_are_refused_and_remembered() {
        let listen = ["0.0.0.0:53".parse().unwrap()];
        let allow = AllowList::new(None, &listen);
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!allow.allows(remote));
        // The second look is answered from memory, not by system calls.
        assert_eq!(
            allow.local_seen.lock().unwrap().get(&remote).map(|e| e.0),
            Some(false)
        );
        assert!(!allow.allows(remote));
        assert!(allow.allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn configured_allow_list_replaces_the_default() {
        let nets = ["10.0.0.0/8".parse().unwrap()];
        let allow = AllowList::new(Some(&nets), &["127.0.0.1:53".parse().unwrap()]);
        assert!(allow.allows("10.9.9.9".parse().unwrap()));
        assert!(!allow.allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn loops_are_detected() {
        let listen: Vec<SocketAddr> = vec!["127.0.0.1:5300".parse().unwrap()];
        assert!(check_loop(&["127.0.0.1:5300".parse().unwrap()], &listen).is_err());
        assert!(check_loop(&["127.0.0.1:53".parse().unwrap()], &listen).is_ok());
        assert!(check_loop(&["127.0.0.2:5300".parse().unwrap()], &listen).is_ok());
        let wildcard: Vec<SocketAddr> = vec!["0.0.0.0:5300".parse().unwrap()];
        assert!(check_loop(&["127.0.0.2:5300".parse().unwrap()], &wildcard).is_err());
        assert!(check_loop(&["192.0.2.1:5300".parse().unwrap()], &wildcard).is_ok());
        let v6: Vec<SocketAddr> = vec!["[::]:5300".parse().unwrap()];
        assert!(check_loop(&["[::1]:5300".parse().unwrap()], &v6).is_err());
        assert!(check_loop(&["127.0.0.1:5300".parse().unwrap()], &v6).is_ok());
    }

    #[test]
    fn cache_evicts_the_oldest_entry() {
        let mut cache = Cache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: 2,
        };
        let key = |n: &str| Key {
            name: n.into(),
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            dnssec_ok: false,
            checking_disabled: false,
        };
        let entry = || Entry {
            message: Message::response(0, OpCode::Query),
            stored: Instant::now(),
            ttl: 60,
        };
        cache.insert(key("a."), entry());
        cache.insert(key("b."), entry());
        cache.insert(key("a."), entry());
        cache.insert(key("c."), entry());
        let now = Instant::now();
        assert!(cache.get(&key("a."), now).is_none());
        assert!(cache.get(&key("b."), now).is_some());
        assert!(cache.get(&key("c."), now).is_some());
        assert_eq!(cache.entries.len(), 2);
        assert_eq!(cache.order.len(), 2);
    }
}
