//! Many UDP datagrams per system call: `recvmmsg` and `sendmmsg` (Linux).
//!
//! Under load most of a DNS server's time is the kernel's, one `recvfrom`
//! and one `sendto` per query plus the wake-ups between them. Reading and
//! writing up to [`BATCH`] datagrams per call takes most of those away; it
//! is what Knot DNS does. The buffers are allocated once per socket loop.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// The largest query read; a longer datagram is cut, fails to parse and is
/// answered FORMERR. Real queries are a few hundred bytes at most.
pub const MAX_QUERY: usize = 4096;

/// Received datagrams: their bytes and their senders.
pub struct Received {
    bufs: Box<[[u8; MAX_QUERY]]>,
    names: Box<[libc::sockaddr_storage]>,
    lens: [usize; BATCH],
    count: usize,
}

impl Default for Received {
    fn default() -> Self {
        Received::new()
    }
}

impl Received {
    /// Empty buffers for [`BATCH`] datagrams.
    pub fn new() -> Received {
        Received {
            bufs: vec![[0u8; MAX_QUERY]; BATCH].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
            names: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            lens: [0; BATCH],
            count: 0,
        }
    }

    /// Reads as many datagrams as are waiting, up to [`BATCH`], without
    /// blocking (`WouldBlock` when there are none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain data; every pointer set below
        // points into buffers owned by `self`, which outlive the call.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iovecs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovecs[i].iov_len = MAX_QUERY;
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut iovecs[i];
            hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH initialised headers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for (len, msg) in self.lens.iter_mut().zip(&msgs).take(self.count) {
            *len = (msg.msg_len as usize).min(MAX_QUERY);
        }
        Ok(self.count)
    }

    /// Datagram `i` of the last [`Received::recv`], with its sender (`None`
    /// for an address family other than IPv4 and IPv6).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.bufs[i][..self.lens[i]], socket_addr(&self.names[i]))
    }
}

fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let ptr: *const libc::sockaddr_storage = name;
    match name.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*ptr.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*ptr.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// Answers waiting to be sent, each with its destination.
pub struct Outgoing {
    bufs: Vec<Vec<u8>>,
    peers: Vec<SockAddr>,
    count: usize,
    sent: usize,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing::new()
    }
}

impl Outgoing {
    /// Room for [`BATCH`] answers.
    pub fn new() -> Outgoing {
        Outgoing {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            peers: Vec::with_capacity(BATCH),
            count: 0,
            sent: 0,
        }
    }

    /// Forgets what was queued.
    pub fn clear(&mut self) {
        self.count = 0;
        self.sent = 0;
        self.peers.clear();
    }

    /// The buffer for the next answer, cleared; [`Outgoing::commit`] queues it.
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        let buf = &mut self.bufs[self.count];
        buf.clear();
        buf
    }

    /// Queues the buffer last returned by [`Outgoing::next_buf`] for `peer`.
    pub fn commit(&mut self, peer: SocketAddr) {
        self.peers.push(SockAddr::from(peer));
        self.count += 1;
    }

    /// Whether every queued answer has been sent (or given up on).
    pub fn is_done(&self) -> bool {
        self.sent >= self.count
    }

    /// Sends what is left without blocking. An answer the kernel refuses
    /// outright (its destination unreachable) is skipped, so one bad address
    /// does not hold up the others.
    pub fn send(&mut self, fd: RawFd) -> io::Result<()> {
        while self.sent < self.count {
            let pending = self.count - self.sent;
            // SAFETY: as in `Received::recv`: plain data, pointers into
            // buffers that outlive the call, sockaddrs valid for their length.
            let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            for k in 0..pending {
                let i = self.sent + k;
                iovecs[k].iov_base = self.bufs[i].as_ptr() as *mut libc::c_void;
                iovecs[k].iov_len = self.bufs[i].len();
                let hdr = &mut msgs[k].msg_hdr;
                hdr.msg_name = self.peers[i].as_ptr() as *mut libc::c_void;
                hdr.msg_namelen = self.peers[i].len();
                hdr.msg_iov = &mut iovecs[k];
                hdr.msg_iovlen = 1;
            }
            // SAFETY: `msgs` holds `pending` initialised headers.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    pending as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::WouldBlock {
                    return Err(error);
                }
                tracing::debug!(%error, "UDP send failed");
                self.sent += 1;
            } else {
                self.sent += n as usize;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn datagrams_go_both_ways_in_batches() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..40u8 {
            client
                .send_to(&[i; 3], server.local_addr().unwrap())
                .unwrap();
        }
        let mut received = Received::new();
        let mut outgoing = Outgoing::new();
        let mut total = 0;
        while total < 40 {
            let n = received.recv(server.as_raw_fd()).unwrap();
            outgoing.clear();
            for i in 0..n {
                let (bytes, peer) = received.get(i);
                assert_eq!(peer, Some(client.local_addr().unwrap()));
                assert_eq!(bytes, &[(total + i) as u8; 3]);
                outgoing.next_buf().extend_from_slice(bytes);
                outgoing.commit(peer.unwrap());
            }
            outgoing.send(server.as_raw_fd()).unwrap();
            assert!(outgoing.is_done());
            total += n;
        }
        let mut buf = [0u8; 16];
        for i in 0..40u8 {
            let (len, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], &[i; 3]);
        }
        let empty = received.recv(server.as_raw_fd());
        assert_eq!(empty.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
