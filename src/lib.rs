//! signpost: an authoritative DNS server for service discovery.
//!
//! Data flows one way: sources (zone files, the admin socket) → [`registry::Registry`] → an
//! immutable [`snapshot::Snapshot`] published atomically → [`dns::respond`],
//! which the [`server`] loops call for every query. Names outside every zone
//! go to [`forward`] when upstreams are configured.
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod config;
pub mod dns;
pub mod forward;
pub mod health;
pub mod model;
pub mod registry;
pub mod reverse;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod udp_batch;
pub mod watch;
pub mod wire;
pub mod zone;
