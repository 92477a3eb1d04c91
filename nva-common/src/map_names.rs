//! Map names, defined once for both sides: the program's maps carry these
//! names (`#[map(name = ...)]` would repeat them; the statics are named the
//! same) and userspace finds its maps by them. Rule tables exist once per
//! slot, named `{NAME}_{slot}` (slot 0 or 1).

pub const ACTIVE: &str = "ACTIVE";
pub const SRC_V4: &str = "SRC_V4";
pub const SRC_V6: &str = "SRC_V6";
pub const DST_V4: &str = "DST_V4";
pub const DST_V6: &str = "DST_V6";
pub const SRC_V4_RANGES: &str = "SRC_V4_RANGES";
pub const DST_V4_RANGES: &str = "DST_V4_RANGES";
pub const SRC_V4_RANGE_CLASSES: &str = "SRC_V4_RANGE_CLASSES";
pub const DST_V4_RANGE_CLASSES: &str = "DST_V4_RANGE_CLASSES";
pub const PORT_CLASS: &str = "PORT_CLASS";
pub const ICMP_CLASS: &str = "ICMP_CLASS";
pub const IFACE_CLASS: &str = "IFACE_CLASS";
pub const PAIRS: &str = "PAIRS";
pub const DST_ONLY: &str = "DST_ONLY";
pub const SRC_ONLY: &str = "SRC_ONLY";
pub const L4: &str = "L4";
pub const VERDICTS: &str = "VERDICTS";
pub const RULE_CHECKS: &str = "RULE_CHECKS";
pub const PREFIXES: &str = "PREFIXES";
pub const RULE_ACTIONS: &str = "RULE_ACTIONS";
pub const RULE_COUNTERS: &str = "RULE_COUNTERS";
pub const PACKET_COUNTERS: &str = "PACKET_COUNTERS";
pub const MANAGEMENT: &str = "MANAGEMENT";
pub const CONFIG: &str = "CONFIG";
pub const EVENTS: &str = "EVENTS";
pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
pub const LOG_BUDGET: &str = "LOG_BUDGET";
pub const CONNTRACK: &str = "CONNTRACK";
pub const CONNTRACK_UNREPLIED: &str = "CONNTRACK_UNREPLIED";
pub const CONNTRACK_STATS: &str = "CONNTRACK_STATS";
pub const CONNTRACK_SCRATCH: &str = "CONNTRACK_SCRATCH";
pub const NAT_DNAT: &str = "NAT_DNAT";
pub const NAT_SNAT: &str = "NAT_SNAT";
pub const NAT_BINDINGS: &str = "NAT_BINDINGS";
pub const NAT_COUNTERS: &str = "NAT_COUNTERS";
pub const EGRESS: &str = "EGRESS";
pub const FORWARD_COUNTERS: &str = "FORWARD_COUNTERS";
