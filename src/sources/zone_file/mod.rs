//! Zone files: one TOML file per zone, parsed and validated into [`Zone`].
//!
//! The format is a user-facing contract; `zones/svc.example.toml` is the
//! annotated example. In short:
//!
//! ```toml
//! zone = "svc.example"          # required apex
//! ttl = 30                      # optional, default 30
//! nameservers = ["ns1"]         # optional NS names
//! [soa]                         # optional: mname, rname, refresh, retry, expire, minimum
//! [hosts]
//! ns1 = "127.0.0.1"
//! db = ["10.0.0.21", "fd00::21"]
//! [[services]]
//! name = "web"
//! protocol = "tcp"
//! port = 8080
//! tags = ["http"]
//! [[services.instances]]
//! name = "web-1"
//! address = "10.0.0.11"         # or `target = "host.elsewhere.example."`
//! ```
//!
//! Relative names are under the zone; a name ending in '.' is absolute.
//! Every error carries `file:line:column` (1-based, column in characters)
//! pointing at the offending key or value. TOML syntax errors and unknown
//! keys stop parsing at the first one; all semantic errors of a file are
//! reported together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hickory_proto::rr::Name;

use crate::model::Zone;

mod raw;
mod validate;

use crate::registry::RegistryError;
pub use crate::registry::ZoneError;
use validate::parse_inner;

/// The result of [`load_dir`]: the zones that loaded and every problem found.
#[derive(Debug, Default)]
pub struct LoadedDir {
    /// Zones that loaded without errors, with their files, in file-name order.
    pub zones: Vec<(PathBuf, Zone)>,
    /// Errors from all files; a file with errors contributes no zone.
    pub errors: Vec<ZoneError>,
}

/// Parses and validates one zone file's text. `path` is only used in errors.
#[cfg(test)]
pub(crate) fn parse(path: &Path, text: &str) -> Result<Zone, Vec<ZoneError>> {
    parse_inner(path, text).map(|(zone, _)| zone)
}

/// Reads and parses one file (an I/O error becomes a [`ZoneError`] at 1:1
/// with the I/O error's message).
#[cfg(test)]
fn load_file(path: &Path) -> Result<Zone, Vec<ZoneError>> {
    load_file_located(path).map(|(zone, _)| zone)
}

/// Loads every `*.toml` file in `dir`, sorted by file name (not recursive;
/// hidden files, whose names start with '.', are skipped).
///
/// A file with errors contributes only errors. A file claiming a zone (apex
/// compared case-insensitively) that an earlier file already has is an error
/// located at its `zone` value, naming the first file, and is not loaded.
/// Returns `Err` only if the directory itself can't be read.
pub fn load_dir(dir: &Path) -> std::io::Result<LoadedDir> {
    let mut loaded = LoadedDir::default();
    let files = zone_files(dir, &mut loaded.errors)?;

    // Apex -> the file that has it (Name compares case-insensitively).
    let mut apexes: HashMap<Name, PathBuf> = HashMap::new();
    for path in files {
        match load_file_located(&path) {
            Ok((zone, zone_span)) => {
                if let Some(first) = apexes.get(&zone.apex) {
                    let claimed = RegistryError::ZoneClaimed {
                        zone: zone.apex.to_ascii(),
                        other: first.clone(),
                    };
                    loaded.errors.push(ZoneError::at(&path, zone_span, claimed));
                    continue;
                }
                apexes.insert(zone.apex.clone(), path.clone());
                loaded.zones.push((path, zone));
            }
            Err(errors) => loaded.errors.extend(errors),
        }
    }
    Ok(loaded)
}

/// The zone files in `dir`: every `*.toml` entry (symlinks followed, so a
/// Kubernetes ConfigMap's links count) whose name does not start with '.',
/// sorted by file name. Unreadable entries, and entries that are neither a
/// regular file nor a directory (a FIFO, a socket, a device), are reported in
/// `errors` and left out.
pub fn zone_files(dir: &Path, errors: &mut Vec<ZoneError>) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(io_error(dir, &e));
                continue;
            }
        };
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        if name_str.starts_with('.') || !name_str.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        // stat, not open: stat never blocks, while opening a FIFO for
        // reading waits for a writer.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if !m.is_file() => {
                errors.push(not_regular(&path, &m.file_type()));
                continue;
            }
            // A regular file, or a dangling symlink whose read reports it.
            _ => {}
        }
        files.push((name, path));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// Reads and parses one file, also returning the line and column of the `zone`
/// value, where a conflict with another file is reported.
pub fn load_file_located(path: &Path) -> Result<(Zone, (usize, usize)), Vec<ZoneError>> {
    let (text, _) = read_file(path).map_err(|e| vec![e])?;
    parse_inner(path, &text)
}

