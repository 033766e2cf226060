//! Small data structures with no knowledge of tofu: a map keyed by small integers and a
//! cache-line-padded cell. Every layer may use them; they use nothing of the crate.

pub(crate) mod intmap;
pub(crate) mod padded;
