//! The state file against the real server: one server per state file, and
//! a refused start that changes nothing.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn register(instance: &str, address: &str) -> Value {
    json!({"op":"register","zone":"svc.example","service":"web","instance":instance,
           "address":[address],"port":8080})
}

fn listed(server: &Server) -> Vec<String> {
    let list = server.admin().ok(json!({"op":"list"}));
    list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["source"] == "runtime")
        .map(|i| i["instance"].as_str().unwrap().to_string())
        .collect()
}

/// `signpost serve` with its own socket and state file.
fn serve(zones: &Path, socket: &Path, state: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_signpost"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--threads", "2"])
        .arg("--zones")
        .arg(zones)
        .arg("--socket")
        .arg(socket)
        .arg("--state")
        .arg(state)
        .args(extra)
        .env_remove("SIGNPOST_SOCKET")
        .env("RUST_LOG", "info");
    command
}

/// Runs a server that must not start; its exit status and stderr.
fn refused(mut command: Command) -> (ExitStatus, String) {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start signpost");
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the server was expected to refuse to start, and is running");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = waiter.join().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
}

#[test]
fn a_second_server_on_the_same_state_file_is_refused_and_changes_nothing() {
    let zones = zones_copy();
    let admin_dir = tempfile::tempdir().unwrap();
    let mut first = Server::start_admin(zones.path(), admin_dir.path(), &[]);
    first.admin().ok(register("web-9", "10.0.0.19"));
    let state = first.state.clone();
    let before = std::fs::read(&state).unwrap();
    let inode = std::fs::metadata(&state).unwrap().ino();

    // Its own socket and port, the first one's state file.
    let other = tempfile::tempdir().unwrap();
    let (status, stderr) = refused(serve(
        zones.path(),
        &other.path().join("admin.sock"),
        &state,
        &[],
    ));
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "state file {} is in use by another signpost server",
            state.display()
        )),
        "{stderr}"
    );
    // The same socket too: the state file is still what stops it.
    let (status, stderr) = refused(serve(zones.path(), &first.socket, &state, &[]));
    assert!(!status.success());
    assert!(
        stderr.contains("in use by another signpost server"),
        "{stderr}"
    );

    assert_eq!(std::fs::metadata(&state).unwrap().ino(), inode);
    assert_eq!(std::fs::read(&state).unwrap(), before);
    assert!(
        entries(other.path()).is_empty(),
        "{:?}",
        entries(other.path())
    );

    // The first server still saves to the file the path names.
    first.admin().ok(register("web-10", "10.0.0.20"));
    assert!(first.stop().success());
    let again = Server::start_admin(zones.path(), admin_dir.path(), &[]);
    let mut names = listed(&again);
    names.sort();
    assert_eq!(names, ["web-10", "web-9"]);
}

#[test]
fn a_start_refused_for_a_taken_port_leaves_no_file_behind() {
    let zones = zones_copy();
    let dir = tempfile::tempdir().unwrap();
    // Refused on `port`, naming it and `transport`, and leaving no admin
    // socket, state file or lock file behind.
    let refused_on = |port: String, transport: &str| {
        let (status, stderr) = refused(serve(
            zones.path(),
            &dir.path().join("admin.sock"),
            &dir.path().join("state.json"),
            &["--listen", &port],
        ));
        assert!(!status.success());
        let message = format!("cannot listen on {port} over {transport}");
        assert!(stderr.contains(&message), "{stderr}");
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    };
    // A server holds the port for both: TCP, bound first, is refused.
    let first = Server::start(zones.path());
    refused_on(format!("127.0.0.1:{}", first.addr.port()), "TCP");
    // A port taken for UDP only: one whose TCP side is free as well, or
    // the server would be refused on TCP, by whoever holds that.
    let udp = (0..50)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .find(|u| std::net::TcpListener::bind(u.local_addr().unwrap()).is_ok())
        .expect("a UDP port whose TCP side is free");
    refused_on(udp.local_addr().unwrap().to_string(), "UDP");
}

