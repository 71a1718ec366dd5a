//! The admin socket: runtime registrations over a local Unix socket.
//!
//! [`proto`] is the contract (serde types shared by the server, the CLI and
//! the state file), [`server`] listens on the socket and hands requests to
//! the registry's owner task, and [`client`] is the `signpost register`,
//! `deregister`, `heartbeat`, `list` and `status` commands.

pub mod client;
pub mod proto;
pub mod server;
