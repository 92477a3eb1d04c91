//! The settings of a loaded rule set (one array entry per slot).

use crate::conntrack::CT_STATES;

shared_type! {
    /// Global settings of the loaded rule set (array of one entry).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct DataPathConfig {
        pub generation: u64,
        /// First rule that matches every packet (all fields wildcard), or
        /// [`NO_RULE`](crate::NO_RULE). Kept here rather than in the class tables, where it would
        /// touch every class combination.
        pub catch_all_rule: u32,
        /// Per protocol slot ([`pair_proto_slot`](crate::pair_proto_slot)): the first rule that matches
        /// every packet of that protocol (any address, port, type, interface).
        pub proto_catch_all: [u32; 4],
        pub default_action: u8,
        pub fragments: u8,
        /// 0 until userspace has written a complete rule set: until then the
        /// program passes everything rather than dropping on empty tables.
        pub ready: u8,
        /// Bit p set: the L4 map holds keys of pattern p ([`l4_pattern`]); the
        /// program skips lookups of patterns no rule uses.
        pub l4_patterns: u8,
        /// Per rule group ([`RULE_GROUPS`](crate::RULE_GROUPS)), `PAIR_TABLE_*`
        /// bits: which address tables hold entries of the group (0: the group
        /// is not in use).
        pub pair_tables: [u8; crate::RULE_GROUPS],
        /// `policy.log_drops`: emit sampled events for rule and default drops.
        pub log_drops: u8,
        /// `policy.stateful`: track connections; replies of tracked flows pass.
        pub stateful: u8,
        /// `policy.loose_tcp`: a mid-stream TCP packet a rule allows starts a
        /// tracked flow (after a failover without state sync).
        pub loose_tcp: u8,
        /// Number of DNAT and SNAT atoms of this slot ([`NatMatch`](crate::NatMatch)).
        pub nat_dnat: u8,
        pub nat_snat: u8,
        /// 1 while the NAT map may hold bindings: a conntrack miss then
        /// looks for a reverse binding (a reply of a translated flow).
        pub nat_bindings: u8,
        /// `agent.forward`: [`FORWARD_KERNEL`](crate::FORWARD_KERNEL) or
        /// [`FORWARD_XDP`](crate::FORWARD_XDP).
        pub forward: u8,
        /// `PREFIX_RULES_*` bits, or 0: every rule matches one address side
        /// and nothing else, so the address tables map prefixes straight to
        /// rule ids and classification is one lookup per side in use (the
        /// short path of block lists); the other tables are empty.
        pub prefix_rules: u8,
        pub _pad: [u8; 4 - crate::RULE_GROUPS],
        /// Idle timeout in seconds by [`ConntrackState`](crate::ConntrackState) (index 0 unused).
        pub timeouts_s: [u32; CT_STATES],
        /// On the hashed short path: the prefix lengths in use per table
        /// ([`prefix_table_index`](crate::prefix_table_index)), longest first, padded
        /// with [`NO_PREFIX_LEN`](crate::NO_PREFIX_LEN).
        pub prefix_lens: [u8; 16],
        /// [`ANY_CLASS`](crate::ANY_CLASS), read by the program from here
        /// rather than as a constant: the verifier then cannot tell which
        /// L4 patterns a packet found, and explores one path instead of one
        /// per combination (which, with rule groups, exceeded its limit).
        pub no_class: u32,
        /// Counters per CPU in this slot's counter array (`RULE_COUNTERS`):
        /// the array holds each CPU's counters one after the other, so a
        /// rule's counter on CPU c is at `c * counter_stride + counter`.
        pub counter_stride: u32,
        /// `V4_RANGES_*` bits (general path): which sides' IPv4 addresses
        /// are looked up in the range arrays ([`V4_RANGE_BLOCKS`](crate::V4_RANGE_BLOCKS)) instead
        /// of the tries (large rule sets).
        pub v4_ranges: u8,
        pub _pad_end: [u8; 7],
    }
    size = 120, align = 8;
}
