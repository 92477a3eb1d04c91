//! Names of the programs in the XDP object.

/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "nva_xdp";
/// The benchmark baseline in the same object: parses, then passes.
pub const XDP_PARSE_PASS_PROGRAM: &str = "nva_parse_pass";
/// The benchmark floor on a real interface: parses, then drops IP packets.
pub const XDP_PARSE_DROP_PROGRAM: &str = "nva_parse_drop";