/// Parses a zone file's text, also returning the line and column of the `zone` value.
pub fn parse_located(path: &Path, text: &str) -> Result<(Zone, (usize, usize)), Vec<ZoneError>> {
    parse_inner(path, text)
}

/// Reads a zone file's text, with the file's metadata as it was once read.
///
/// The file is opened with O_NONBLOCK and checked with fstat before any
/// read: a FIFO (or a symlink to one) put where a zone file was, or swapped
/// in after the directory was listed, must not block the caller, which
/// would stop every other file from loading. Anything but a regular file is
/// an error.
pub fn read_file(path: &Path) -> Result<(String, std::fs::Metadata), ZoneError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_error(path, &e))?;
    let before = file.metadata().map_err(|e| io_error(path, &e))?;
    if !before.is_file() {
        return Err(not_regular(path, &before.file_type()));
    }
    // O_NONBLOCK changes nothing for a regular file's reads.
    let mut text = String::with_capacity(before.len() as usize);
    file.read_to_string(&mut text)
        .map_err(|e| io_error(path, &e))?;
    let after = file.metadata().map_err(|e| io_error(path, &e))?;
    Ok((text, after))
}

fn not_regular(path: &Path, kind: &std::fs::FileType) -> ZoneError {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_fifo() {
        " (a FIFO)"
    } else if kind.is_socket() {
        " (a socket)"
    } else if kind.is_char_device() || kind.is_block_device() {
        " (a device)"
    } else {
        ""
    };
    ZoneError::at(path, (1, 1), format!("not a regular file{what}; skipped"))
}

