//! Crate internals the fuzz targets in `fuzz/` drive. Compiled only with the `fuzzing` cargo
//! feature (off by default) and hidden from the docs: this is not part of the API and may
//! change with any release.
//!
//! These are the real types, re-exported: the fuzzers exercise exactly the code the reactor
//! runs, through the same calls.

pub use crate::proto::connection::{
    Completed, Connection, RecvStop, Whole, CHUNK_CAP, COPY_MAX, STAGE_CAP,
};