#[test]
fn a_start_refused_for_a_missing_zones_directory_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = refused(serve(
        &dir.path().join("no-zones"),
        &dir.path().join("admin.sock"),
        &dir.path().join("state.json"),
        &[],
    ));
    assert!(!status.success());
    assert!(stderr.contains("cannot read zones directory"), "{stderr}");
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

/// A small tmpfs, unmounted when dropped (after the servers using it, if
/// declared before them).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (as in CI): {status}"
        );
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.0.path()).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }
}

/// Fills the filesystem holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    path
}

#[test]
fn a_full_disk_refuses_registrations_and_the_server_restarts_without_them() {
    let zones = zones_copy();
    let disk = Tmpfs::mount("64k");
    let mut server = Server::start_admin(zones.path(), disk.path(), &[]);
    server.admin().ok(register("web-9", "10.0.0.19"));
    let filler = fill(disk.path());

    // What fits in the state file's last page is saved; then one is refused.
    let mut admin = server.admin();
    let mut saved = vec!["web-9".to_string()];
    let refused = (100..200)
        .map(|i| format!("web-{i}"))
        .find(|name| {
            let reply = admin.request(register(name, "10.0.0.30"));
            if reply["ok"] == true {
                saved.push(name.clone());
                return false;
            }
            let error = reply["error"].as_str().unwrap();
            assert!(error.contains("not saved"), "{error}");
            assert!(error.contains("No space left on device"), "{error}");
            true
        })
        .expect("a registration is refused on a full disk");
    // Refused means nothing changed: not listed, not answered.
    assert!(
        !listed(&server).contains(&refused),
        "{refused} is not served"
    );

    // Room again: a new registration is saved, and the refused one is not
    // saved along with it.
    std::fs::remove_file(filler).unwrap();
    admin.ok(register("web-300", "10.0.0.31"));
    saved.push("web-300".into());
    saved.sort();
    drop(admin);
    assert!(server.stop().success());

    // The disk is full again: reading the state needs no free space.
    fill(disk.path());
    let server = Server::start_admin(zones.path(), disk.path(), &[]);
    let mut names = listed(&server);
    names.sort();
    assert_eq!(names, saved, "{refused} was refused");
}

#[test]
fn a_changed_character_in_a_line_is_refused_naming_the_line() {
    let zones = zones_copy();
    let admin_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_admin(zones.path(), admin_dir.path(), &[]);
    server.admin().ok(register("web-9", "10.0.0.19"));
    server.admin().ok(register("web-10", "10.0.0.20"));
    assert!(server.stop().success());
    let state = server.state.clone();
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.starts_with("{\"signpost-state\":2}\n"), "{text}");
    let damaged = text.replacen("\"web-9\"", "\"web-8\"", 1);
    assert_ne!(damaged, text);
    std::fs::write(&state, &damaged).unwrap();

    let (status, stderr) = serve_failure(zones.path(), admin_dir.path(), &[]);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "state file {} is corrupt: line 2 fails its checksum",
            state.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), damaged);
}

#[test]
fn a_state_file_of_the_first_format_is_read_and_upgraded() {
    let zones = zones_copy();
    let admin_dir = tempfile::tempdir().unwrap();
    let (_, state) = admin_paths(admin_dir.path());
    std::fs::write(
        &state,
        concat!(
            "{\"signpost-state\":1}\n",
            "{\"set\":{\"registration\":{\"zone\":\"svc.example\",\"service\":\"web\",",
            "\"instance\":\"web-9\",\"address\":[\"10.0.0.19\"],\"port\":8080}}}\n",
        ),
    )
    .unwrap();
    let server = Server::start_admin(zones.path(), admin_dir.path(), &[]);
    assert_eq!(listed(&server), ["web-9"]);
    server.admin().ok(register("web-10", "10.0.0.20"));
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.starts_with("{\"signpost-state\":2}\n"), "{text}");
    assert!(
        text.lines().skip(1).all(|l| l.contains("\"crc\":")),
        "{text}"
    );
}
