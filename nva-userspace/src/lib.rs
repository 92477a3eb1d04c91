//! nva's userspace: the agent that runs the XDP data path, and the failover
//! daemon. Modules in the order their imports point (each uses only those
//! after it, and `nva-common`):
//!
//! - [`agent`]: the agent's lifecycle (start, adopt, reload, repair, stop),
//!   its state files, the truthful health check and the HTTP endpoints;
//! - [`sync`]: connection-state sync with the peer NVA;
//! - [`conntrack`]: the flow table seen from userspace (list, sweep, flush);
//! - [`datapath`]: the loaded XDP program, its maps and links, pinned under
//!   the bpffs layout (`datapath::pin`), batched map access;
//! - [`nat`]: `[[nat]]` entries compiled into the data path's match lists;
//! - [`classifier`]: rules compiled into lookup tables, and the userspace
//!   model of the lookup that tests and the health check use;
//! - [`policy`]: the rule model and the config file that describes it;
//! - [`failover`]: the failover daemon (ZooKeeper election, probes,
//!   decisions, the linux and azure providers), apart from the agent;
//! - [`http`]: the HTTP stack both serve their endpoints with, and the
//!   Prometheus exposition helpers;
//! - [`configfile`]: the config-file toolkit both configs are read with
//!   (TOML with spans, `FILE:LINE:COL` errors, typed checks); with `http`
//!   and `nva-common`, the bottom layer.
//!
//! Forwarding adds a module beside `conntrack` and `nat` (and `datapath`
//! maps), owning its feature's userspace side.

pub mod agent;
pub mod classifier;
pub mod configfile;
pub mod conntrack;
pub mod datapath;
pub mod failover;
pub mod http;
pub mod nat;
pub mod policy;
pub mod sync;
