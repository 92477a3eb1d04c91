//! Types shared by the XDP program (`nva-ebpf`) and userspace (`nva-userspace`).
//!
//! Every BPF map key and value is defined here exactly once, by feature, with
//! [`shared_type!`](layout): `#[repr(C)]`, explicit padding, size and
//! alignment assertions and the `aya::Pod` impl beside the type. The `user`
//! feature adds `aya::Pod` so userspace can read and write them.
//!
//! - [`wire`]: protocol numbers and address forms;
//! - [`classifier`]: the rule tables (a second classifier's tables go beside it);
//! - [`settings`]: the per-slot settings of a loaded rule set;
//! - [`conntrack`]: the flow table;
//! - [`events`]: sampled packet events and the packet counters' reasons;
//! - [`nat`]: NAT entries, the bindings of translated flows, NAT counters;
//! - [`forward`]: the forwarding mode and the forwarding counters' paths;
//! - [`map_names`], [`programs`]: names both sides look things up by;
//! - [`layout`]: how shared types are declared, and the pinned layout version.
//!
#![cfg_attr(not(feature = "user"), no_std)]

#[macro_use]
pub mod layout;

pub mod classifier;
pub mod conntrack;
pub mod events;
pub mod forward;
pub mod map_names;
pub mod nat;
pub mod programs;
pub mod settings;
pub mod wire;

pub use classifier::*;
pub use conntrack::*;
pub use events::*;
pub use forward::*;
pub use layout::LAYOUT_VERSION;
pub use nat::*;
pub use programs::*;
pub use settings::*;
pub use wire::*;
