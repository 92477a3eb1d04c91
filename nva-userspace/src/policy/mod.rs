//! The rule model ([`model`]) and the config file that describes it
//! ([`config`]: TOML, validated with `FILE:LINE:COL` errors through
//! [`crate::configfile`]).

pub mod config;
pub mod model;
