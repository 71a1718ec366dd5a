//! A cluster: several signpost nodes share their runtime registrations
//! through etcd (`serve --etcd URL`). etcd replaces the state file as the
//! [`Store`](crate::registry::store::Store): a node's registrations are
//! written there before they are acknowledged, and every node follows the
//! key prefix with a watch, applying what other nodes (or other tools)
//! write through its own single writer. Zone files stay per node.
//!
//! The settings here are always parsed, so a config file with `etcd` keys is
//! valid in every build; the client itself is behind the `etcd` cargo
//! feature (its build needs protoc).

use std::path::{Path, PathBuf};

use clap::Args;

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
pub mod format;

/// The default key prefix of the registrations.
pub const DEFAULT_PREFIX: &str = "/signpost/";

/// The etcd options of `signpost serve`.
#[derive(Debug, Default, Args)]
pub struct EtcdArgs {
    /// Keep runtime registrations in etcd instead of the state file, shared
    /// by every node pointed at the same etcd; repeat for each member
    /// (`http://10.0.0.1:2379`)
    #[arg(long, value_name = "URL")]
    pub etcd: Vec<String>,
    /// The key prefix the registrations are kept under [default: /signpost/]
    #[arg(long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// CA certificate (PEM) that etcd's server certificates are checked against
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client certificate authentication
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name (with role-based access control on)
    #[arg(long, value_name = "NAME")]
    pub etcd_user: Option<String>,
    /// The etcd user's password (better from the environment than the command line)
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "SIGNPOST_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
}

/// The etcd keys of the config file, as the file spells them.
#[derive(Debug, Default)]
pub struct EtcdFile<'a> {
    /// `etcd = ["http://..."]`
    pub endpoints: &'a [String],
    /// `etcd-prefix`
    pub prefix: Option<&'a String>,
    /// `etcd-ca`
    pub ca: Option<&'a PathBuf>,
    /// `etcd-cert`
    pub cert: Option<&'a PathBuf>,
    /// `etcd-key`
    pub key: Option<&'a PathBuf>,
    /// `etcd-user`
    pub user: Option<&'a String>,
    /// `etcd-password`
    pub password: Option<&'a String>,
}

/// How to reach etcd, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The members' URLs.
    pub endpoints: Vec<String>,
    /// The key prefix, ending with `/`.
    pub prefix: String,
    /// CA certificate file.
    pub ca: Option<PathBuf>,
    /// Client certificate and key files.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// User and password.
    pub user: Option<(String, String)>,
}

impl ClusterConfig {
    /// The settings of the command line, else of the config file (whose
    /// paths are relative to `base`); `None` without any endpoint.
    pub fn from(
        args: &EtcdArgs,
        file: &EtcdFile<'_>,
        base: &Path,
    ) -> Result<Option<ClusterConfig>, String> {
        let endpoints: Vec<String> = if args.etcd.is_empty() {
            file.endpoints.to_vec()
        } else {
            args.etcd.clone()
        };
        if endpoints.is_empty() {
            let stray = args.etcd_prefix.is_some()
                || args.etcd_ca.is_some()
                || args.etcd_cert.is_some()
                || args.etcd_user.is_some();
            if stray {
                return Err("the etcd options need at least one --etcd URL".into());
            }
            return Ok(None);
        }
        for e in &endpoints {
            let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
            if !scheme_ok || e.len() <= "https://".len() {
                return Err(format!(
                    "etcd endpoint `{e}` is not a URL like http://127.0.0.1:2379"
                ));
            }
        }
        let prefix = args
            .etcd_prefix
            .clone()
            .or(file.prefix.cloned())
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        if prefix.is_empty() {
            return Err("etcd-prefix must not be empty".into());
        }
        let prefix = if prefix.ends_with('/') {
            prefix
        } else {
            format!("{prefix}/")
        };
        let path = |flag: &Option<PathBuf>, file: Option<&PathBuf>| match (flag, file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(p)) => Some(base.join(p)),
            (None, None) => None,
        };
        let ca = path(&args.etcd_ca, file.ca);
        let identity = match (
            path(&args.etcd_cert, file.cert),
            path(&args.etcd_key, file.key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("etcd-cert and etcd-key go together".into()),
        };
        let user = match (
            args.etcd_user.clone().or(file.user.cloned()),
            args.etcd_password.clone().or(file.password.cloned()),
        ) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(
                    "etcd-user needs a password (--etcd-password or SIGNPOST_ETCD_PASSWORD)".into(),
                );
            }
            (None, Some(_)) => return Err("an etcd password needs etcd-user".into()),
        };
        Ok(Some(ClusterConfig {
            endpoints,
            prefix,
            ca,
            identity,
            user,
        }))
    }
}

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This build has no etcd client.
    #[error(
        "this signpost was built without etcd support; build it with `cargo build --release --features etcd` (needs protoc: Debian's protobuf-compiler)"
    )]
    NotBuilt,
    /// A TLS file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// etcd did not answer, or refused.
    #[error("etcd at {endpoints}: {problem}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// What went wrong.
        problem: String,
    },
}

