//! The secondaries of the transfer tests: Knot DNS and NSD run as child
//! processes with the README's configurations, and a stand-in that only
//! records NOTIFY messages.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RData;

use super::common::eventually;
use super::soa_serial;

/// A port free for both UDP and TCP on 127.0.0.1 right now.
pub(crate) fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Where signpost is in the README's configurations.
pub(crate) const README_PRIMARY: &str = "192.0.2.10@8600";

/// The configuration block of the README's "Secondaries" section marked
/// `name`; without its key (the `key:` section and references to it)
/// unless `signed`.
pub(crate) fn readme_block(name: &str, signed: bool) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let marker = format!("<!-- {name}:");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has {marker}"))..];
    let start = after.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let block = &after[start..];
    let block = &block[..block.find("```").expect("the block ends")];
    if signed {
        return block.to_string();
    }
    let mut out = String::new();
    let mut in_key_section = false;
    for line in block.lines() {
        if line == "key:" {
            in_key_section = true;
            continue;
        }
        if in_key_section && !line.starts_with(' ') && !line.is_empty() {
            in_key_section = false;
        }
        if in_key_section || line.trim() == "key: xfr-key" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A daemon from /usr/sbin, which is not in every user's PATH.
pub(crate) fn sbin(name: &str) -> std::path::PathBuf {
    let path = Path::new("/usr/sbin").join(name);
    if path.exists() { path } else { name.into() }
}

/// A secondary server running in the foreground, killed on drop.
pub(crate) struct Secondary {
    child: Child,
    pub(crate) addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Secondary {
    /// Knot DNS following `svc.example.` from `primary`, on `port`, with
    /// the README's configuration; without the key unless `signed`.
    pub(crate) fn knot(primary: SocketAddr, port: u16, signed: bool) -> Secondary {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let mut conf = readme_block("knot.conf", signed);
        // Loopback addresses, and as root knotd would switch to the knot
        // user and use /var/lib/knot: stay root, in the temporary directory.
        // The tests may transfer the zone from Knot, to compare.
        for (from, to) in [
            (
                "acl:\n",
                "acl:\n  - id: tests\n    address: 127.0.0.1\n    action: transfer\n".into(),
            ),
            (
                "    acl: notify-from-signpost\n",
                "    acl: [notify-from-signpost, tests]\n".into(),
            ),
            ("listen: 0.0.0.0@53", format!("listen: 127.0.0.1@{port}")),
            (README_PRIMARY, primary.to_string().replace(':', "@")),
            (
                "address: 192.0.2.10\n",
                format!("address: {}\n", primary.ip()),
            ),
            (
                "server:\n",
                format!("server:\n    rundir: \"{d}\"\n    user: root:root\n"),
            ),
        ] {
            assert!(conf.contains(from), "the README's knot.conf has `{from}`");
            conf = conf.replacen(from, &to, 1);
        }
        conf.push_str(&format!(
            "database:\n    storage: \"{d}\"\ntemplate:\n  - id: default\n    storage: \"{d}\"\n\
             log:\n  - target: stderr\n    any: info\n"
        ));
        let path = dir.path().join("knot.conf");
        std::fs::write(&path, conf).unwrap();
        let mut command = Command::new(sbin("knotd"));
        command.arg("-c").arg(&path);
        Secondary::spawn(command, dir, port, "knotd (apt-get install knot)")
    }

    /// NSD following `svc.example.` from `primary`, on `port`, with the
    /// README's configuration; without the key unless `signed`.
    pub(crate) fn nsd(primary: SocketAddr, port: u16, signed: bool) -> Secondary {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let mut conf = readme_block("nsd.conf", signed);
        // Loopback addresses; no user to switch to, no chroot, every file
        // in the temporary directory.
        let paths = format!(
            "ip-address: 127.0.0.1@{port}\n    username: \"\"\n    chroot: \"\"\n\
             \x20   zonesdir: \"{d}\"\n    database: \"\"\n    pidfile: \"{d}/nsd.pid\"\n\
             \x20   xfrdfile: \"{d}/xfrd.state\"\n    xfrdir: \"{d}\"\n\
             \x20   zonelistfile: \"{d}/zone.list\"\n    verbosity: 2\n"
        );
        for (from, to) in [
            ("ip-address: 0.0.0.0@53\n", paths),
            (README_PRIMARY, primary.to_string().replace(':', "@")),
            (
                "allow-notify: 192.0.2.10",
                format!("allow-notify: {}", primary.ip()),
            ),
        ] {
            assert!(conf.contains(from), "the README's nsd.conf has `{from}`");
            conf = conf.replacen(from, &to, 1);
        }
        if !signed {
            conf = conf.replace(" xfr-key", " NOKEY");
        }
        let path = dir.path().join("nsd.conf");
        std::fs::write(&path, conf).unwrap();
        let mut command = Command::new(sbin("nsd"));
        command.arg("-d").arg("-c").arg(&path);
        Secondary::spawn(command, dir, port, "nsd (apt-get install nsd)")
    }

    fn spawn(mut command: Command, dir: tempfile::TempDir, port: u16, what: &str) -> Secondary {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Secondary {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        }
    }

    pub(crate) fn dig(&self, args: &[&str]) -> String {
        let output = Command::new("dig")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string()])
            .args(["+time=1", "+tries=1"])
            .args(args)
            .output()
            .expect("dig is installed (apt-get install dnsutils)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The zone's serial as the secondary serves it.
    pub(crate) fn serial(&self) -> Option<u32> {
        soa_serial(&self.dig(&["+short", "svc.example", "SOA"]))
    }

    pub(crate) fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The log from line `from` on.
    pub(crate) fn log_since(&self, from: usize) -> String {
        self.log.lock().unwrap()[from..].join("\n")
    }

    /// Waits until the secondary serves `serial`, failing with its log.
    pub(crate) fn wait_for_serial(&self, serial: u32, timeout: Duration) {
        assert!(
            eventually(timeout, || self.serial() == Some(serial)),
            "the secondary never served serial {serial}; it serves {:?}; its log:\n{}",
            self.serial(),
            self.log_since(0)
        );
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in secondary: records each NOTIFY (arrival time, serial) and
/// acknowledges it unless told to stay silent for the first few.
pub(crate) struct NotifyListener {
    socket: UdpSocket,
}

impl NotifyListener {
    pub(crate) fn bind() -> NotifyListener {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        NotifyListener { socket }
    }

    pub(crate) fn addr(&self) -> String {
        self.socket.local_addr().unwrap().to_string()
    }

    /// Listens for `duration`, answering all but the first `ignore` NOTIFYs.
    pub(crate) fn listen(&self, duration: Duration, mut ignore: usize) -> Vec<(Instant, u32)> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + duration;
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            let Ok((len, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let message = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(message.metadata.op_code, hickory_proto::op::OpCode::Notify);
            let serial = match message.answers.first().map(|r| &r.data) {
                Some(RData::SOA(soa)) => soa.serial,
                other => panic!("a NOTIFY carries the SOA: {other:?}"),
            };
            seen.push((Instant::now(), serial));
            if ignore > 0 {
                ignore -= 1;
                continue;
            }
            let mut reply = Message::response(message.metadata.id, message.metadata.op_code);
            reply.metadata.authoritative = true;
            reply.queries = message.queries.clone();
            self.socket.send_to(&reply.to_vec().unwrap(), from).unwrap();
        }
        seen
    }
}