fn io_error(path: &Path, e: &std::io::Error) -> ZoneError {
    ZoneError {
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    use crate::model::names::check_label;
    use crate::model::{DEFAULT_TTL, Endpoint, Host, Instance, Protocol, Service, Soa};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn ok(text: &str) -> Zone {
        match parse(Path::new("z.toml"), text) {
            Ok(zone) => zone,
            Err(errors) => panic!("unexpected errors: {errors:#?}"),
        }
    }

    /// The errors as `line:column: message` strings.
    fn errs(text: &str) -> Vec<String> {
        match parse(Path::new("z.toml"), text) {
            Ok(zone) => panic!("expected errors, got {zone:#?}"),
            Err(errors) => errors
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect(),
        }
    }

    /// A zone of many services in the forms the format allows, `extra`
    /// lines added to the services named in it.
    fn many_services(extra: &[(usize, &str)]) -> String {
        let mut text = String::from(
            "# services, generated\nzone = \"a.test\"\nttl = 60\nnameservers = [\"ns1\"]\n\n[hosts]\nns1 = \"10.9.0.1\"\n",
        );
        for i in 0..120 {
            let header = match i % 3 {
                0 => "[[services]]",
                1 => "  [[ services ]]   # spaced, with a comment",
                _ => "[[services]]\r",
            };
            text += &format!("\n{header}\nname = \"s{i}\"\nport = {}\n", 1000 + i);
            if i % 4 == 0 {
                text += "tags = [\"blue\", \"v2\"]\nprotocol = \"udp\"\n";
            }
            for (at, line) in extra {
                if *at == i {
                    text += line;
                    text += "\n";
                }
            }
            for j in 0..2 {
                text += &format!("[[services.instances]]\nname = \"i{i}-{j}\"\n");
                match (i + j) % 3 {
                    0 => {
                        text +=
                            &format!("address = [\n  \"10.{i}.0.{j}\",\n  \"fd00::{i}:{j}\",\n]\n")
                    }
                    1 => text += "target = \"elsewhere.example.\"\nweight = 5\n",
                    _ => {
                        text += &format!(
                            "address = \"10.{i}.1.{j}\"\ncheck = {{ tcp = true, interval = 2 }}\n[services.instances.metadata]\nversion = \"{j}\"\n"
                        )
                    }
                }
            }
        }
        text
    }

    type Parsed = Result<(Zone, (usize, usize)), Vec<ZoneError>>;

    /// The file parsed in pieces of about 300 bytes, and parsed whole.
    fn in_pieces_and_whole(text: &str) -> (Parsed, Parsed) {
        let path = Path::new("z.toml");
        (
            validate::parse_with(path, text, |t| raw::parse_raw_in(t, 300, 0)),
            validate::parse_with(path, text, |t| toml::from_str(t)),
        )
    }

    #[test]
    fn a_file_parsed_in_pieces_gives_the_zone_and_errors_of_the_whole_file() {
        let text = many_services(&[]);
        assert!(raw::parse_pieces(&text, 300).is_some(), "parsed in pieces");
        let (pieces, whole) = in_pieces_and_whole(&text);
        let zone = pieces.as_ref().expect("a valid zone");
        assert_eq!(zone.0.services.len(), 120);
        assert_eq!(pieces, whole);

        // Errors found after parsing, in services of later pieces: their
        // places come from the shifted spans.
        let bad = many_services(&[
            (40, "max_answers = 0"),
            (77, "check = { http = \"/h\", interval = -1 }"),
            (90, "protocol = \"sctp\""),
        ]);
        let mut dup = many_services(&[]);
        dup = dup.replace("name = \"s101\"", "name = \"s7\"");
        dup = dup.replace("name = \"i99-1\"", "name = \"i3-0\"");
        dup = dup.replace("\"10.60.0.0\"", "\"10.60.0.300\"");
        for text in [&bad, &dup] {
            assert!(raw::parse_pieces(text, 300).is_some(), "parsed in pieces");
            let (pieces, whole) = in_pieces_and_whole(text);
            let errors = pieces.as_ref().expect_err("errors");
            assert!(errors.len() >= 3, "{errors:#?}");
            assert!(errors.iter().all(|e| e.line > 100), "{errors:#?}");
            assert_eq!(pieces, whole);
        }

        // What pieces cannot tell, the whole file's parse does: a TOML
        // error, a table given twice, a key inside a multi-line string.
        let syntax = many_services(&[(80, "port = = 1")]);
        let hosts_twice = many_services(&[]) + "\n[hosts]\nlate = \"10.9.9.9\"\n";
        let hosts_late = many_services(&[]).replace("[hosts]\nns1 = \"10.9.0.1\"\n", "")
            + "\n[hosts]\nns1 = \"10.9.0.1\"\n";
        let multiline = many_services(&[(60, "tags = [\"\"\"\n[[services]]\nx\"\"\"]")]);
        assert!(raw::parse_pieces(&syntax, 300).is_none());
        assert!(raw::parse_pieces(&hosts_twice, 300).is_none());
        assert!(raw::parse_pieces(&hosts_late, 300).is_some());
        for text in [&syntax, &hosts_twice, &hosts_late, &multiline] {
            let (pieces, whole) = in_pieces_and_whole(text);
            assert_eq!(pieces, whole);
        }
        assert!(in_pieces_and_whole(&hosts_late).0.is_ok());
    }

    #[test]
    fn metadata_beyond_a_dns_sd_txt_record_is_an_error() {
        let mut text = String::from(
            "zone = \"a.test\"\n[[services]]\nname = \"web\"\nport = 80\n[[services.instances]]\nname = \"w\"\naddress = \"10.0.0.1\"\n[services.instances.metadata]\n",
        );
        for i in 0..40 {
            text.push_str(&format!("k{i} = \"{}\"\n", "v".repeat(240)));
        }
        let e = one_err(&text);
        assert!(e.starts_with("9:1: ") && e.contains("at most 8900"), "{e}");
    }

    #[test]
    fn a_63_character_service_name_is_an_error() {
        let name = "s".repeat(63);
        let text = format!("zone = \"a.test\"\n[[services]]\nname = \"{name}\"\nport = 80\n");
        assert!(
            one_err(&text).starts_with("3:8: service name"),
            "{}",
            one_err(&text)
        );
        let ok = format!(
            "zone = \"a.test\"\n[[services]]\nname = \"{}\"\nport = 80\n",
            &name[..62]
        );
        parse(Path::new("z.toml"), &ok).unwrap();
    }

    #[test]
    fn names_that_would_not_fit_in_255_bytes_are_errors() {
        // A 245-byte apex leaves room for neither `_webx._tcp.` nor `instance-12.`.
        let apex = vec!["a".repeat(60); 4].join(".");
        let text = format!(
            "zone = \"{apex}\"\n[[services]]\nname = \"webx\"\nport = 80\n\
             [[services.instances]]\nname = \"instance-12\"\naddress = \"10.0.0.1\"\n"
        );
        let errors = errs(&text);
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("3:8: service name \"webx\" is too long")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("6:8: instance name \"instance-12\" is too long")),
            "{errors:?}"
        );
    }

    fn one_err(text: &str) -> String {
        let e = errs(text);
        assert_eq!(e.len(), 1, "{e:#?}");
        e[0].clone()
    }

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/svc.example.toml")
    }

    fn arcs(instances: Vec<Instance>) -> crate::model::Instances {
        instances.into_iter().map(std::sync::Arc::new).collect()
    }

    fn inst(name: &str, endpoint: Endpoint, port: u16, weight: u16, priority: u16) -> Instance {
        Instance {
            name: name.into(),
            endpoint,
            port,
            weight,
            priority,
            check: None,
            tags: vec![],
            metadata: vec![],
        }
    }

    fn addrs(list: &[&str]) -> Endpoint {
        Endpoint::Addresses(list.iter().map(|s| ip(s)).collect())
    }

    #[test]
    fn example_file_parses_to_expected_model() {
        let zone = load_file(&example_path()).expect("example zone loads");
        let expected = Zone {
            apex: name("svc.example."),
            ttl: 30,
            nameservers: vec![name("ns1.svc.example.")],
            soa: Soa {
                mname: name("ns1.svc.example."),
                rname: name("hostmaster.svc.example."),
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minimum: 30,
            },
            hosts: vec![
                Host {
                    name: name("ns1.svc.example."),
                    addresses: vec![ip("127.0.0.1")],
                },
                Host {
                    name: name("db.svc.example."),
                    addresses: vec![ip("10.0.0.21"), ip("fd00::21")],
                },
                Host {
                    name: name("cache.svc.example."),
                    addresses: vec![ip("10.0.0.31")],
                },
            ],
            services: vec![
                Service {
                    name: "web".into(),
                    protocol: Protocol::Tcp,
                    tags: vec!["http".into()],
                    check: None,
                    instances: arcs(vec![
                        Instance {
                            metadata: vec![
                                ("version".into(), "2".into()),
                                ("path".into(), "/".into()),
                            ],
                            ..inst("web-1", addrs(&["10.0.0.11", "fd00::11"]), 8080, 1, 0)
                        },
                        inst("web-2", addrs(&["10.0.0.12", "fd00::12"]), 8080, 20, 0),
                        inst("web-3", addrs(&["10.0.0.13"]), 8080, 1, 1),
                    ]),
                    max_answers: None,
                },
                Service {
                    name: "api".into(),
                    protocol: Protocol::Tcp,
                    tags: vec![],
                    check: None,
                    instances: arcs(vec![
                        inst("api-1", addrs(&["10.0.0.41"]), 9000, 1, 0),
                        inst("api-2", addrs(&["10.0.0.42"]), 9001, 1, 0),
                    ]),
                    max_answers: None,
                },
                Service {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    tags: vec![],
                    check: None,
                    instances: arcs(vec![inst("resolver-1", addrs(&["10.0.0.53"]), 53, 1, 0)]),
                    max_answers: None,
                },
                Service {
                    name: "mail".into(),
                    protocol: Protocol::Tcp,
                    tags: vec![],
                    check: None,
                    instances: arcs(vec![inst(
                        "mx-external",
                        Endpoint::Target(Box::new(name("mx.example.net."))),
                        25,
                        1,
                        0,
                    )]),
                    max_answers: None,
                },
            ]
            .into_iter()
            .map(std::sync::Arc::new)
            .collect(),
        };
        assert_eq!(zone, expected);
        assert!(zone.apex.is_fqdn());
    }

    #[test]
    fn defaults() {
        let zone = ok("zone = \"a.test\"\n");
        assert_eq!(zone.apex, name("a.test."));
        assert!(zone.apex.is_fqdn());
        assert_eq!(zone.ttl, DEFAULT_TTL);
        assert!(zone.nameservers.is_empty());
        assert!(zone.hosts.is_empty() && zone.services.is_empty());
        assert_eq!(
            zone.soa,
            Soa {
                mname: name("a.test."),
                rname: name("hostmaster.a.test."),
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minimum: DEFAULT_TTL,
            }
        );

        let zone = ok(r#"
zone = "a.test."
ttl = 120
[[services]]
name = "x"
port = 1
[[services.instances]]
name = "x-1"
address = "::1"
"#);
        assert_eq!(zone.ttl, 120);
        assert_eq!(zone.soa.minimum, 120);
        let s = &zone.services[0];
        assert_eq!(s.protocol, Protocol::Tcp);
        let i = &s.instances[0];
        assert_eq!((i.port, i.weight, i.priority), (1, 1, 0));
    }

    #[test]
    fn soa_fields_and_rname_forms() {
        let zone = ok(r#"
zone = "a.test"
ttl = 60
nameservers = ["ns.other.test.", "ns2"]
[soa]
rname = "admin@Example.com"
refresh = 1
retry = 2
expire = 3
minimum = 4
"#);
        assert_eq!(
            zone.nameservers,
            vec![name("ns.other.test."), name("ns2.a.test.")]
        );
        assert_eq!(zone.soa.mname, name("ns.other.test."));
        assert!(zone.soa.rname.eq_case(&name("admin.Example.com.")));
        assert_eq!(
            (
                zone.soa.refresh,
                zone.soa.retry,
                zone.soa.expire,
                zone.soa.minimum
            ),
            (1, 2, 3, 4)
        );

        // A dot in the local part stays inside the first label.
        let zone = ok("zone = \"a.test\"\n[soa]\nrname = \"first.last@example.com\"\n");
        assert_eq!(zone.soa.rname, name("first\\.last.example.com."));
        assert_eq!(zone.soa.rname.iter().count(), 3);

        let zone = ok("zone = \"a.test\"\n[soa]\nrname = \"hm\"\nmname = \"x.elsewhere.\"\n");
        assert_eq!(zone.soa.rname, name("hm.a.test."));
        assert_eq!(zone.soa.mname, name("x.elsewhere."));

        let zone = ok("zone = \"a.test\"\n[soa]\nrname = \"hostmaster.example.com.\"\n");
        assert_eq!(zone.soa.rname, name("hostmaster.example.com."));

        assert_eq!(
            one_err("zone = \"a.test\"\n[soa]\nrname = \"@example.com\"\n"),
            "3:9: soa rname \"@example.com\" is not a valid mailbox (e.g. \"hostmaster\" or \"admin@example.com\")"
        );
    }

    #[test]
    fn relative_and_absolute_names_keep_case() {
        let zone = ok(r#"
zone = "Svc.Example"
nameservers = ["NS1", "ns.Other.net."]
[hosts]
"db.EU" = "10.0.0.1"
"abs.svc.example." = "10.0.0.2"
"svc.example." = "10.0.0.3"
[[services]]
name = "Web"
port = 80
[[services.instances]]
name = "Web-1"
target = "Back"
[[services.instances]]
name = "web-2"
target = "far.away."
"#);
        assert!(zone.apex.eq_case(&name("Svc.Example.")));
        assert!(zone.nameservers[0].eq_case(&name("NS1.Svc.Example.")));
        assert!(zone.nameservers[1].eq_case(&name("ns.Other.net.")));
        assert!(zone.hosts[0].name.eq_case(&name("db.EU.Svc.Example.")));
        assert!(zone.hosts[1].name.eq_case(&name("abs.svc.example.")));
        assert_eq!(zone.hosts[2].name, name("svc.example."));
        assert!(zone.hosts.iter().all(|h| h.name.is_fqdn()));
        let s = &zone.services[0];
        assert_eq!(s.name, "Web");
        assert_eq!(s.instances[0].name, "Web-1");
        match &s.instances[0].endpoint {
            Endpoint::Target(t) => assert!(t.eq_case(&name("Back.Svc.Example."))),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.instances[1].endpoint,
            Endpoint::Target(Box::new(name("far.away.")))
        );
    }

    #[test]
    fn hosts_keep_file_order() {
        let zone = ok(
            "zone = \"a.test\"\n[hosts]\nzz = \"10.0.0.1\"\naa = \"10.0.0.2\"\nmm = \"10.0.0.3\"\n",
        );
        let names: Vec<String> = zone.hosts.iter().map(|h| h.name.to_string()).collect();
        assert_eq!(names, ["zz.a.test.", "aa.a.test.", "mm.a.test."]);
    }

    #[test]
    fn syntax_error_has_position() {
        assert_eq!(
            one_err("zone = \"a.test\"\nttl = = 3\n"),
            "2:7: extra `=`, expected nothing"
        );
    }

    #[test]
    fn unknown_keys_point_at_the_key() {
        assert!(one_err("zone = \"a.test\"\nttls = 3\n").starts_with("2:1: unknown field `ttls`"));
        assert!(
            one_err("zone = \"a.test\"\n[[services]]\nname = \"w\"\nport = 1\n[[services.instances]]\nname = \"w-1\"\n  adress = \"10.0.0.1\"\n")
                .starts_with("7:3: unknown field `adress`")
        );
        assert!(
            one_err("zone = \"a.test\"\n[soa]\nserial = 3\n")
                .starts_with("3:1: unknown field `serial`")
        );
    }

    #[test]
    fn wrong_type_is_reported() {
        assert_eq!(
            one_err("zone = \"a.test\"\n[hosts]\nx = 3\n"),
            "3:5: invalid type: integer `3`, expected an address string or a list of address strings"
        );
    }

    #[test]
    fn missing_required_keys() {
        assert_eq!(
            one_err("ttl = 3\n"),
            "1:1: missing required key `zone` (the zone's apex, e.g. zone = \"svc.example\")"
        );
        assert_eq!(
            errs(
                "zone = \"a.test\"\n[[services]]\nport = 1\n[[services.instances]]\naddress = \"10.0.0.1\"\n"
            ),
            [
                "2:1: service is missing required key `name`",
                "4:1: instance of service \"?\" is missing required key `name`",
            ]
        );
    }

    #[test]
    fn bad_zone_apex() {
        assert!(one_err("zone = \".\"\n").starts_with("1:8: zone \".\" is the root"));
        assert!(one_err("zone = \"\"\n").starts_with("1:8: zone \"\" is the root"));
        assert!(
            one_err("zone = \"a..b\"\n")
                .starts_with("1:8: zone \"a..b\" is not a valid domain name")
        );
    }

    #[test]
    fn bad_addresses() {
        assert_eq!(
            errs(
                "zone = \"a.test\"\n[hosts]\nx = \"10.0.0.300\"\ny = [\"10.0.0.1\", \"fd00::zz\"]\nz = []\n"
            ),
            [
                "3:5: invalid IP address \"10.0.0.300\"",
                "4:18: invalid IP address \"fd00::zz\"",
                "5:5: host \"z\" has an empty address list; give at least one address",
            ]
        );
        assert_eq!(
            one_err(
                "zone = \"a.test\"\n[[services]]\nname = \"w\"\nport = 1\n[[services.instances]]\nname = \"w-1\"\naddress = []\n"
            ),
            "7:11: instance \"w-1\" has an empty address list; give at least one address"
        );
    }

    #[test]
    fn ports_ttl_weights_out_of_range() {
        let text = r#"zone = "a.test"
ttl = 2147483648
[[services]]
name = "w"
port = 0
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
port = 65536
weight = -1
priority = 70000
"#;
        assert_eq!(
            errs(text),
            [
                "2:7: ttl 2147483648 is out of range (0..=2147483647)",
                "5:8: port 0 is out of range (1..=65535)",
                "9:8: port 65536 is out of range (1..=65535)",
                "10:10: weight -1 is out of range (0..=65535)",
                "11:12: priority 70000 is out of range (0..=65535)",
            ]
        );
        // Extremes that are allowed.
        let zone = ok(
            "zone = \"a.test\"\nttl = 0\n[[services]]\nname = \"w\"\nport = 65535\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\nweight = 0\npriority = 65535\n",
        );
        let i = &zone.services[0].instances[0];
        assert_eq!(
            (zone.ttl, i.port, i.weight, i.priority),
            (0, 65535, 0, 65535)
        );
        assert_eq!(
            one_err("zone = \"a.test\"\nttl = -1\n"),
            "2:7: ttl -1 is out of range (0..=2147483647)"
        );
    }

    #[test]
    fn missing_port() {
        assert_eq!(
            one_err(
                "zone = \"a.test\"\n[[services]]\nname = \"w\"\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\n"
            ),
            "4:1: instance \"w-1\" has no port: set `port` here or on service \"w\""
        );
    }

    #[test]
    fn invalid_service_port_is_reported_once() {
        assert_eq!(
            one_err(
                "zone = \"a.test\"\n[[services]]\nname = \"w\"\nport = 0\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\n"
            ),
            "4:8: port 0 is out of range (1..=65535)"
        );
    }

    #[test]
    fn bad_protocol() {
        assert_eq!(
            one_err("zone = \"a.test\"\n[[services]]\nname = \"w\"\nprotocol = \"sctp\"\n"),
            "4:12: unknown protocol \"sctp\" (expected \"tcp\" or \"udp\")"
        );
    }

    #[test]
    fn bad_labels() {
        let text = r#"zone = "a.test"
[[services]]
name = "_web"
tags = ["ok", "", "a.b", "x_y"]
[[services]]
name = "-w"
[[services.instances]]
name = "w.1"
target = "x."
port = 1
"#;
        assert_eq!(
            errs(text),
            [
                "3:8: service name \"_web\" must not start with '_' (the underscore of SRV names is added automatically)",
                "4:15: tag must not be empty",
                "4:19: tag \"a.b\" must be a single DNS label, without '.'",
                "4:26: tag \"x_y\" contains '_'; only letters, digits and '-' are allowed",
                "6:8: service name \"-w\" must not start or end with '-'",
                "8:8: instance name \"w.1\" must be a single DNS label, without '.'",
            ]
        );
    }

    #[test]
    fn metadata_and_max_answers() {
        let zone = ok(r#"zone = "a.test"
[[services]]
name = "w"
port = 1
max_answers = 2
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
metadata = { version = "2", "Path Name" = "/a=b", empty = "" }
"#);
        let s = &zone.services[0];
        assert_eq!(s.max_answers, Some(2));
        assert_eq!(
            s.instances[0].metadata,
            [
                ("version".to_string(), "2".to_string()),
                ("Path Name".to_string(), "/a=b".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        assert_eq!(
            ok("zone = \"a.test\"\n[[services]]\nname = \"w\"\n").services[0].max_answers,
            None
        );

        let long = "x".repeat(253);
        let text = format!(
            r#"zone = "a.test"
[[services]]
name = "w"
port = 1
max_answers = 0
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
metadata = {{ "a=b" = "1", "" = "2", "é" = "3", key = "{long}", KEY = "4" }}
[[services.instances]]
name = "w-2"
address = "10.0.0.2"
metadata = {{ a = "1", A = "2" }}
"#
        );
        assert_eq!(
            errs(&text),
            [
                "5:15: max_answers 0 is out of range (1..=65535)",
                "9:14: instance \"w-1\": metadata key \"a=b\" contains '='; keys are printable ASCII without '='",
                "9:27: instance \"w-1\": metadata key must not be empty",
                "9:37: instance \"w-1\": metadata key \"é\" contains 'é'; keys are printable ASCII without '='",
                "9:54: instance \"w-1\": metadata \"key=...\" is 257 bytes long; a TXT string holds at most 255",
                "13:23: instance \"w-2\": metadata key \"A\" is given twice (keys are case-insensitive)",
            ]
        );
        assert!(
            one_err("zone = \"a.test\"\n[[services]]\nname = \"w\"\nport = 1\n[[services.instances]]\nname = \"w-1\"\naddress = \"10.0.0.1\"\nmetadata = { v = 2 }\n")
                .starts_with("8:18: invalid type: integer `2`, expected a string")
        );
    }

    #[test]
    fn check_label_rules() {
        assert!(check_label("service name", "web").is_ok());
        assert!(check_label("service name", "a-1").is_ok());
        assert!(check_label("service name", "1a").is_ok());
        assert!(check_label("tag", &"a".repeat(63)).is_ok());
        assert!(
            check_label("tag", &"a".repeat(64))
                .unwrap_err()
                .contains("at most 63")
        );
        assert!(check_label("tag", "").is_err());
        assert!(check_label("tag", "a-").is_err());
        assert!(check_label("tag", "a b").is_err());
        assert!(check_label("tag", "é").is_err());
        assert!(
            check_label("service name", "_w")
                .unwrap_err()
                .contains("'_'")
        );
    }

    #[test]
    fn address_and_target_exclusive() {
        let text = r#"zone = "a.test"
[[services]]
name = "w"
port = 1
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
target = "x.test."
[[services.instances]]
name = "w-2"
"#;
        assert_eq!(
            errs(text),
            [
                "8:10: instance \"w-1\" has both `address` and `target`; give only one",
                "9:1: instance \"w-2\" needs an `address` (its own host) or a `target` (a name elsewhere)",
            ]
        );
    }

    #[test]
    fn health_checks_on_services_and_instances() {
        let zone = ok(r#"zone = "a.test"
[[services]]
name = "w"
port = 1
check = { tcp = true, interval = 0.5, failures = 1 }
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
[[services.instances]]
name = "w-2"
address = "10.0.0.2"
check = { http = "/healthz", interval = 10, timeout = 1.5, successes = 4 }
"#);
        let s = &zone.services[0];
        let c = s.check.as_ref().unwrap();
        assert_eq!(c.kind, crate::model::CheckKind::Tcp);
        assert_eq!(c.interval, std::time::Duration::from_millis(500));
        assert_eq!(c.timeout, std::time::Duration::from_millis(500));
        assert_eq!((c.failures, c.successes), (1, 2));
        assert_eq!(s.instances[0].check, None);
        let c = s.instances[1].check.as_ref().unwrap();
        assert_eq!(c.kind, crate::model::CheckKind::Http("/healthz".into()));
        assert_eq!(c.timeout, std::time::Duration::from_millis(1500));
        assert_eq!((c.failures, c.successes), (3, 4));
    }

    #[test]
    fn bad_health_checks_point_at_the_value() {
        let text = r#"zone = "a.test"
[[services]]
name = "w"
port = 1
check = { tcp = true, http = "/" }
[[services.instances]]
name = "w-1"
address = "10.0.0.1"
check = { http = "healthz", interval = 0, failures = 0 }
[[services.instances]]
name = "w-2"
target = "x.test."
check = { tcp = true }
[[services.instances]]
name = "w-3"
address = "10.0.0.3"
check = { interval = 1, timeout = 2 }
"#;
        assert_eq!(
            errs(text),
            [
                "5:30: check of service \"w\": a check has either `tcp = true` or `http = \"/path\"`, not both",
                "9:18: check of instance \"w-1\": http path \"healthz\" must start with '/'",
                "9:40: check of instance \"w-1\": interval 0 is out of range (0.01..=86400 seconds)",
                "9:54: check of instance \"w-1\": failures 0 is out of range (1..=100)",
                "13:9: instance \"w-2\" has a `target` and no address: there is nothing to check",
                "17:9: check of instance \"w-3\": a check needs `tcp = true` (connect to the port) or `http = \"/path\"` (GET, 2xx is healthy)",
                "17:35: check of instance \"w-3\": timeout 2 is longer than the interval 1 seconds",
            ]
        );
        assert!(
            one_err(
                "zone = \"a.test\"\n[[services]]\nname = \"w\"\ncheck = { tcp = true, every = 3 }\n"
            )
            .starts_with("4:23: unknown field `every`")
        );
        assert!(
            one_err("zone = \"a.test\"\n[[services]]\nname = \"w\"\ncheck = { tcp = false }\n")
                .contains("`tcp = false` checks nothing")
        );
    }

    #[test]
    fn name_conflicts() {
        let text = r#"zone = "a.test"
[hosts]
web = "10.0.0.1"
"x.web" = "10.0.0.2"
w-1 = "10.0.0.3"
[[services]]
name = "web"
port = 1
[[services.instances]]
name = "w-1"
address = "10.0.0.4"
[[services.instances]]
name = "W-1"
target = "x."
[[services]]
name = "api"
port = 1
[[services.instances]]
name = "web"
address = "10.0.0.5"
[[services]]
name = "web"
protocol = "udp"
port = 2
[[services]]
name = "Web"
port = 3
"#;
        assert_eq!(
            errs(text),
            [
                "3:1: host \"web.a.test.\" is at or under the name of service \"web\" (line 7); rename one of them",
                "4:1: host \"x.web.a.test.\" is at or under the name of service \"web\" (line 7); rename one of them",
                "10:8: instance name \"w-1\" is also a host (line 5); both would own addresses at w-1.a.test.",
                "13:8: instance name \"W-1\" is used twice (first at line 10)",
                "19:8: instance name \"web\" is also the name of service \"web\" (line 7); both would own web.a.test.",
                "19:8: instance name \"web\" is also a host (line 3); both would own addresses at web.a.test.",
                "26:8: service \"Web\" (tcp) is defined twice (first at line 7)",
            ]
        );
    }

    #[test]
    fn host_name_problems() {
        let text = r#"zone = "a.test"
[hosts]
"x.other.test." = "10.0.0.1"
"db" = "10.0.0.2"
"DB.a.test." = "10.0.0.3"
"_x" = "10.0.0.4"
"#;
        assert_eq!(
            errs(text),
            [
                "3:1: host \"x.other.test.\" is not under the zone \"a.test.\"",
                "5:1: host \"DB.a.test.\" is given twice (first at line 4)",
                "6:1: host \"_x\": host name label \"_x\" must not start with '_' (the underscore of SRV names is added automatically)",
            ]
        );
    }

    #[test]
    fn all_semantic_errors_reported_with_path() {
        let text = "zone = \"a.test\"\nttl = -5\n[hosts]\n\"bad\" = \"1.2.3\"\n[[services]]\nname = \"w\"\nport = 99999\n";
        let errors = parse(Path::new("dir/z.toml"), text).unwrap_err();
        assert_eq!(errors.len(), 3);
        assert_eq!(
            errors[0].to_string(),
            "dir/z.toml:2:7: ttl -5 is out of range (0..=2147483647)"
        );
        assert_eq!(
            errors[1].to_string(),
            "dir/z.toml:4:9: invalid IP address \"1.2.3\""
        );
        assert_eq!(
            errors[2].to_string(),
            "dir/z.toml:7:8: port 99999 is out of range (1..=65535)"
        );
    }

    #[test]
    fn column_counts_characters() {
        // "é" is two bytes but one column.
        assert_eq!(
            one_err("zone = \"a.test\" # é\n[hosts] # é\n\"x\" = \"é\"\n"),
            "3:7: invalid IP address \"é\""
        );
        assert_eq!(
            one_err("# ééé\nttl = 3 # é\n"),
            "1:1: missing required key `zone` (the zone's apex, e.g. zone = \"svc.example\")"
        );
        assert_eq!(
            one_err("# é\nzone = \"a.test\"\nttl = -1\n"),
            "3:7: ttl -1 is out of range (0..=2147483647)"
        );
        assert_eq!(
            one_err("zone = \"é\"  \n")
                .split(':')
                .take(2)
                .collect::<Vec<_>>(),
            ["1", "8"]
        );
    }

    #[test]
    fn load_file_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.toml");
        let errors = load_file(&path).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].column), (1, 1));
        assert_eq!(errors[0].path, path);
    }

    #[test]
    fn load_dir_sorted_and_duplicate_zones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |n: &str, t: &str| std::fs::write(dir.path().join(n), t).expect("write");
        write("b.toml", "zone = \"one.test\"\n");
        write("a.toml", "zone = \"two.test\"\n");
        write("c.toml", "# same zone, other case\nzone = \"ONE.test.\"\n");
        write("d.toml", "zone = \"bad.test\"\nttl = -1\n");
        write(".hidden.toml", "this is not toml");
        write("notes.txt", "this is not toml");
        std::fs::create_dir(dir.path().join("sub.toml")).expect("mkdir");

        let loaded = load_dir(dir.path()).expect("dir readable");
        let files: Vec<_> = loaded
            .zones
            .iter()
            .map(|(p, z)| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    z.apex.to_string(),
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                ("a.toml".to_owned(), "two.test.".to_owned()),
                ("b.toml".to_owned(), "one.test.".to_owned()),
            ]
        );
        assert_eq!(loaded.errors.len(), 2, "{:#?}", loaded.errors);
        let dup = &loaded.errors[0];
        assert_eq!(dup.path, dir.path().join("c.toml"));
        assert_eq!((dup.line, dup.column), (2, 8));
        assert!(
            dup.message.contains("already defined by"),
            "{}",
            dup.message
        );
        assert!(dup.message.contains("b.toml"), "{}", dup.message);
        assert_eq!(loaded.errors[1].path, dir.path().join("d.toml"));

        assert!(load_dir(&dir.path().join("nope")).is_err());
    }
}
