//! Rules into lookup tables. A classifier algorithm provides three things
//! behind a small interface:
//!
//! - compile: rules and policy into its tables ([`compile`] for the flat
//!   classifier in [`compiler`]);
//! - install: write those tables into a rule-set slot through a
//!   [`TableSink`] (the data path implements it and owns the slot
//!   transaction: clear, fill, switch), and give the slot's settings;
//! - a userspace model of the program's lookup, for tests and the health
//!   check (`CompiledRuleSet::model`).
//!
//! A second algorithm goes beside `compiler`, with its own tables and maps.
//! [`rulegen`] makes random rule sets and packets for tests and benchmarks.

pub mod compiler;
pub mod rulegen;
pub mod v4_ranges;

pub use compiler::{compile, CompiledRuleSet, PacketView, PrefixClass};

/// Where a classifier writes its tables: the maps of one rule-set slot, by
/// base name (`nva_common::map_names`). Keys and values are shared types
/// (`aya::Pod`): they cross into the kernel as bytes.
pub trait TableSink {
    type Error;
    /// An IPv4 longest-prefix-match table.
    fn prefixes_v4(
        &mut self,
        table: &'static str,
        entries: &[PrefixClass<4>],
    ) -> Result<(), Self::Error>;
    /// An IPv6 longest-prefix-match table.
    fn prefixes_v6(
        &mut self,
        table: &'static str,
        entries: &[PrefixClass<16>],
    ) -> Result<(), Self::Error>;
    /// A hash table (the slot's tables are empty when the sink is given).
    fn hash<K: aya::Pod + Send, V: aya::Pod + Send>(
        &mut self,
        table: &'static str,
        entries: &[(K, V)],
    ) -> Result<(), Self::Error>;
    /// A class array (`u64` entries, see `nva_common::CLASS_LANE_BITS`)
    /// indexed from 0, all of it; the sink may skip entries it knows
    /// unchanged.
    fn array(&mut self, table: &'static str, values: &[u64]) -> Result<(), Self::Error>;
}
