//! Rows and what is done to them, without storage: table operations
//! evaluated at apply time ([`ops`]), the client sessions that make writes
//! exactly-once ([`sessions`]), and the validation a client and a node both
//! run before a request leaves or enters ([`validate`]).

pub mod ops;
pub mod sessions;
pub mod validate;
