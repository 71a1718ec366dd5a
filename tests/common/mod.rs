//! Test harness: starts the real `signpost` binary on 127.0.0.1 port 0, reads
//! the bound port from its log, and talks DNS to it over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};

/// The example zones shipped in the repository.
pub fn example_zones() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("zones")
}

/// A running server, killed on drop.
pub struct Server {
    child: Child,
    /// Where it answers UDP and TCP.
    pub addr: SocketAddr,
    /// Everything it has logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Its admin socket.
    pub socket: PathBuf,
    /// Its state file.
    pub state: PathBuf,
    /// Holds the admin socket and state file of a server started without
    /// an admin directory of its own.
    _scratch: Option<tempfile::TempDir>,
}

/// The admin socket and state file of a server using `admin_dir`.
pub fn admin_paths(admin_dir: &Path) -> (PathBuf, PathBuf) {
    (admin_dir.join("admin.sock"), admin_dir.join("state.json"))
}

/// `signpost serve` on the zones in `dir` with its admin socket and state
/// file in `admin_dir`, not yet started.
pub fn serve_command(dir: &Path, admin_dir: &Path, extra: &[&str]) -> Command {
    let (socket, state) = admin_paths(admin_dir);
    let mut command = Command::new(env!("CARGO_BIN_EXE_signpost"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--zones",
        ])
        .arg(dir)
        .arg("--socket")
        .arg(socket)
        .arg("--state")
        .arg(state)
        .args(extra)
        .env_remove("SIGNPOST_SOCKET")
        .env("RUST_LOG", "info");
    command
}

/// Runs a server that is expected not to start; returns its exit status and stderr.
pub fn serve_failure(
    dir: &Path,
    admin_dir: &Path,
    extra: &[&str],
) -> (std::process::ExitStatus, String) {
    let mut child = serve_command(dir, admin_dir, extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start signpost");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status, stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server was expected to exit, and did not");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Server {
    /// Starts `signpost serve` on the zones in `dir`, with extra arguments,
    /// and its admin socket and state file in a fresh temporary directory.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Server {
        let scratch = tempfile::tempdir().expect("a temporary directory");
        let mut server = Server::start_admin(dir, scratch.path(), extra);
        server._scratch = Some(scratch);
        server
    }

    /// Starts `signpost serve` on the zones in `dir` with its admin socket
    /// and state file in `admin_dir`, so a restart finds the same state.
    pub fn start_admin(dir: &Path, admin_dir: &Path, extra: &[&str]) -> Server {
        let mut command = serve_command(dir, admin_dir, extra);
        command.stdout(Stdio::null());
        Server::start_command(command, admin_dir)
    }

    /// Starts a [`serve_command`] made with `admin_dir`, set up further by
    /// the caller (environment, standard output), and waits until it listens.
    pub fn start_command(mut command: Command, admin_dir: &Path) -> Server {
        let (socket, state) = admin_paths(admin_dir);
        let mut child = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start signpost");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("listening on")
                        && let Some(addr) = line.split("addr=").nth(1)
                    {
                        let _ = tx.send(addr.trim().to_string());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("a socket address in the log"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        // The admin socket is bound before the DNS sockets, so it is ready.
        Server {
            child,
            addr,
            log,
            socket,
            state,
            _scratch: None,
        }
    }

    /// A client connection to the admin socket.
    pub fn admin(&self) -> AdminClient {
        AdminClient::connect(&self.socket)
    }

    /// Sends SIGKILL: no chance to clean up, as in a crash.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.wait(Duration::from_secs(10))
            .expect("the server stops on SIGTERM")
    }

    /// Runs a client command (`register`, `list`, ...) against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(&self.socket, args)
    }

    /// Starts `signpost serve` on the zones in `dir`.
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[])
    }

    /// The log so far, one string.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until the log has a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Sends raw bytes over UDP and returns the raw reply, or None on timeout.
    pub fn udp_raw(&self, query: &[u8]) -> Option<Vec<u8>> {
        udp_raw(self.addr, query, Duration::from_secs(2))
    }

    /// Sends a message over UDP and decodes the reply.
    pub fn udp(&self, query: &Message) -> Message {
        let bytes = self.udp_raw(&query.to_vec().unwrap()).expect("a UDP reply");
        Message::from_vec(&bytes).expect("a well-formed reply")
    }

    /// Sends a message over TCP and decodes the reply.
    pub fn tcp(&self, query: &Message) -> Message {
        let bytes = tcp_raw(self.addr, &query.to_vec().unwrap()).expect("a TCP reply");
        Message::from_vec(&bytes).expect("a well-formed reply")
    }

    /// The child's standard output, when the command piped it.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Process ID, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, returning its status.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One UDP exchange.
