//! Rules into lookup tables: [`compiler`] builds the flat-cost tables the
//! XDP program looks up (and a userspace model of that lookup, for tests
//! and the health check); [`rulegen`] makes random rule sets and packets for
//! tests and benchmarks. A second algorithm goes beside `compiler`.

pub mod compiler;
pub mod rulegen;

pub use compiler::{compile, CompiledRuleSet, PacketView};
