//! Connection-state sync with the peer NVA (`[sync]`): the active NVA's
//! flows, exported from its conntrack table, imported into the standby's,
//! so that established connections survive a failover.
//!
//! - [`codec`]: flow records in authenticated, replay-proof frames;
//! - [`flows`]: records from the conntrack table, and into the peer's
//!   (addresses mapped by NAT entry name, local rules checked);
//! - [`service`]: the sender and the receiver, their key and counters.

pub mod codec;
pub mod flows;
pub mod service;
