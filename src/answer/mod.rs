//! Answers: the immutable snapshot that queries read, how it is built from
//! the model, and answering one query from it. Nothing here does I/O.

pub mod build;
mod encode;
pub mod live;
pub mod records;
pub mod respond;
pub mod reverse;
pub mod snapshot;
#[cfg(test)]
mod testing;
mod weighted;
pub mod wire;
