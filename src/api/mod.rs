//! The admin API: [`proto`] is the contract (the newline-delimited JSON
//! spoken on the admin socket, shared by the server's socket source and the
//! CLI), and [`client`] is the `signpost register`, `deregister`,
//! `heartbeat`, `list` and `status` commands.

pub mod client;
pub mod proto;
