//! What may leave the daemon and about whom: the processing policy, consent.

pub mod consent;
pub mod policy;
