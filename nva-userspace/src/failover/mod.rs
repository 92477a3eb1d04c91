//! The failover daemon (`nva failover`): probes the NVAs of a pair, elects a
//! leader among its peers through ZooKeeper, and moves traffic to the
//! standby when the active NVA fails.

pub mod azure;
pub mod config;
pub mod coord;
pub mod daemon;
pub mod decide;
pub mod http;
pub mod linux;
pub mod probe;
