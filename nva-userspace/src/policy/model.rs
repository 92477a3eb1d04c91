//! The validated policy: what the config file means, free of TOML details.
//! `config` produces it, `compiler` turns it into BPF tables.

use std::net::IpAddr;

use crate::configfile::{network, parse_prefix};

/// Default `policy.conntrack_max`.
pub const DEFAULT_CONNTRACK_MAX: u32 = 1_048_576;

/// An IP prefix, v4 or v6, with host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// Builds a prefix, clearing host bits. `len` must fit the family.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        Cidr {
            addr: network(addr, len),
            len,
        }
    }

    /// Parses a prefix as config files write it ([`parse_prefix`]).
    pub fn parse(s: &str) -> Result<Self, String> {
        parse_prefix(s).map(|(addr, len)| Cidr { addr, len })
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Cidr::new(ip, self.len).addr == self.addr
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Protocol a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Drop,
}

/// Inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange { lo: 0, hi: 65535 };
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

/// One rule, validated. Empty `src`/`dst` mean any address of both families;
/// empty `sport`/`dport` any port; empty `icmp_type` any type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub proto: Proto,
    pub src: Vec<Cidr>,
    pub dst: Vec<Cidr>,
    pub sport: Vec<PortRange>,
    pub dport: Vec<PortRange>,
    pub icmp_type: Vec<u8>,
    pub in_iface: Option<String>,
    pub log: bool,
}

impl Rule {
    /// A rule that matches everything (handy in tests).
    pub fn any(name: &str, action: Action) -> Rule {
        Rule {
            name: name.to_string(),
            action,
            proto: Proto::Any,
            src: vec![],
            dst: vec![],
            sport: vec![],
            dport: vec![],
            icmp_type: vec![],
            in_iface: None,
            log: false,
        }
    }
}

/// A management (failsafe) entry: traffic to `port` over `proto` (tcp or udp)
/// passes before any rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ManagementPort {
    pub proto: Proto,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeSetting {
    Auto,
    Driver,
    Skb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardMode {
    Kernel,
    Xdp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSettings {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeSetting,
    pub forward: ForwardMode,
    pub health_listen: std::net::SocketAddr,
    pub tcp_probe_listen: Option<std::net::SocketAddr>,
    pub bpffs: std::path::PathBuf,
    /// How often the agent checks the data path for /health.
    pub health_interval_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySettings {
    pub default: Action,
    pub stateful: bool,
    pub loose_tcp: bool,
    pub fragments_allow: bool,
    /// Emit sampled events of dropped packets.
    pub log_drops: bool,
    /// Includes the health port (added by the config loader).
    pub management: Vec<ManagementPort>,
    /// Size of the conntrack table (entries); fixed when the agent creates
    /// the table.
    pub conntrack_max: u32,
    pub timeouts: ConntrackTimeouts,
}

impl PolicySettings {
    /// `default` and every other setting at its default (stateless, no
    /// management ports): for tools and tests that build policies in code.
    pub fn with_default(default: Action) -> PolicySettings {
        PolicySettings {
            default,
            stateful: false,
            loose_tcp: false,
            fragments_allow: false,
            log_drops: false,
            management: Vec::new(),
            conntrack_max: DEFAULT_CONNTRACK_MAX,
            timeouts: ConntrackTimeouts::default(),
        }
    }
}

/// Idle timeouts of tracked flows, in seconds (`[policy.timeouts]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackTimeouts {
    /// SYN_SENT, SYN_RECV.
    pub tcp_syn: u32,
    pub tcp_established: u32,
    /// FIN_WAIT, CLOSE_WAIT: one side closed, the other may still send.
    pub tcp_half_closed: u32,
    /// CLOSING (both sides closed), CLOSED (reset).
    pub tcp_fin: u32,
    /// UDP and other protocols, no reply yet.
    pub udp: u32,
    /// UDP and other protocols, replied to.
    pub udp_replied: u32,
    /// ICMP echo.
    pub icmp: u32,
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        ConntrackTimeouts {
            tcp_syn: 60,
            tcp_established: 7200,
            tcp_half_closed: 120,
            tcp_fin: 10,
            udp: 30,
            udp_replied: 180,
            icmp: 30,
        }
    }
}

impl ConntrackTimeouts {
    /// The data path's table: seconds by `ConntrackState`.
    pub fn by_state(&self) -> [u32; nva_common::CT_STATES] {
        use nva_common::ConntrackState as S;
        let mut t = [0u32; nva_common::CT_STATES];
        for s in S::ALL {
            t[s as usize] = match s {
                S::TcpSynSent | S::TcpSynRecv => self.tcp_syn,
                S::TcpEstablished => self.tcp_established,
                S::TcpFinWait | S::TcpCloseWait => self.tcp_half_closed,
                S::TcpClosing | S::TcpClosed => self.tcp_fin,
                S::UdpUnreplied => self.udp,
                S::UdpReplied => self.udp_replied,
                S::IcmpEcho => self.icmp,
            };
        }
        t
    }
}

/// What a `[[nat]]` entry translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// A new destination, decided before the rules.
    Dnat,
    /// A new source, decided after the rules.
    Snat,
}

/// Default `to_ports` of an SNAT entry.
pub const DEFAULT_SNAT_PORTS: PortRange = PortRange {
    lo: 1024,
    hi: 65535,
};

/// One `[[nat]]` entry, validated. `matches` holds the match fields (its
/// `action` and `log` mean nothing here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    pub name: String,
    pub kind: NatKind,
    pub matches: Rule,
    /// The new destination (DNAT) or source (SNAT) address.
    pub to: IpAddr,
    /// DNAT: the new destination port (None: keep the packet's).
    pub to_port: Option<u16>,
    /// SNAT: the source ports to allocate from.
    pub to_ports: PortRange,
}

impl Nat {
    /// The address families the entry translates: those of `to` that its
    /// match admits (NAT keeps the family).
    pub fn family_v4(&self) -> bool {
        self.to.is_ipv4()
    }

    /// How many data-path matches (atoms) the entry takes: one per
    /// combination of its source and destination prefixes (of `to`'s
    /// family), port ranges and ICMP types.
    pub fn atom_count(&self) -> usize {
        let m = &self.matches;
        let v4 = self.family_v4();
        let prefixes = |l: &[Cidr]| {
            if l.is_empty() {
                1
            } else {
                l.iter().filter(|c| c.is_v4() == v4).count()
            }
        };
        let n = |len: usize| len.max(1);
        prefixes(&m.src)
            * prefixes(&m.dst)
            * n(m.sport.len())
            * n(m.dport.len())
            * n(m.icmp_type.len())
    }
}

/// `[sync]`: connection-state sync with the peer NVA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSettings {
    pub listen: std::net::SocketAddr,
    pub peer: std::net::SocketAddr,
    pub key_file: std::path::PathBuf,
    pub interval_ms: u32,
}

/// A whole validated config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub agent: AgentSettings,
    pub policy: PolicySettings,
    pub rules: Vec<Rule>,
    /// `[[nat]]` entries, in file order.
    pub nat: Vec<Nat>,
    pub sync: Option<SyncSettings>,
}
