//! `signpost check`: validates zone files and reports every problem as
//! `file:line:column: message`, one per line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

fn signpost(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signpost"));
    cmd.args(args).env_remove("RUST_LOG");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output().expect("run signpost")
}

fn check(dir: &Path) -> Output {
    signpost(&["check", "--zones", dir.to_str().unwrap()], None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn zone_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).expect("write");
    }
    dir
}

fn example_zones() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("zones")
}

/// Splits `path:line:column: message` (the path may itself contain ':').
fn parse_problem(line: &str) -> Option<(String, usize, usize, String)> {
    let (location, message) = line.split_once(": ")?;
    let mut parts = location.rsplitn(3, ':');
    let column = parts.next()?.parse().ok()?;
    let row = parts.next()?.parse().ok()?;
    let path = parts.next()?.to_string();
    Some((path, row, column, message.to_string()))
}

#[test]
fn shipped_zones_check_ok() {
    let out = check(&example_zones());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.contains("svc.example.toml"))
        .unwrap_or_else(|| panic!("no line for the example zone: {stdout}"));
    assert!(line.contains("svc.example"), "{line}");
    assert!(line.ends_with("OK"), "{line}");
}

/// One bad file per kind of problem, each with exactly one problem: the
/// expected line, column and a piece of the message.
const BAD_FILES: &[(&str, &str, usize, usize, &str)] = &[
    (
        "bad-address.toml",
        "zone = \"addr.test\"\n[hosts]\nx = \"10.0.0.300\"\n",
        3,
        5,
        "invalid IP address \"10.0.0.300\"",
    ),
    (
        "bad-port.toml",
        "zone = \"port.test\"\n[[services]]\nname = \"w\"\nport = 1\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\nport = 65536\n",
        8,
        8,
        "port 65536 is out of range",
    ),
    (
        "bad-key.toml",
        "zone = \"key.test\"\n[[services]]\nname = \"w\"\nport = 1\n[[services.instances]]\nname = \"w-1\"\nadress = \"10.0.0.1\"\n",
        7,
        1,
        "unknown field `adress`",
    ),
    (
        "bad-dup.toml",
        "zone = \"dup.test\"\n[[services]]\nname = \"w\"\nport = 1\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.2\"\n",
        9,
        8,
        "instance name \"w-1\" is used twice",
    ),
    (
        "bad-host-service.toml",
        "zone = \"hs.test\"\n[hosts]\nweb = \"10.0.0.1\"\n[[services]]\nname = \"web\"\nport = 80\n",
        3,
        1,
        "is at or under the name of service \"web\"",
    ),
    (
        "bad-syntax.toml",
        "zone = \"syn.test\"\nttl = = 3\n",
        2,
        7,
        "",
    ),
    // The same zone as `a-first.toml` below (case differs): reported on the
    // second file, at its `zone` value.
    (
        "same-zone.toml",
        "# a comment\nzone = \"SAME.test\"\n",
        2,
        8,
        "already defined by",
    ),
];

#[test]
fn bad_zone_files_fail_with_one_located_line_per_problem() {
    let mut files: Vec<(&str, &str)> = BAD_FILES.iter().map(|(n, t, ..)| (*n, *t)).collect();
    files.push(("a-first.toml", "zone = \"same.test\"\n"));
    files.push((
        "good.toml",
        "zone = \"good.test\"\n[hosts]\nx = \"192.0.2.1\"\n",
    ));
    let dir = zone_dir(&files);
    let out = check(dir.path());
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");

    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        BAD_FILES.len(),
        "one line per problem:\n{stderr}"
    );
    for (file, _, row, column, message) in BAD_FILES {
        let path = dir.path().join(file);
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{}:", path.display())))
            .unwrap_or_else(|| panic!("no line for {file}:\n{stderr}"));
        let (p, r, c, m) =
            parse_problem(line).unwrap_or_else(|| panic!("not file:line:column: {line}"));
        assert_eq!(Path::new(&p), path);
        assert_eq!((r, c), (*row, *column), "{line}");
        assert!(m.contains(message), "{line}");
        assert!(!m.trim().is_empty(), "{line}");
    }
    // The duplicate names the file that has the zone.
    let dup = lines.iter().find(|l| l.contains("same-zone.toml")).unwrap();
    assert!(dup.contains("a-first.toml"), "{dup}");

    // The valid files are still reported OK.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("good.toml") && l.ends_with("OK")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("a-first.toml") && l.ends_with("OK")),
        "{stdout}"
    );
    assert!(!stdout.contains("bad-"), "{stdout}");
}

#[test]
fn every_problem_in_one_file_gets_its_own_line() {
    let dir = zone_dir(&[(
        "z.toml",
        "zone = \"z.test\"\nttl = -5\n[hosts]\nbad = \"1.2.3\"\n[[services]]\nname = \"w\"\nport = 99999\n",
    )]);
    let out = check(dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    let located: Vec<(usize, usize)> = stderr
        .lines()
        .map(|l| {
            let (p, r, c, _) = parse_problem(l).unwrap_or_else(|| panic!("{l}"));
            assert_eq!(Path::new(&p), dir.path().join("z.toml"));
            (r, c)
        })
        .collect();
    assert_eq!(located, [(2, 7), (4, 7), (7, 8)], "{stderr}");
}

#[test]
fn config_file_zones_path_is_relative_to_the_config_files_directory() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(etc.join("zones.d")).unwrap();
    std::fs::write(
        etc.join("zones.d/c.toml"),
        "zone = \"conf.test\"\n[hosts]\nx = \"192.0.2.1\"\n",
    )
    .unwrap();
    std::fs::write(etc.join("signpost.toml"), "zones = \"zones.d\"\n").unwrap();
    // Run from elsewhere, so a path relative to the working directory would miss.
    let elsewhere = tempfile::tempdir().unwrap();
    let config = etc.join("signpost.toml");
    let out = signpost(
        &["check", "--config", config.to_str().unwrap()],
        Some(elsewhere.path()),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("c.toml") && stdout.contains("conf.test"),
        "{stdout}"
    );

    // It really reads that directory: a broken file there fails the check.
    std::fs::write(etc.join("zones.d/d.toml"), "zone = \"d.test\"\nttl = -1\n").unwrap();
    let out = signpost(
        &["check", "--config", config.to_str().unwrap()],
        Some(elsewhere.path()),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("d.toml:2:7:"),
        "{}",
        text(&out.stderr)
    );

    // --zones on the command line wins over the file.
    let other = zone_dir(&[("o.toml", "zone = \"other.test\"\n")]);
    let out = signpost(
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--zones",
            other.path().to_str().unwrap(),
        ],
        Some(elsewhere.path()),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("other.test"));
}