/// What joining a cluster gives `serve`: every registration etcd holds, the
/// store the writer saves to, and the watch to start once the writer runs.
pub type Joined = (
    Vec<crate::registry::store::Stored>,
    Box<dyn crate::registry::store::Store>,
    Follower,
);

#[cfg(feature = "etcd")]
pub use etcd::{Follower, open};

/// Without the client, asking for a cluster is an error.
#[cfg(not(feature = "etcd"))]
pub async fn open(_config: &ClusterConfig) -> Result<Joined, ClusterError> {
    Err(ClusterError::NotBuilt)
}

/// Without the client there is never a cluster to follow.
#[cfg(not(feature = "etcd"))]
pub enum Follower {}

#[cfg(not(feature = "etcd"))]
impl Follower {
    /// Never called: there is no cluster without the client.
    pub fn follow(
        self,
        _writer: crate::registry::writer::WriterHandle,
        _shutdown: tokio_util::sync::CancellationToken,
    ) {
        match self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(etcd: &[&str]) -> EtcdArgs {
        EtcdArgs {
            etcd: etcd.iter().map(ToString::to_string).collect(),
            ..EtcdArgs::default()
        }
    }

    #[test]
    fn without_an_endpoint_there_is_no_cluster() {
        let none = ClusterConfig::from(&args(&[]), &EtcdFile::default(), Path::new(""));
        assert_eq!(none, Ok(None));
        let stray = EtcdArgs {
            etcd_prefix: Some("/x/".into()),
            ..EtcdArgs::default()
        };
        let e = ClusterConfig::from(&stray, &EtcdFile::default(), Path::new("")).unwrap_err();
        assert!(e.contains("--etcd URL"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file_and_the_prefix_ends_with_a_slash() {
        let from_file = vec!["http://10.0.0.1:2379".to_string()];
        let prefix = "/dns".to_string();
        let ca = PathBuf::from("ca.pem");
        let file = EtcdFile {
            endpoints: &from_file,
            prefix: Some(&prefix),
            ca: Some(&ca),
            ..EtcdFile::default()
        };
        let c = ClusterConfig::from(&args(&[]), &file, Path::new("/etc/signpost"))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoints, from_file);
        assert_eq!(c.prefix, "/dns/");
        assert_eq!(c.ca, Some(PathBuf::from("/etc/signpost/ca.pem")));
        let c = ClusterConfig::from(&args(&["https://a:2379"]), &file, Path::new(""))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoints, vec!["https://a:2379".to_string()]);
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let e = ClusterConfig::from(
            &args(&["127.0.0.1:2379"]),
            &EtcdFile::default(),
            Path::new(""),
        )
        .unwrap_err();
        assert!(e.contains("not a URL"), "{e}");
        let user = EtcdArgs {
            etcd_user: Some("signpost".into()),
            ..args(&["http://a:2379"])
        };
        let e = ClusterConfig::from(&user, &EtcdFile::default(), Path::new("")).unwrap_err();
        assert!(e.contains("password"), "{e}");
    }
}
