//! The coordinator's shell: the timer that runs a coordinator round on the
//! Raft leader. Its decisions are the pure planners of
//! `tstore_core::coordinator`.

pub mod actor;