#[test]
fn missing_zones_directory_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let out = check(&root.path().join("nope"));
    assert!(!out.status.success());
    assert_ne!(
        out.status.code(),
        Some(1),
        "not the same as a bad zone file"
    );
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
}

#[test]
fn short_and_long_help_describe_the_tool_alike() {
    let short = text(&signpost(&["-h"], None).stdout);
    let long = text(&signpost(&["--help"], None).stdout);
    // clap drops the final period of the short form.
    let first = |t: &str| {
        t.lines()
            .next()
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_string()
    };
    assert_eq!(first(&short), first(&long));
    assert!(first(&short).contains("service discovery"), "{short}");
}

/// Runs `signpost check` on `dir`, failing the test if it has not finished
/// within ten seconds.
fn check_bounded(dir: &Path) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(["check", "--zones", dir.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run signpost");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(out) => out.expect("signpost ran"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("signpost check did not finish");
        }
    }
}

#[test]
fn a_fifo_is_reported_and_the_other_files_checked() {
    let dir = zone_dir(&[("a.toml", "zone = \"a.test\"\n[hosts]\ndb = \"10.0.0.1\"\n")]);
    let fifo = dir.path().join("x.toml");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());

    let out = check_bounded(dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("x.toml"))
        .unwrap_or_else(|| panic!("the FIFO is named: {stderr}"));
    assert!(line.contains("not a regular file"), "{line}");
    assert!(text(&out.stdout).contains("a.test"), "{out:?}");
}

#[test]
fn a_directory_without_zone_files_is_an_error() {
    let empty = zone_dir(&[]);
    let misnamed = zone_dir(&[(
        "svc.example.tml",
        "zone = \"a.test\"\n[hosts]\ndb = \"10.0.0.1\"\n",
    )]);
    for dir in [&empty, &misnamed] {
        let out = check_bounded(dir.path());
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("no zone file"), "{stderr}");
        assert!(
            stderr.contains(&dir.path().display().to_string()),
            "{stderr}"
        );
        assert!(stderr.contains(".toml"), "{stderr}");
    }
}

/// A zone file of `services` services, two instances each; `extra` adds a
/// line to the service of that number. Returns the text and, for each
/// extra line, the line number it landed on.
fn large_zone(services: usize, extra: &[(usize, &str)]) -> (String, Vec<usize>) {
    let mut text = String::from("zone = \"big.test\"\n[hosts]\nns1 = \"10.9.0.1\"\n");
    let mut lines = Vec::new();
    for i in 0..services {
        text += &format!("\n[[services]]\nname = \"s{i}\"\nport = 80\n");
        for (at, line) in extra {
            if *at == i {
                text += line;
                text.push('\n');
                lines.push(text.lines().count());
            }
        }
        for j in 0..2 {
            text += &format!(
                "[[services.instances]]\nname = \"i{i}-{j}\"\naddress = \"10.{}.{}.{}\"\n",
                i / 250,
                i % 250,
                j + 1
            );
        }
    }
    (text, lines)
}

/// A file of megabytes is parsed in pieces on every core: the problems in
/// its last services are reported at their own lines, as for a small file,
/// and a syntax error late in it too.
#[test]
fn problems_deep_in_a_large_file_are_reported_at_their_lines() {
    let (valid, _) = large_zone(12_000, &[]);
    assert!(valid.len() > 1 << 20, "large enough to be parsed in pieces");
    let ok = zone_dir(&[("big.test.toml", &valid)]);
    let out = check(ok.path());
    assert!(out.status.success(), "{}", text(&out.stdout));

    let (bad, lines) = large_zone(
        12_000,
        &[(9_000, "protocol = \"sctp\""), (11_500, "max_answers = 0")],
    );
    let dir = zone_dir(&[("big.test.toml", &bad)]);
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let problems: Vec<(usize, usize, String)> = text(&out.stderr)
        .lines()
        .filter_map(parse_problem)
        .map(|(_, line, column, message)| (line, column, message))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        (problems[0].0, problems[0].1),
        (lines[0], 12),
        "{problems:?}"
    );
    assert!(problems[0].2.contains("sctp"), "{problems:?}");
    assert_eq!(
        (problems[1].0, problems[1].1),
        (lines[1], 15),
        "{problems:?}"
    );

    let (syntax, lines) = large_zone(12_000, &[(10_000, "port = = 1")]);
    let dir = zone_dir(&[("big.test.toml", &syntax)]);
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let first = text(&out.stderr).lines().find_map(parse_problem);
    assert_eq!(first.map(|p| p.1), Some(lines[0]), "{}", text(&out.stderr));
}