pub fn udp_raw(addr: SocketAddr, query: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(timeout)).unwrap();
    socket.send_to(query, addr).unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    buf.truncate(len);
    Some(buf)
}

/// One TCP exchange (length-prefixed).
pub fn tcp_raw(addr: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply)?;
    Ok(reply)
}

/// A query message for `name` and `rtype`, with RD set as stub resolvers do.
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.id = rand_id();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    message
}

/// The same query with an EDNS(0) OPT record advertising `payload` bytes.
pub fn query_edns(name: &str, rtype: RecordType, payload: u16) -> Message {
    let mut message = query(name, rtype);
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    message.set_edns(edns);
    message
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xFFFF) as u16
}

/// A hickory UDP client connected to the server.
pub async fn udp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
    let stream = UdpClientStream::builder(addr, TokioRuntimeProvider::default()).build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    client
}

/// A hickory TCP client connected to the server.
pub async fn tcp_client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
    let (future, handle) = TcpClientStream::new(addr, None, None, TokioRuntimeProvider::default());
    let stream = future.await.expect("TCP connect");
    let (client, bg) = Client::<TokioRuntimeProvider>::new(stream, handle);
    tokio::spawn(bg);
    client
}

/// Asks with a hickory client and returns the response message.
pub async fn ask(
    client: &mut Client<TokioRuntimeProvider>,
    name: &str,
    rtype: RecordType,
) -> Message {
    let response = client
        .query(Name::from_ascii(name).unwrap(), DNSClass::IN, rtype)
        .await
        .expect("a response");
    response.into_message()
}

/// Runs `dig` with these arguments against the server and returns its stdout.
pub fn dig(server: &Server, args: &[&str]) -> String {
    let output = Command::new("dig")
        .arg(format!("@{}", server.addr.ip()))
        .args(["-p", &server.addr.port().to_string()])
        .args(args)
        .output()
        .expect("dig is installed (apt-get install dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `signpost` with these arguments and `--socket`.
pub fn cli(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .env_remove("SIGNPOST_SOCKET")
        .output()
        .expect("run signpost")
}

/// A connection to an admin socket speaking newline-delimited JSON.
pub struct AdminClient {
    reader: BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl AdminClient {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> AdminClient {
        let writer =
            std::os::unix::net::UnixStream::connect(path).expect("connect to the admin socket");
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        AdminClient {
            reader: BufReader::new(writer.try_clone().unwrap()),
            writer,
        }
    }

    /// How long a reply may take (10 s unless set).
    pub fn set_timeout(&self, timeout: Duration) {
        self.writer.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Sends one raw line (a newline is added) and reads one reply line.
    pub fn raw(&mut self, line: &str) -> serde_json::Value {
        self.send_raw(line).expect("a reply line")
    }

    /// Sends one raw line and reads one reply line; None when the server
    /// closed the connection.
    pub fn send_raw(&mut self, line: &str) -> Option<serde_json::Value> {
        use std::io::Write;
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.writer.write_all(&bytes).ok()?;
        self.read_reply()
    }

    /// Reads one reply line; None at the end of the connection.
    pub fn read_reply(&mut self) -> Option<serde_json::Value> {
        let mut reply = String::new();
        match self.reader.read_line(&mut reply) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&reply).expect("a JSON reply")),
        }
    }

    /// Writes request lines in one write, without reading any reply
    /// (pipelining); a newline is added to each.
    pub fn write_lines(&mut self, lines: &[String]) -> std::io::Result<()> {
        use std::io::Write;
        let mut bytes = Vec::new();
        for line in lines {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        self.writer.write_all(&bytes)
    }

    /// Sends a request and returns the reply.
    pub fn request(&mut self, request: serde_json::Value) -> serde_json::Value {
        self.raw(&request.to_string())
    }

    /// Sends a request that must succeed.
    pub fn ok(&mut self, request: serde_json::Value) -> serde_json::Value {
        let reply = self.request(request.clone());
        assert_eq!(reply["ok"], true, "{request} -> {reply}");
        reply
    }

    /// Sends a request that must fail, returning its error message.
    pub fn error(&mut self, request: serde_json::Value) -> String {
        let reply = self.request(request.clone());
        assert_eq!(reply["ok"], false, "{request} -> {reply}");
        reply["error"]
            .as_str()
            .expect("an error message")
            .to_string()
    }
}

/// A copy of the example zones in a temporary directory, for tests that change them.
pub fn zones_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(example_zones()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `p` quantile (0 to 1) of sorted samples, by nearest rank: the
/// benchmarks report their latencies with it.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
