pub mod agent;
pub mod compiler;
pub mod config;
pub mod datapath;
pub mod model;
pub mod pin;
pub mod rulegen;
