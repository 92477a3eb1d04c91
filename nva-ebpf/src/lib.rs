//! nva's XDP data path as a library: the program's maps, the bounded
//! parsers, the classifier, connection tracking, NAT and the verdict. The entry
//! points (`main.rs`) only call into it, as in aya-template, so that the
//! whole data path is linted by clippy like the rest of the workspace.
//!
//! Each feature keeps its maps in `maps` (names from `nva_common::map_names`)
//! and its logic in a module of its own.
#![no_std]
// Map keys are passed by reference on purpose: by value they would be copied
// onto the program's 512-byte stack (a conntrack key is 44 bytes).
#![allow(clippy::needless_borrows_for_generic_args)]

pub mod classify;
pub mod conntrack;
pub mod forward;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod verdict;
