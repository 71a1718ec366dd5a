//! A real etcd cluster of three members on free loopback ports in a
//! temporary directory, and signpost nodes that share it. Needs `etcd` and
//! `etcdctl` (Debian packages `etcd-server` and `etcd-client`). Shared by
//! the cluster tests and the cluster benchmark, which use different parts.
#![allow(dead_code)]

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};

use crate::common::{Server, admin_paths, query, serve_command, udp_raw};

/// A free TCP port on loopback (there is a small window before etcd binds it).
fn free_port() -> u16 {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.local_addr().unwrap().port()
}

/// One etcd member: its command line, and its process while it runs.
struct Member {
    args: Vec<String>,
    client_url: String,
    child: Option<Child>,
}

/// An etcd cluster, every member killed on drop.
pub struct Etcd {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let data = dir.path().join(format!("m{i}"));
                let args = vec![
                    format!("--name=m{i}"),
                    format!("--data-dir={}", data.display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    "--initial-cluster-state=new".into(),
                    "--initial-cluster-token=signpost-test".into(),
                    // Fast elections, so losing a member costs little time,
                    // and a 1 s minimum lease TTL.
                    "--heartbeat-interval=50".into(),
                    "--election-timeout=500".into(),
                    "--logger=zap".into(),
                    "--log-level=error".into(),
                ];
                Member {
                    args,
                    client_url,
                    child: None,
                }
            })
            .collect();
        let mut etcd = Etcd { members, _dir: dir };
        for i in 0..n {
            etcd.start_member(i);
        }
        etcd.wait_healthy();
        etcd
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Starts member `i` (again), on its data directory.
    pub fn start_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        let child = Command::new("etcd")
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (apt-get install etcd-server)");
        m.child = Some(child);
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Starts every member that is not running, and waits for a leader.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.start_member(i);
            }
        }
        self.wait_healthy();
    }

    /// Stops member `i` (SIGSTOP): its connections stay open, and it says nothing.
    pub fn pause_member(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Lets member `i` go on (SIGCONT).
    pub fn resume_member(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Runs `etcdctl` against the running members.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .collect();
        self.etcdctl_on(&running, args)
    }

    /// Runs `etcdctl` against these members.
    pub fn etcdctl_on(&self, members: &[usize], args: &[&str]) -> std::process::Output {
        let endpoints: Vec<&str> = members
            .iter()
            .map(|i| self.members[*i].client_url.as_str())
            .collect();
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--command-timeout=3s")
            .args(args)
            .output()
            .expect("etcdctl is installed (apt-get install etcd-client)")
    }

    /// Waits until a write through the running members succeeds.
    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl(&["put", "/health-probe", "1"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                self.resume_member(i);
            }
        }
        self.kill_all();
    }
}

/// The key prefix the tests use.
pub const PREFIX: &str = "/signpost-test/";

/// A signpost node of the cluster, with its own admin socket and serial
/// file in `dir`.
pub struct Node {
    pub server: Server,
    pub dir: PathBuf,
}

impl Node {
    /// Starts a node on the example zones, sharing `etcd`.
    pub fn start(etcd: &Etcd, dir: &Path) -> Node {
        Node::start_on(&etcd.endpoints(), dir)
    }

    /// Starts a node that knows only these etcd members.
    pub fn start_on(endpoints: &[String], dir: &Path) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let mut extra = vec!["--etcd-prefix".to_string(), PREFIX.to_string()];
        for e in endpoints.iter().cloned() {
            extra.push("--etcd".into());
            extra.push(e);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut command = serve_command(&crate::common::example_zones(), dir, &extra);
        command.stdout(Stdio::null());
        Node {
            server: Server::start_command(command, dir),
            dir: dir.to_path_buf(),
        }
    }

    /// The addresses this node answers for `name` (A records), sorted.
    /// A query without a reply is sent again, twice, as stub resolvers do:
    /// these tests run beside etcd members and other nodes on two cores.
    pub fn addresses(&self, name: &str) -> Vec<IpAddr> {
        let bytes = query(name, RecordType::A).to_vec().unwrap();
        let Some(reply) =
            (0..3).find_map(|_| udp_raw(self.server.addr, &bytes, Duration::from_secs(1)))
        else {
            return Vec::new();
        };
        let mut out: Vec<IpAddr> = Message::from_vec(&reply)
            .expect("a well-formed reply")
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Whether this node answers `name` with `address` (and only it).
    pub fn answers(&self, name: &str, address: &str) -> bool {
        self.addresses(name) == vec![address.parse::<IpAddr>().unwrap()]
    }

    /// The admin socket.
    pub fn socket(&self) -> PathBuf {
        admin_paths(&self.dir).0
    }
}
