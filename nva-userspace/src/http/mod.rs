//! HTTP: the one stack both daemons serve their read-only endpoints with
//! ([`server`]) and the Prometheus exposition helpers they share
//! ([`exposition`]). The endpoints live with what they expose:
//! `agent::http` and `failover::http`.

pub mod exposition;
pub mod server;
