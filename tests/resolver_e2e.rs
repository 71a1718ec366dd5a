//! signpost as the machine's resolver, end to end, with real and unmodified
//! clients: getent (glibc's getaddrinfo), curl, Python's socket module and dig
//! find services through /etc/resolv.conf alone, and other names resolve
//! through forwarding.
//!
//! It runs in a network namespace of its own, where signpost can listen on
//! port 53 and where `ip netns exec` binds /etc/netns/NAME/resolv.conf (and
//! nsswitch.conf and hosts, so the host's own settings cannot interfere) over
//! the files in /etc. That needs root: as another user the test says it is
//! skipped and passes. `scripts/test` runs as root and installs the tools.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The instance's addresses, on a veth interface inside the namespace.
const INSTANCE_V4: &str = "10.77.0.1";
const INSTANCE_V6: &str = "fd77::1";
/// A local address of the namespace that is not in the default allow list.
const OUTSIDER: &str = "10.77.0.2";
/// The upstream resolver, another signpost serving `upstream.test`.
const UPSTREAM: &str = "127.0.0.53";
const HTTP_PORT: u16 = 8080;
/// Answered by the HTTP server, to tell it from anything else.
const PAGE: &str = "hello from web-1";

/// The namespace and everything started in it, torn down on drop, also when
/// an assertion fails.
struct Netns {
    name: String,
    etc: PathBuf,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Netns {
    fn create() -> Netns {
        let name = format!("signpost-e2e-{}", std::process::id());
        let ns = Netns {
            etc: Path::new("/etc/netns").join(&name),
            name,
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        ip(&["netns", "add", &ns.name]);
        // From here on, Drop removes the namespace whatever happens.
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        // A veth pair (dummy needs a kernel module that containers may lack):
        // the instance on one end, an "outside" client address on the other.
        ip(&[
            "-n", n, "link", "add", "sp0", "type", "veth", "peer", "name", "sp1",
        ]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{INSTANCE_V4}/24"),
            "dev",
            "sp0",
        ]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{INSTANCE_V6}/64"),
            "dev",
            "sp0",
            "nodad",
        ]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{OUTSIDER}/24"),
            "dev",
            "sp1",
        ]);
        ip(&["-n", n, "link", "set", "sp0", "up"]);
        ip(&["-n", n, "link", "set", "sp1", "up"]);

        fs::create_dir_all(&ns.etc).unwrap();
        // What a user writes to make signpost the machine's resolver.
        fs::write(
            ns.etc.join("resolv.conf"),
            "nameserver 127.0.0.1\nsearch svc.example\noptions timeout:2 attempts:2\n",
        )
        .unwrap();
        fs::write(ns.etc.join("nsswitch.conf"), "hosts: files dns\n").unwrap();
        fs::write(ns.etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n").unwrap();
        ns
    }

