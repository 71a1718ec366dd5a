//! signpost: an authoritative DNS server for service discovery.
//!
//! Data flows one way, and the folders follow it:
//!
//! - [`sources`]: zone files and their watcher, the admin socket, the health
//!   prober. Each only describes what it saw, as a [`registry::Change`].
//! - [`registry`]: the one writer task that applies changes in order, keeps
//!   runtime registrations durable in a [`registry::store::Store`], and
//!   publishes an immutable snapshot after each batch.
//! - [`answer`]: the snapshot of pre-encoded answers, how it is built, and
//!   [`answer::respond`], which answers one query with no I/O.
//! - [`net`]: the UDP and TCP loops that call it, and forwarding of names
//!   outside every zone.
//! - [`transfer`]: zone transfers (AXFR, IXFR) and their journal, TSIG, and
//!   what the NOTIFY sender in [`net`] is told.
//! - [`api`]: the admin protocol shared by the server and the CLI, and the
//!   CLI's client commands.
//!
//! - [`cluster`]: runtime registrations shared by several nodes through
//!   etcd, a store and a source at once.
//! - [`metrics`]: what the server counts, rendered for Prometheus by the
//!   endpoint in [`net`].
//!
//! [`model`] is the vocabulary every stage shares; [`config`] and [`app`]
//! turn the command line into a running server.
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod answer;
pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod model;
pub mod net;
pub mod parallel;
pub mod registry;
pub mod service_manager;
pub mod sources;
pub mod transfer;
pub mod utc;
