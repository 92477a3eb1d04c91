//! HTTP: the one stack both daemons serve their read-only endpoints with
//! ([`server`]), the Prometheus exposition helpers they share
//! ([`exposition`]), and the agent's endpoints ([`agent`]). The failover
//! daemon's endpoints live beside it, in `failover::http`.

pub mod agent;
pub mod exposition;
pub mod server;

pub use agent::{metrics, serve, tcp_probe, Shared, Snapshot};

/// What can go wrong serving an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    DataPath(#[from] crate::datapath::DataPathError),
    #[error("BPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("encoding the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("request task: {0}")]
    Task(#[from] tokio::task::JoinError),
}
