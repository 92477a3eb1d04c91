//! Forwarding: where an allowed packet goes (`agent.forward`), and why a
//! packet the program could not forward itself went to the kernel.

/// `agent.forward = "kernel"`: allowed packets are passed (`XDP_PASS`) and
/// the kernel routes them.
pub const FORWARD_KERNEL: u8 = 0;
/// `agent.forward = "xdp"`: the program routes allowed packets itself
/// (`bpf_fib_lookup`, redirect through [`EGRESS`](crate::map_names::EGRESS)).
pub const FORWARD_XDP: u8 = 1;

/// Interfaces a redirect may leave by (a DEVMAP_HASH by ifindex): the
/// agent's configured interfaces, nothing else.
pub const MAX_EGRESS: u32 = 64;

/// What became of an allowed packet of a flow through the NVA: index of
/// the forwarding counters (per CPU). Append only: the numbers are the
/// pinned counters' indexes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// Routed and redirected by the program.
    Xdp = 0,
    /// `forward = "kernel"`: passed for the kernel to route.
    KernelConfigured = 1,
    /// Handed to the kernel: a VLAN-tagged frame (the program does not
    /// rewrite tags on the way out).
    KernelVlan = 2,
    /// Handed to the kernel: TTL or hop limit would expire (the kernel
    /// answers with ICMP time exceeded).
    KernelTtl = 3,
    /// Handed to the kernel: addressed to the NVA itself (or not a unicast
    /// route: broadcast, multicast, local).
    KernelLocal = 4,
    /// Handed to the kernel: the next hop's neighbour is not resolved (the
    /// kernel resolves it; the flow's later packets take the fast path).
    KernelNoNeighbour = 5,
    /// Handed to the kernel: larger than the egress MTU (the kernel
    /// fragments or answers with fragmentation needed / packet too big).
    KernelMtu = 6,
    /// Handed to the kernel: the route leaves by an interface the agent
    /// does not manage.
    KernelEgressNotConfigured = 7,
    /// Handed to the kernel: any other route lookup result (blackhole,
    /// unreachable, prohibit, forwarding disabled, ...): the kernel drops
    /// or answers as its routing says.
    KernelNoRoute = 8,
    /// Handed to the kernel: a later fragment (no ports: it follows its
    /// first fragment through the kernel).
    KernelFragment = 9,
}

pub const FORWARD_PATHS: u32 = 10;

impl ForwardPath {
    pub const ALL: [ForwardPath; FORWARD_PATHS as usize] = [
        Self::Xdp,
        Self::KernelConfigured,
        Self::KernelVlan,
        Self::KernelTtl,
        Self::KernelLocal,
        Self::KernelNoNeighbour,
        Self::KernelMtu,
        Self::KernelEgressNotConfigured,
        Self::KernelNoRoute,
        Self::KernelFragment,
    ];

    /// The `path` label of `nva_forwarded_total`.
    pub const fn path(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            _ => "kernel",
        }
    }

    /// The `reason` label of `nva_forwarded_total`.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Xdp => "routed",
            Self::KernelConfigured => "configured",
            Self::KernelVlan => "vlan",
            Self::KernelTtl => "ttl_expiring",
            Self::KernelLocal => "local",
            Self::KernelNoNeighbour => "no_neighbour",
            Self::KernelMtu => "over_mtu",
            Self::KernelEgressNotConfigured => "egress_not_configured",
            Self::KernelNoRoute => "no_route",
            Self::KernelFragment => "fragment",
        }
    }
}
