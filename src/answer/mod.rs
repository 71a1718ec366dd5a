//! Answers: the immutable snapshot that queries read, how it is built from
//! the model, and answering one query from it. Nothing here does I/O.

pub mod respond;
pub mod reverse;
pub mod snapshot;
pub mod wire;
