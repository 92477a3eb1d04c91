pub mod agent;
pub mod batch;
pub mod compiler;
pub mod config;
pub mod datapath;
pub mod model;
pub mod pin;
pub mod rulegen;
