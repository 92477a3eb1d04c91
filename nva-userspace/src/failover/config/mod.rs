//! The failover daemon's config file (DESIGN.md, "Failover config file"):
//! parsed and validated with FILE:LINE:COL errors through the toolkit the
//! agent's config uses ([`crate::configfile`]).

//!
//! The settings the daemon runs with are here; [`parse`] reads them from
//! the file (its `Raw*` tables and their validation).

mod parse;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};

use crate::policy::model::Cidr;

pub use parse::{load_failover_config, parse_failover_config};

pub const DEFAULT_ELECTION_PATH: &str = "/nva/failover";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9190";
/// Routing table id of the main table.
pub const MAIN_TABLE: u32 = 254;

#[derive(Clone, Debug, PartialEq)]
pub struct FailoverConfig {
    pub daemon: DaemonSettings,
    pub probe: ProbeSettings,
    pub switch: SwitchSettings,
    /// In order of preference.
    pub nvas: Vec<NvaSettings>,
    pub linux_routes: Vec<LinuxRoute>,
    /// Addresses that move to the active NVA (with gratuitous ARP or an
    /// unsolicited neighbour advertisement).
    pub linux_vips: Vec<LinuxVip>,
    /// With `switch.provider = "azure"`.
    pub azure: Option<AzureSettings>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AzureSettings {
    pub route_tables: Vec<RouteTableSettings>,
    pub public_ip_id: String,
    pub arm_endpoint: String,
    pub token: TokenSource,
    /// Poll interval of long-running operations without Retry-After.
    pub poll_interval_ms: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteTableSettings {
    pub id: String,
    /// Names of the routes that follow the active NVA.
    pub routes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TokenSource {
    /// The VM's managed identity, from the instance metadata service:
    /// the system-assigned one, or the user-assigned one whose client id
    /// is given (a VM may hold several; IMDS refuses to guess).
    ManagedIdentity {
        endpoint: String,
        client_id: Option<String>,
    },
    /// A service principal's client secret (read from a file).
    ServicePrincipal {
        authority: String,
        tenant_id: String,
        client_id: String,
        secret_file: std::path::PathBuf,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSettings {
    pub id: String,
    /// ZooKeeper connect string; None: standalone (a single daemon).
    pub zookeeper: Option<String>,
    pub election_path: String,
    pub metrics_listen: SocketAddr,
    /// ZooKeeper session timeout: how long a daemon cut off from the
    /// ensemble may be believed alive by the others.
    pub session_timeout_ms: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSettings {
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Consecutive failures that declare an NVA down.
    pub fall: u32,
    /// Consecutive successes that declare it up.
    pub rise: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Linux,
    Azure,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SwitchSettings {
    pub provider: Provider,
    pub min_dwell_s: u32,
    pub preempt: bool,
    pub max_failovers_per_hour: u32,
}

/// How an NVA's health is probed.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeTarget {
    /// HTTP GET; healthy on status 200.
    Http { addr: SocketAddr, path: String },
    /// TCP connect; healthy when it is accepted.
    Tcp(SocketAddr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NvaSettings {
    pub name: String,
    pub probe: ProbeTarget,
    pub internal_ip: IpAddr,
    pub external_ip: Option<IpAddr>,
    /// Azure: the NIC that holds the public IP when this NVA is active,
    /// and its IP configuration.
    pub nic_id: Option<String>,
    pub ip_config: Option<String>,
    /// Linux: the network namespace holding this NVA's interfaces, where
    /// VIPs are added ("" = the daemon's own).
    pub netns: String,
}

/// A virtual IP that the active NVA holds.
#[derive(Clone, Debug, PartialEq)]
pub struct LinuxVip {
    pub address: IpAddr,
    pub prefix_len: u8,
    /// Interface of the NVA that gets the address.
    pub dev: String,
}

/// Which address of the active NVA a route points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    InternalIp,
    ExternalIp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LinuxRoute {
    /// Network namespace holding the route ("" = the daemon's own).
    pub netns: String,
    pub table: u32,
    pub prefix: Cidr,
    pub via: Via,
}

impl NvaSettings {
    /// The next hop for `via`.
    pub fn next_hop(&self, via: Via) -> Option<IpAddr> {
        match via {
            Via::InternalIp => Some(self.internal_ip),
            Via::ExternalIp => self.external_ip,
        }
    }
}
