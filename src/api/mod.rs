//! The admin API: [`proto`] is the contract (the newline-delimited JSON
//! spoken on the admin socket, shared by the server's socket source and the
//! CLI), [`client`] is the `signpost register`, `deregister`, `heartbeat`,
//! `list` and `status` commands, and [`run`] is `signpost run`, which
//! starts a program and keeps it registered while it lives.

pub mod client;
pub mod proto;
pub mod run;