    /// Starts a long-running program in the namespace, output to `log`.
    fn spawn(&mut self, log: &str, program: &str, args: &[&str]) -> PathBuf {
        let path = self.dir.path().join(log);
        let file = fs::File::create(&path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        self.children.push(child);
        path
    }

    /// Runs a client in the namespace, bounded in time.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "timeout", "20"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a client that must succeed, returning its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "`{}` failed ({}):\n{stdout}{}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        stdout
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for entry in fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                all += &format!("--- {}\n", path.display());
                all += &fs::read_to_string(&path).unwrap_or_default();
            }
        }
        all
    }

    /// Waits until `log` has `count` lines containing `needle`.
    fn wait_for(&self, log: &Path, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let text = fs::read_to_string(log).unwrap_or_default();
            if text.lines().filter(|l| l.contains(needle)).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("`{needle}` not seen in time\n{}", self.logs());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = fs::remove_dir_all(&self.etc);
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn write_zones(dir: &Path) -> (PathBuf, PathBuf) {
    let zones = dir.join("zones");
    fs::create_dir_all(&zones).unwrap();
    fs::write(
        zones.join("svc.example.toml"),
        format!(
            r#"zone = "svc.example"
ttl = 5
nameservers = ["ns1"]

[hosts]
ns1 = "127.0.0.1"
legacy = "{INSTANCE_V4}"   # IPv4 only: the AAAA half of getaddrinfo gets NODATA

[[services]]
name = "web"
port = {HTTP_PORT}

[[services.instances]]
name = "web-1"
address = ["{INSTANCE_V4}", "{INSTANCE_V6}"]
"#
        ),
    )
    .unwrap();
    let upstream = dir.join("upstream-zones");
    fs::create_dir_all(&upstream).unwrap();
    fs::write(
        upstream.join("upstream.test.toml"),
        "zone = \"upstream.test\"\n[hosts]\nwww = \"192.0.2.80\"\n",
    )
    .unwrap();
    (zones, upstream)
}

#[test]
fn unmodified_programs_resolve_through_resolv_conf() {
    if !is_root() {
        eprintln!(
            "skipped: needs root (network namespaces and port 53); scripts/test runs it as root"
        );
        return;
    }
    for tool in ["ip", "getent", "curl", "python3", "dig", "timeout"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{tool} is missing: run scripts/test, which installs iproute2, curl, python3 and dnsutils"
        );
    }

    let mut ns = Netns::create();
    let (zones, upstream_zones) = write_zones(ns.dir.path());
    let signpost = env!("CARGO_BIN_EXE_signpost");
    // Each server gets its own admin socket and state file in the test's
    // directory, away from the defaults a developer's own server may use.
    let private = |name: &str| ns.dir.path().join(name).to_str().unwrap().to_string();
    let (upstream_socket, upstream_state) =
        (private("upstream.sock"), private("upstream-state.json"));
    let (server_socket, server_state) = (private("signpost.sock"), private("signpost-state.json"));

    let upstream_log = ns.spawn(
        "upstream.log",
        signpost,
        &[
            "serve",
            "--listen",
            &format!("{UPSTREAM}:53"),
            "--threads",
            "1",
            "--zones",
            zones_str(&upstream_zones),
            "--socket",
            &upstream_socket,
            "--state",
            &upstream_state,
        ],
    );
    let server_log = ns.spawn(
        "signpost.log",
        signpost,
        &[
            "serve",
            "--listen",
            "127.0.0.1:53",
            "--listen",
            "[::1]:53",
            "--threads",
            "2",
            "--zones",
            zones_str(&zones),
            "--forward",
            UPSTREAM,
            "--socket",
            &server_socket,
            "--state",
            &server_state,
        ],
    );
    let site = ns.dir.path().join("site");
    fs::create_dir_all(&site).unwrap();
    fs::write(site.join("index.html"), PAGE).unwrap();
    // `--bind ::` is dual-stack in http.server: both instance addresses answer.
    let http_log = ns.spawn(
        "http.log",
        "python3",
        &[
            "-u",
            "-m",
            "http.server",
            "--bind",
            "::",
            "--directory",
            zones_str(&site),
            &HTTP_PORT.to_string(),
        ],
    );
    ns.wait_for(&upstream_log, "listening on", 1);
    ns.wait_for(&server_log, "listening on", 2);
    ns.wait_for(&http_log, "Serving HTTP", 1);

    // The full name, through glibc (gethostbyname2 and getaddrinfo).
    let out = ns.ok(&["getent", "hosts", "web.svc.example"]);
    assert!(
        out.contains(INSTANCE_V4) || out.contains(INSTANCE_V6),
        "{out}"
    );
    let out = ns.ok(&["getent", "ahosts", "web.svc.example"]);
    assert!(
        out.contains(INSTANCE_V4) && out.contains(INSTANCE_V6),
        "{out}"
    );
    // An IPv4-only name: the parallel AAAA query gets NODATA, not an error.
    let out = ns.ok(&["getent", "ahosts", "legacy.svc.example"]);
    assert!(out.contains(INSTANCE_V4) && !out.contains(':'), "{out}");

    // A short name, through resolv.conf's `search svc.example`.
    let out = ns.ok(&["getent", "hosts", "web"]);
    assert!(out.contains("web.svc.example"), "{out}");

    // A program that knows nothing of DNS reaches the service by name.
    let out = ns.ok(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        &format!("http://web.svc.example:{HTTP_PORT}/"),
    ]);
    assert_eq!(out, PAGE);
    let out = ns.ok(&[
        "curl",
        "-sS",
        "-4",
        "--max-time",
        "10",
        &format!("http://web:{HTTP_PORT}/"),
    ]);
    assert_eq!(out, PAGE);

    let out = ns.ok(&[
        "python3",
        "-c",
        "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('web.svc.example', 80, proto=socket.IPPROTO_TCP)}))",
    ]);
    assert!(
        out.contains(INSTANCE_V4) && out.contains(INSTANCE_V6),
        "{out}"
    );

    // dig with no @server uses resolv.conf's nameserver.
    let out = ns.ok(&["dig", "+time=2", "+tries=1", "SRV", "_web._tcp.svc.example"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(
        out.contains(&format!("0 1 {HTTP_PORT} web-1.svc.example.")),
        "{out}"
    );
    assert!(
        out.contains(" aa ") && out.contains(" ra"),
        "AA and RA: {out}"
    );
    assert!(
        !out.contains("recursion requested but not available"),
        "{out}"
    );

    // Every other name resolves through forwarding, for the same clients.
    let out = ns.ok(&["getent", "hosts", "www.upstream.test"]);
    assert!(out.contains("192.0.2.80"), "{out}");
    let out = ns.ok(&["dig", "+time=2", "+tries=1", "www.upstream.test", "A"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("192.0.2.80"),
        "{out}"
    );
    assert!(
        !out.contains(" aa "),
        "a forwarded answer is not authoritative: {out}"
    );

    // A client outside the allow list is refused forwarding but still gets
    // authoritative answers.
    let out = ns.ok(&[
        "dig",
        "+time=2",
        "+tries=1",
        "-b",
        OUTSIDER,
        "@127.0.0.1",
        "www.upstream.test",
        "A",
    ]);
    assert!(out.contains("status: REFUSED"), "{out}");
    let out = ns.ok(&[
        "dig",
        "+time=2",
        "+tries=1",
        "-b",
        OUTSIDER,
        "@127.0.0.1",
        "web.svc.example",
        "A",
    ]);
    assert!(
        out.contains("status: NOERROR") && out.contains(INSTANCE_V4),
        "{out}"
    );
}

fn zones_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}
