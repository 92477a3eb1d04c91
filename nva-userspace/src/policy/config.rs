//! The agent's config file: TOML in, a validated [`model::Config`] out.
//!
//! Parsing happens in two steps. Serde reads the text into `Raw*` structs that
//! keep the byte span of every value we validate ([`toml::Spanned`]); a TOML
//! syntax error, an unknown key or a value of the wrong type stops there with a
//! single error. The validation step then checks the meaning of every value
//! and collects *all* problems, each pointing at `FILE:LINE:COL` of the
//! offending value.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::policy::model::{
    Action, AgentSettings, Cidr, Config, ConntrackTimeouts, ForwardMode, ManagementPort,
    PolicySettings, PortRange, Proto, Rule, XdpModeSetting, DEFAULT_CONNTRACK_MAX,
};

/// Default `agent.health_listen`.
pub const DEFAULT_HEALTH_LISTEN: &str = "0.0.0.0:9090";
/// Default `agent.bpffs`.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/nva";
/// Default `agent.health_interval_ms`: how often the data path is checked.
pub const DEFAULT_HEALTH_INTERVAL_MS: u32 = 1000;
/// Longest conntrack timeout (seconds).
pub const MAX_CONNTRACK_TIMEOUT_S: u32 = 86_400;
/// Longest rule name (bytes).
pub const MAX_RULE_NAME_LEN: usize = 63;
/// Longest interface name (bytes): IFNAMSIZ - 1.
pub const MAX_IFACE_NAME_LEN: usize = 15;

/// One problem in a config file. `line` and `col` are 1-based; both are 0
/// when the problem is not at a place in the file (e.g. it cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates the config file at `path`.
pub fn load_config(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_config(&file, &text),
        Err(e) => Err(vec![ConfigError {
            file,
            line: 0,
            col: 0,
            message: format!("cannot read: {e}"),
        }]),
    }
}

/// Validates config `text`; `file_name` is only used in error messages.
pub fn parse_config(file_name: &str, text: &str) -> Result<Config, Vec<ConfigError>> {
    parse(file_name, text, false)
}

/// Like [`parse_config`], but accepts settings that are valid yet not
/// implemented in this release (`agent.forward = "xdp"`). For tests of code that is ahead of the release.
pub fn parse_config_allow_unsupported(
    file_name: &str,
    text: &str,
) -> Result<Config, Vec<ConfigError>> {
    parse(file_name, text, true)
}

fn parse(file_name: &str, text: &str, allow_unsupported: bool) -> Result<Config, Vec<ConfigError>> {
    let mut cx = Ctx {
        file: file_name,
        text,
        allow_unsupported,
        errors: Vec::new(),
    };
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, col) = match e.span() {
                Some(span) => line_col(text, span.start),
                None => (1, 1),
            };
            return Err(vec![ConfigError {
                file: file_name.to_string(),
                line,
                col,
                // One line per error: toml's messages may span several.
                message: e
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            }]);
        }
    };
    let config = cx.config(raw);
    if cx.errors.is_empty() {
        // `config` is only `None` when an error was recorded.
        config.ok_or_else(Vec::new)
    } else {
        let mut errors = cx.errors;
        errors.sort_by_key(|e| (e.line, e.col));
        Err(errors)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

// ---------------------------------------------------------------------------
// Raw (serde) side: mirrors DESIGN.md "Config file (TOML)" key by key.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    agent: Option<Spanned<RawAgent>>,
    policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    interfaces: Option<Spanned<OneOrMany>>,
    xdp_mode: Option<Spanned<String>>,
    forward: Option<Spanned<String>>,
    health_listen: Option<Spanned<String>>,
    tcp_probe_listen: Option<Spanned<String>>,
    bpffs: Option<Spanned<String>>,
    health_interval_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Option<Spanned<String>>,
    stateful: Option<Spanned<bool>>,
    loose_tcp: Option<bool>,
    fragments: Option<Spanned<String>>,
    management: Option<Spanned<OneOrMany>>,
    log_drops: Option<bool>,
    conntrack_max: Option<Spanned<i64>>,
    timeouts: Option<RawTimeouts>,
}

/// Conntrack timeouts in seconds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp_syn: Option<Spanned<i64>>,
    tcp_established: Option<Spanned<i64>>,
    tcp_half_closed: Option<Spanned<i64>>,
    tcp_fin: Option<Spanned<i64>>,
    udp: Option<Spanned<i64>>,
    udp_replied: Option<Spanned<i64>>,
    icmp: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    proto: Option<Spanned<String>>,
    src: Option<Spanned<OneOrMany>>,
    dst: Option<Spanned<OneOrMany>>,
    sport: Option<Spanned<OneOrMany>>,
    dport: Option<Spanned<OneOrMany>>,
    icmp_type: Option<Spanned<OneOrMany>>,
    in_iface: Option<Spanned<String>>,
    log: Option<bool>,
}

/// A string or an integer; lists hold these so that the validator (not
/// serde) reports a wrong element type, next to the other errors.
enum Scalar {
    Str(String),
    Int(i64),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => write!(f, "{s:?}"),
            Scalar::Int(i) => write!(f, "{i}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Scalar::from_u64(v)
            }
        }
        d.deserialize_any(V)
    }
}

/// A list value; a single scalar is accepted as a list of one.
enum OneOrMany {
    One(Scalar),
    Many(Vec<Spanned<Scalar>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings or integers")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Scalar::Str(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Scalar::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Scalar::from_u64(v).map(OneOrMany::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Scalar>>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar {
    fn from_u64<E: de::Error>(v: u64) -> Result<Scalar, E> {
        i64::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
}

/// The elements of a list value with their spans (a single scalar gets the
/// value's span).
fn items(list: &Spanned<OneOrMany>) -> Vec<(Range<usize>, &Scalar)> {
    match list.get_ref() {
        OneOrMany::One(s) => vec![(list.span(), s)],
        OneOrMany::Many(v) => v.iter().map(|s| (s.span(), s.get_ref())).collect(),
    }
}

// ---------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    allow_unsupported: bool,
    errors: Vec<ConfigError>,
}

/// Which address families a list of prefixes admits (empty list: both).
#[derive(Clone, Copy)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    fn of(list: &[Cidr]) -> Families {
        if list.is_empty() {
            return Families { v4: true, v6: true };
        }
        Families {
            v4: list.iter().any(|c| c.is_v4()),
            v6: list.iter().any(|c| !c.is_v4()),
        }
    }
    fn describe(self) -> &'static str {
        match (self.v4, self.v6) {
            (true, false) => "IPv4 only",
            (false, true) => "IPv6 only",
            _ => "IPv4 and IPv6",
        }
    }
}

impl Ctx<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
        });
    }

    fn config(&mut self, raw: RawFile) -> Option<Config> {
        let agent = match raw.agent {
            Some(a) => self.agent(a),
            None => {
                self.err(0..0, "missing [agent] table (agent.interfaces is required)");
                None
            }
        };
        let policy = match raw.policy {
            Some(p) => self.policy(p, agent.as_ref()),
            None => {
                self.err(0..0, "missing [policy] table (policy.default is required)");
                None
            }
        };
        let ifaces: &[String] = agent.as_ref().map_or(&[], |a| &a.interfaces);
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut rules_ok = true;
        for r in raw.rules {
            match self.rule(r, ifaces, agent.is_some(), &mut names) {
                Some(rule) => rules.push(rule),
                None => rules_ok = false,
            }
        }
        match (agent, policy, rules_ok) {
            (Some(agent), Some(policy), true) => Some(Config {
                agent,
                policy,
                rules,
            }),
            _ => None,
        }
    }

    fn agent(&mut self, raw: Spanned<RawAgent>) -> Option<AgentSettings> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let n_errors = self.errors.len();

        let mut interfaces = Vec::new();
        match &raw.interfaces {
            None => self.err(
                table_span,
                "agent.interfaces is required: the interfaces to attach XDP to",
            ),
            Some(list) => {
                let items = items(list);
                if items.is_empty() {
                    self.err(
                        list.span(),
                        "agent.interfaces must name at least one interface",
                    );
                }
                let mut seen = HashSet::new();
                for (span, item) in items {
                    let Scalar::Str(name) = item else {
                        self.err(
                            span,
                            format!("expected an interface name (a string), found {item}"),
                        );
                        continue;
                    };
                    if let Err(m) = check_iface_name(name) {
                        self.err(span, m);
                    } else if !seen.insert(name.clone()) {
                        self.err(span, format!("interface {name:?} is listed twice"));
                    } else {
                        interfaces.push(name.clone());
                    }
                }
            }
        }

        let xdp_mode = match &raw.xdp_mode {
            None => XdpModeSetting::Auto,
            Some(v) => match v.get_ref().as_str() {
                "auto" => XdpModeSetting::Auto,
                "driver" => XdpModeSetting::Driver,
                "skb" => XdpModeSetting::Skb,
                other => {
                    self.err(
                        v.span(),
                        format!(
                            "agent.xdp_mode = {other:?} is not valid; expected \"auto\", \"driver\" or \"skb\""
                        ),
                    );
                    XdpModeSetting::Auto
                }
            },
        };

        let forward = match &raw.forward {
            None => ForwardMode::Kernel,
            Some(v) => match v.get_ref().as_str() {
                "kernel" => ForwardMode::Kernel,
                "xdp" => {
                    if !self.allow_unsupported {
                        self.err(v.span(), "agent.forward = \"xdp\" is not supported yet");
                    }
                    ForwardMode::Xdp
                }
                other => {
                    self.err(
                        v.span(),
                        format!(
                            "agent.forward = {other:?} is not valid; expected \"kernel\" or \"xdp\""
                        ),
                    );
                    ForwardMode::Kernel
                }
            },
        };

        let health_listen = match &raw.health_listen {
            None => DEFAULT_HEALTH_LISTEN.parse().ok(),
            Some(v) => self.socket_addr("agent.health_listen", v),
        };
        let tcp_probe_listen = match &raw.tcp_probe_listen {
            None => None,
            Some(v) => {
                let addr = self.socket_addr("agent.tcp_probe_listen", v);
                if let (Some(p), Some(h)) = (addr, health_listen) {
                    let overlap =
                        p.ip() == h.ip() || p.ip().is_unspecified() || h.ip().is_unspecified();
                    if p.port() == h.port() && overlap {
                        self.err(
                            v.span(),
                            format!(
                                "agent.tcp_probe_listen {p} would share a port with agent.health_listen {h}"
                            ),
                        );
                    }
                }
                addr
            }
        };

        let bpffs = match &raw.bpffs {
            None => PathBuf::from(DEFAULT_BPFFS),
            Some(v) => {
                let p = PathBuf::from(v.get_ref());
                if !p.is_absolute() {
                    self.err(
                        v.span(),
                        format!(
                            "agent.bpffs must be an absolute path, got {:?}",
                            v.get_ref()
                        ),
                    );
                }
                p
            }
        };

        let health_interval_ms = match &raw.health_interval_ms {
            None => DEFAULT_HEALTH_INTERVAL_MS,
            Some(v) => self
                .positive_u32("agent.health_interval_ms", v)
                .unwrap_or(DEFAULT_HEALTH_INTERVAL_MS),
        };

        if self.errors.len() != n_errors {
            return None;
        }
        Some(AgentSettings {
            interfaces,
            xdp_mode,
            forward,
            health_listen: health_listen?,
            tcp_probe_listen,
            bpffs,
            health_interval_ms,
        })
    }

    fn socket_addr(&mut self, key: &str, v: &Spanned<String>) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                self.err(v.span(), format!("{key} needs a fixed port, not 0"));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    v.span(),
                    format!(
                        "{key} = {:?} is not an address with a port (e.g. \"0.0.0.0:9090\" or \"[::]:9090\")",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn policy(
        &mut self,
        raw: Spanned<RawPolicy>,
        agent: Option<&AgentSettings>,
    ) -> Option<PolicySettings> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let n_errors = self.errors.len();

        let default = match &raw.default {
            None => {
                self.err(
                    table_span,
                    "policy.default is required (\"allow\" or \"drop\"): the verdict for traffic no rule matches",
                );
                None
            }
            Some(v) => self.action("policy.default", v),
        };

        let stateful = raw.stateful.as_ref().is_some_and(|v| *v.get_ref());
        let loose_tcp = raw.loose_tcp.unwrap_or(false);

        let fragments_allow = match &raw.fragments {
            None => false,
            Some(v) => match v.get_ref().as_str() {
                "drop" => false,
                "allow" => true,
                other => {
                    self.err(
                        v.span(),
                        format!(
                            "policy.fragments = {other:?} is not valid; expected \"drop\" or \"allow\""
                        ),
                    );
                    false
                }
            },
        };

        let mut management: Vec<ManagementPort> = Vec::new();
        if let Some(list) = &raw.management {
            for (span, item) in items(list) {
                match item {
                    Scalar::Str(s) => match parse_management(s) {
                        Ok(m) => management.push(m),
                        Err(msg) => self.err(span, msg),
                    },
                    Scalar::Int(_) => self.err(
                        span,
                        format!(
                            "management entry {item} must be a string like \"tcp/22\" or \"udp/53\""
                        ),
                    ),
                }
            }
        }
        if let Some(agent) = agent {
            management.push(ManagementPort {
                proto: Proto::Tcp,
                port: agent.health_listen.port(),
            });
            if let Some(p) = agent.tcp_probe_listen {
                management.push(ManagementPort {
                    proto: Proto::Tcp,
                    port: p.port(),
                });
            }
        }
        let mut seen = HashSet::new();
        management.retain(|m| seen.insert(*m));

        let log_drops = raw.log_drops.unwrap_or(false);
        let conntrack_max = match &raw.conntrack_max {
            None => DEFAULT_CONNTRACK_MAX,
            Some(v) => self
                .positive_u32("policy.conntrack_max", v)
                .unwrap_or(DEFAULT_CONNTRACK_MAX),
        };
        let mut timeouts = ConntrackTimeouts::default();
        if let Some(t) = &raw.timeouts {
            let all = [
                ("tcp_syn", &t.tcp_syn, &mut timeouts.tcp_syn),
                (
                    "tcp_established",
                    &t.tcp_established,
                    &mut timeouts.tcp_established,
                ),
                (
                    "tcp_half_closed",
                    &t.tcp_half_closed,
                    &mut timeouts.tcp_half_closed,
                ),
                ("tcp_fin", &t.tcp_fin, &mut timeouts.tcp_fin),
                ("udp", &t.udp, &mut timeouts.udp),
                ("udp_replied", &t.udp_replied, &mut timeouts.udp_replied),
                ("icmp", &t.icmp, &mut timeouts.icmp),
            ];
            for (key, v, out) in all {
                if let Some(v) = v {
                    // A day at most: longer idle flows are better re-opened.
                    if let Some(n) = self.positive_u32(&format!("policy.timeouts.{key}"), v) {
                        if n > MAX_CONNTRACK_TIMEOUT_S {
                            self.err(
                                v.span(),
                                format!(
                                    "policy.timeouts.{key} = {n} is out of range (1 to {MAX_CONNTRACK_TIMEOUT_S} seconds)"
                                ),
                            );
                        } else {
                            *out = n;
                        }
                    }
                }
            }
        }

        if self.errors.len() != n_errors {
            return None;
        }
        Some(PolicySettings {
            default: default?,
            stateful,
            loose_tcp,
            fragments_allow,
            log_drops,
            management,
            conntrack_max,
            timeouts,
        })
    }

    fn positive_u32(&mut self, key: &str, v: &Spanned<i64>) -> Option<u32> {
        match u32::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.err(
                    v.span(),
                    format!(
                        "{key} = {} is out of range (1 to {})",
                        v.get_ref(),
                        u32::MAX
                    ),
                );
                None
            }
        }
    }

    fn action(&mut self, key: &str, v: &Spanned<String>) -> Option<Action> {
        match v.get_ref().as_str() {
            "allow" => Some(Action::Allow),
            "drop" => Some(Action::Drop),
            other => {
                self.err(
                    v.span(),
                    format!("{key} = {other:?} is not valid; expected \"allow\" or \"drop\""),
                );
                None
            }
        }
    }

    fn rule(
        &mut self,
        raw: Spanned<RawRule>,
        ifaces: &[String],
        ifaces_known: bool,
        names: &mut HashMap<String, usize>,
    ) -> Option<Rule> {
        let rule_span = raw.span();
        let raw = raw.into_inner();
        let n_errors = self.errors.len();

        let name = match &raw.name {
            None => {
                self.err(
                    rule_span.clone(),
                    "rule without a name: every [[rules]] needs a unique name",
                );
                String::new()
            }
            Some(v) => {
                let name = v.get_ref();
                if name.is_empty() || name.len() > MAX_RULE_NAME_LEN {
                    self.err(
                        v.span(),
                        format!(
                            "rule name {name:?} must be 1 to {MAX_RULE_NAME_LEN} bytes long (it is {})",
                            name.len()
                        ),
                    );
                } else if name.chars().any(char::is_control) {
                    self.err(
                        v.span(),
                        format!("rule name {name:?} contains control characters"),
                    );
                } else if let Some(&first) = names.get(name) {
                    // Line numbers only on error: computing them for every
                    // name would be quadratic in the file size.
                    let first = line_col(self.text, first).0;
                    self.err(
                        v.span(),
                        format!("duplicate rule name {name:?} (first used on line {first})"),
                    );
                } else {
                    names.insert(name.clone(), v.span().start);
                }
                name.clone()
            }
        };
        let what = if name.is_empty() {
            "rule".to_string()
        } else {
            format!("rule {name:?}")
        };

        let action = match &raw.action {
            None => {
                self.err(
                    rule_span.clone(),
                    format!("{what} has no action (\"allow\" or \"drop\")"),
                );
                None
            }
            Some(v) => self.action("action", v),
        };

        let proto = match &raw.proto {
            None => Some(Proto::Any),
            Some(v) => match v.get_ref().as_str() {
                "any" => Some(Proto::Any),
                "tcp" => Some(Proto::Tcp),
                "udp" => Some(Proto::Udp),
                "icmp" => Some(Proto::Icmp),
                "icmpv6" => Some(Proto::Icmpv6),
                other => {
                    self.err(
                        v.span(),
                        format!(
                            "proto = {other:?} is not valid; expected \"tcp\", \"udp\", \"icmp\", \"icmpv6\" or \"any\""
                        ),
                    );
                    None
                }
            },
        };

        let src = raw.src.as_ref().and_then(|v| self.cidr_list("src", v));
        let dst = raw.dst.as_ref().and_then(|v| self.cidr_list("dst", v));
        let src = if raw.src.is_none() { Some(vec![]) } else { src };
        let dst = if raw.dst.is_none() { Some(vec![]) } else { dst };

        let mut sport = Vec::new();
        let mut dport = Vec::new();
        for (key, field, out) in [
            ("sport", &raw.sport, &mut sport),
            ("dport", &raw.dport, &mut dport),
        ] {
            let Some(v) = field else { continue };
            if let Some(p) = proto {
                if !matches!(p, Proto::Tcp | Proto::Udp) {
                    self.err(v.span(), "sport/dport need proto = \"tcp\" or \"udp\"");
                    continue;
                }
            }
            *out = self.port_list(key, v);
        }

        let mut icmp_type = Vec::new();
        if let Some(v) = &raw.icmp_type {
            if proto.is_some_and(|p| !matches!(p, Proto::Icmp | Proto::Icmpv6)) {
                self.err(v.span(), "icmp_type needs proto = \"icmp\" or \"icmpv6\"");
            } else {
                let items = items(v);
                if items.is_empty() {
                    self.err(
                        v.span(),
                        "icmp_type = [] matches nothing; leave it out to match any type",
                    );
                }
                for (span, item) in items {
                    match item {
                        Scalar::Int(n) if (0..=255).contains(n) => {
                            let t = *n as u8;
                            if !icmp_type.contains(&t) {
                                icmp_type.push(t);
                            }
                        }
                        _ => self.err(
                            span,
                            format!("icmp_type {item} is not an integer from 0 to 255"),
                        ),
                    }
                }
            }
        }

        let in_iface = match &raw.in_iface {
            None => None,
            Some(v) => {
                let i = v.get_ref();
                if ifaces_known && !ifaces.iter().any(|x| x == i) {
                    self.err(
                        v.span(),
                        format!(
                            "in_iface = {i:?} is not one of agent.interfaces ({})",
                            ifaces.join(", ")
                        ),
                    );
                }
                Some(i.clone())
            }
        };

        // Address families: src and dst must share one, and ICMP flavours
        // exist in one family only.
        if let (Some(s), Some(d)) = (&src, &dst) {
            let (fs, fd) = (Families::of(s), Families::of(d));
            let both = Families {
                v4: fs.v4 && fd.v4,
                v6: fs.v6 && fd.v6,
            };
            if !both.v4 && !both.v6 {
                let span = raw.dst.as_ref().map_or(rule_span.clone(), |v| v.span());
                self.err(
                    span,
                    format!(
                        "{what} can never match: src is {} and dst is {}",
                        fs.describe(),
                        fd.describe()
                    ),
                );
            } else if let (Some(p), Some(v)) = (proto, &raw.proto) {
                if p == Proto::Icmp && !both.v4 {
                    self.err(
                        v.span(),
                        format!("{what} can never match: proto \"icmp\" is IPv4 but its addresses are IPv6 only (use \"icmpv6\")"),
                    );
                } else if p == Proto::Icmpv6 && !both.v6 {
                    self.err(
                        v.span(),
                        format!("{what} can never match: proto \"icmpv6\" is IPv6 but its addresses are IPv4 only (use \"icmp\")"),
                    );
                }
            }
        }

        if self.errors.len() != n_errors {
            return None;
        }
        Some(Rule {
            name,
            action: action?,
            proto: proto?,
            src: src?,
            dst: dst?,
            sport,
            dport,
            icmp_type,
            in_iface,
            log: raw.log.unwrap_or(false),
        })
    }

    /// A list of prefixes; `"any"` (alone or in the list) means any address
    /// of either family, which the model spells as an empty list.
    fn cidr_list(&mut self, key: &str, v: &Spanned<OneOrMany>) -> Option<Vec<Cidr>> {
        let items = items(v);
        if items.is_empty() {
            self.err(
                v.span(),
                format!("{key} = [] matches nothing; leave it out or write \"any\" to match any address"),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut any = false;
        let mut ok = true;
        for (span, item) in items {
            let Scalar::Str(s) = item else {
                self.err(
                    span,
                    format!("{key} entry {item} is not a CIDR string like \"10.0.0.0/8\""),
                );
                ok = false;
                continue;
            };
            if s.trim() == "any" {
                any = true;
                continue;
            }
            match parse_cidr(s) {
                Ok(c) => {
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
                Err(m) => {
                    self.err(span, m);
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        Some(if any { Vec::new() } else { out })
    }

    fn port_list(&mut self, key: &str, v: &Spanned<OneOrMany>) -> Vec<PortRange> {
        let items = items(v);
        if items.is_empty() {
            self.err(
                v.span(),
                format!("{key} = [] matches nothing; leave it out to match any port"),
            );
        }
        let mut out = Vec::new();
        for (span, item) in items {
            let r = match item {
                Scalar::Int(n) => port_number(&n.to_string()).map(|p| PortRange { lo: p, hi: p }),
                Scalar::Str(s) => parse_port_range(s),
            };
            match r {
                Ok(r) => {
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
                Err(m) => self.err(span, m),
            }
        }
        out
    }
}

/// Linux accepts a name for a network device when it is 1..=15 bytes, not
/// "." or "..", without '/', ':' or whitespace.
fn check_iface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFACE_NAME_LEN {
        return Err(format!(
            "interface name {name:?} must be 1 to {MAX_IFACE_NAME_LEN} bytes long"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "{name:?} is not a valid interface name (no '/', ':' or whitespace)"
        ));
    }
    Ok(())
}

/// Parses "10.0.0.0/8", "2001:db8::/32" or a bare address (a host prefix).
pub(crate) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let t = s.trim();
    let (addr_s, len_s) = match t.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (t, None),
    };
    let addr: IpAddr = addr_s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR prefix"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_s {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                let fam = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "prefix length /{l} in {s:?} is out of range for {fam} (0 to {max})"
                ));
            }
        },
    };
    let c = Cidr::new(addr, len);
    if c.addr != addr {
        return Err(format!("{t} has host bits set; did you mean {c}?"));
    }
    Ok(c)
}

fn port_number(s: &str) -> Result<u16, String> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a port number"));
    }
    t.parse::<u16>()
        .map_err(|_| format!("port {t} is out of range (0 to 65535)"))
}

/// Parses "80" or "8000-8100" (inclusive).
fn parse_port_range(s: &str) -> Result<PortRange, String> {
    match s.split_once('-') {
        None => port_number(s).map(|p| PortRange { lo: p, hi: p }),
        Some((lo, hi)) => {
            let (lo, hi) = (port_number(lo)?, port_number(hi)?);
            if lo > hi {
                return Err(format!("port range {lo}-{hi} is out of order"));
            }
            Ok(PortRange { lo, hi })
        }
    }
}

/// Parses a management entry "tcp/22" or "udp/53".
fn parse_management(s: &str) -> Result<ManagementPort, String> {
    let bad = || format!("management entry {s:?} must look like \"tcp/22\" or \"udp/53\"");
    let (proto, port) = s.trim().split_once('/').ok_or_else(bad)?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(bad()),
    };
    if port.trim().is_empty() || !port.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let port = port_number(port)?;
    if port == 0 {
        return Err(format!(
            "management entry {s:?}: port 0 is not a service port"
        ));
    }
    Ok(ManagementPort { proto, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const DESIGN_EXAMPLE: &str = r#"[agent]
interfaces = ["eth0", "eth1"]     # XDP is attached to each
xdp_mode = "auto"                 # auto | driver | skb
forward = "kernel"                # kernel | xdp
health_listen = "0.0.0.0:9090"    # HTTP: /health /status /metrics (read-only)
bpffs = "/sys/fs/bpf/nva"          # per agent: bpffs is shared by all network namespaces

[policy]
default = "drop"                  # verdict for a new flow that no rule matches
stateful = true                   # replies of allowed flows pass
loose_tcp = false                 # true: pick up mid-stream TCP (after a failover without state sync)
fragments = "drop"                # drop | allow (non-first fragments)
management = ["tcp/22"]           # always allowed; the health port is added

[[rules]]
name = "web-in"                   # unique; shown in counters and metrics
action = "allow"                  # allow | drop
proto = "tcp"                     # tcp | udp | icmp | icmpv6 | any   (default any)
src = ["0.0.0.0/0", "::/0"]       # CIDRs, v4 and/or v6                 (default any)
dst = ["10.1.0.0/24"]
sport = ["1024-65535"]            # ports and ranges                    (default any)
dport = ["80", "443", "8000-8100"]
icmp_type = [8]                   # only with proto icmp/icmpv6
in_iface = "eth0"                 # optional: only packets arriving here
log = false                       # emit sampled events for matches
"#;

    const HEAD: &str = "[agent]\ninterfaces = [\"eth0\"]\n\n[policy]\ndefault = \"drop\"\n";

    fn cidr(s: &str) -> Cidr {
        parse_cidr(s).unwrap()
    }

    fn errs(text: &str) -> Vec<String> {
        parse_config("f.toml", text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// The single error of `HEAD` + `rest`.
    fn one_err(rest: &str) -> String {
        let e = errs(&format!("{HEAD}{rest}"));
        assert_eq!(e.len(), 1, "{e:#?}");
        e[0].clone()
    }

    fn ok(text: &str) -> Config {
        match parse_config("f.toml", text) {
            Ok(c) => c,
            Err(e) => panic!("{e:#?}"),
        }
    }

    #[test]
    fn design_example_has_icmp_type_with_tcp() {
        // The DESIGN.md example lists every key, including icmp_type next to
        // proto = "tcp", which is contradictory; it is reported.
        let e: Vec<String> = parse_config_allow_unsupported("f.toml", DESIGN_EXAMPLE)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            e,
            ["f.toml:23:13: icmp_type needs proto = \"icmp\" or \"icmpv6\""]
        );
    }

    #[test]
    fn design_example_parses() {
        let text = DESIGN_EXAMPLE.replace("icmp_type = [8]", "");
        let c = parse_config_allow_unsupported("f.toml", &text).unwrap();
        let expected = Config {
            agent: AgentSettings {
                interfaces: vec!["eth0".into(), "eth1".into()],
                xdp_mode: XdpModeSetting::Auto,
                forward: ForwardMode::Kernel,
                health_listen: "0.0.0.0:9090".parse().unwrap(),
                tcp_probe_listen: None,
                health_interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
                bpffs: PathBuf::from("/sys/fs/bpf/nva"),
            },
            policy: PolicySettings {
                default: Action::Drop,
                stateful: true,
                loose_tcp: false,
                fragments_allow: false,
                log_drops: false,
                management: vec![
                    ManagementPort {
                        proto: Proto::Tcp,
                        port: 22,
                    },
                    ManagementPort {
                        proto: Proto::Tcp,
                        port: 9090,
                    },
                ],
                conntrack_max: DEFAULT_CONNTRACK_MAX,
                timeouts: ConntrackTimeouts::default(),
            },
            rules: vec![Rule {
                name: "web-in".into(),
                action: Action::Allow,
                proto: Proto::Tcp,
                src: vec![
                    Cidr {
                        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        len: 0,
                    },
                    Cidr {
                        addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                        len: 0,
                    },
                ],
                dst: vec![Cidr {
                    addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)),
                    len: 24,
                }],
                sport: vec![PortRange {
                    lo: 1024,
                    hi: 65535,
                }],
                dport: vec![
                    PortRange { lo: 80, hi: 80 },
                    PortRange { lo: 443, hi: 443 },
                    PortRange { lo: 8000, hi: 8100 },
                ],
                icmp_type: vec![],
                in_iface: Some("eth0".into()),
                log: false,
            }],
        };
        assert_eq!(c, expected);

        // Nothing in it needs the escape hatch (which is for forward = "xdp").
        assert_eq!(parse_config("f.toml", &text).unwrap(), expected);
    }

    #[test]
    fn icmp_rule() {
        let c = ok(&format!(
            "{HEAD}[[rules]]\nname = \"ping\"\naction = \"allow\"\nproto = \"icmp\"\nicmp_type = [8, 0, 8]\n\
             [[rules]]\nname = \"ping6\"\naction = \"allow\"\nproto = \"icmpv6\"\nicmp_type = [128]\nsrc = \"any\"\n"
        ));
        assert_eq!(c.rules[0].icmp_type, vec![8, 0]);
        assert_eq!(c.rules[1].icmp_type, vec![128]);
        assert!(c.rules[1].src.is_empty());
    }

    #[test]
    fn defaults_and_health_port() {
        let c = ok(HEAD);
        assert_eq!(c.agent.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(c.agent.forward, ForwardMode::Kernel);
        assert_eq!(c.agent.health_listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(c.agent.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert!(!c.policy.stateful && !c.policy.loose_tcp && !c.policy.fragments_allow);
        assert_eq!(
            c.policy.management,
            vec![ManagementPort {
                proto: Proto::Tcp,
                port: 9090
            }]
        );
        assert!(c.rules.is_empty());
    }

    #[test]
    fn management_dedup_and_probe_port() {
        let c = ok("[agent]\ninterfaces = [\"eth0\"]\nhealth_listen = \"[::]:8080\"\n\
             tcp_probe_listen = \"10.0.0.1:9091\"\nxdp_mode = \"skb\"\n\
             [policy]\ndefault = \"allow\"\nmanagement = [\"tcp/8080\", \"udp/53\", \"tcp/22\", \"udp/53\"]\n\
             fragments = \"allow\"\nlog_drops = true\nconntrack_max = 1000\n\
             [policy.timeouts]\ntcp_established = 3600\nudp = 30\n");
        assert_eq!(c.agent.xdp_mode, XdpModeSetting::Skb);
        assert_eq!(
            c.agent.tcp_probe_listen,
            Some("10.0.0.1:9091".parse().unwrap())
        );
        assert!(c.policy.fragments_allow);
        assert_eq!(c.policy.default, Action::Allow);
        assert_eq!(c.policy.conntrack_max, 1000);
        assert_eq!(
            c.policy.timeouts,
            ConntrackTimeouts {
                tcp_established: 3600,
                ..ConntrackTimeouts::default()
            }
        );
        let m = |proto, port| ManagementPort { proto, port };
        assert_eq!(
            c.policy.management,
            vec![
                m(Proto::Tcp, 8080),
                m(Proto::Udp, 53),
                m(Proto::Tcp, 22),
                m(Proto::Tcp, 9091)
            ]
        );
    }

    #[test]
    fn addresses() {
        let c = ok(&format!(
            "{HEAD}[[rules]]\nname = \"a\"\naction = \"drop\"\nsrc = [\"10.0.0.1\", \"2001:db8::1\", \"10.0.0.1/32\"]\ndst = [\"any\"]\n"
        ));
        assert_eq!(
            c.rules[0].src,
            vec![cidr("10.0.0.1/32"), cidr("2001:db8::1/128")]
        );
        assert!(c.rules[0].dst.is_empty());
        assert_eq!(c.rules[0].proto, Proto::Any);
    }

    #[test]
    fn ports_as_integers_too() {
        let c = ok(&format!(
            "{HEAD}[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"udp\"\ndport = [53, \"67-68\"]\n"
        ));
        assert_eq!(
            c.rules[0].dport,
            vec![PortRange { lo: 53, hi: 53 }, PortRange { lo: 67, hi: 68 }]
        );
    }

    #[test]
    fn port_errors() {
        let rule = "[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"tcp\"\n";
        assert_eq!(
            one_err(&format!("{rule}dport = [\"80\", \"8100-8000\"]\n")),
            "f.toml:10:16: port range 8100-8000 is out of order"
        );
        assert_eq!(
            one_err(&format!("{rule}sport = [\"70000\"]\n")),
            "f.toml:10:10: port 70000 is out of range (0 to 65535)"
        );
        assert_eq!(
            one_err(&format!("{rule}sport = [70000]\n")),
            "f.toml:10:10: port 70000 is out of range (0 to 65535)"
        );
        assert_eq!(
            one_err(&format!("{rule}dport = [\"http\"]\n")),
            "f.toml:10:10: \"http\" is not a port number"
        );
        assert_eq!(
            one_err("[[rules]]\nname = \"a\"\naction = \"allow\"\ndport = [\"80\"]\n"),
            "f.toml:9:9: sport/dport need proto = \"tcp\" or \"udp\""
        );
        assert!(one_err(
            "[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"icmp\"\nsport = [\"80\"]\n"
        )
        .ends_with("sport/dport need proto = \"tcp\" or \"udp\""));
    }

    #[test]
    fn icmp_type_errors() {
        assert_eq!(
            one_err(
                "[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"tcp\"\nicmp_type = [8]\n"
            ),
            "f.toml:10:13: icmp_type needs proto = \"icmp\" or \"icmpv6\""
        );
        assert!(
            one_err("[[rules]]\nname = \"a\"\naction = \"allow\"\nicmp_type = [8]\n")
                .ends_with("icmp_type needs proto = \"icmp\" or \"icmpv6\"")
        );
        assert_eq!(
            one_err("[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"icmp\"\nicmp_type = [8, 256]\n"),
            "f.toml:10:17: icmp_type 256 is not an integer from 0 to 255"
        );
    }

    #[test]
    fn cidr_errors() {
        let rule = "[[rules]]\nname = \"a\"\naction = \"allow\"\n";
        assert_eq!(
            one_err(&format!("{rule}src = [\"10.0.0.1/24\"]\n")),
            "f.toml:9:8: 10.0.0.1/24 has host bits set; did you mean 10.0.0.0/24?"
        );
        assert_eq!(
            one_err(&format!("{rule}dst = [\"10.0.0.0/33\"]\n")),
            "f.toml:9:8: prefix length /33 in \"10.0.0.0/33\" is out of range for IPv4 (0 to 32)"
        );
        assert!(one_err(&format!("{rule}dst = [\"::/129\"]\n")).contains("out of range for IPv6"));
        assert!(
            one_err(&format!("{rule}dst = [\"10.0.0.300\"]\n")).contains("is not an IP address")
        );
        assert!(one_err(&format!("{rule}dst = []\n")).contains("matches nothing"));
        assert_eq!(
            one_err(&format!(
                "{rule}src = [\"10.0.0.0/8\"]\ndst = [\"2001:db8::/32\"]\n"
            )),
            "f.toml:10:7: rule \"a\" can never match: src is IPv4 only and dst is IPv6 only"
        );
        assert!(one_err(&format!(
            "{rule}proto = \"icmp\"\nsrc = [\"2001:db8::/32\"]\n"
        ))
        .contains("can never match"));
        assert!(
            one_err(&format!("{rule}proto = \"icmpv6\"\ndst = \"10.0.0.0/8\"\n"))
                .contains("can never match")
        );
        // Mixed families on one side are fine when the other side has one.
        ok(&format!(
            "{HEAD}{rule}src = [\"10.0.0.0/8\", \"2001:db8::/32\"]\ndst = [\"2001:db8::/32\"]\n"
        ));
    }

    #[test]
    fn rule_name_errors() {
        let dup = "[[rules]]\nname = \"a\"\naction = \"allow\"\n[[rules]]\nname = \"a\"\naction = \"drop\"\n";
        assert_eq!(
            one_err(dup),
            "f.toml:10:8: duplicate rule name \"a\" (first used on line 7)"
        );
        let long = "x".repeat(64);
        assert!(one_err(&format!(
            "[[rules]]\nname = \"{long}\"\naction = \"allow\"\n"
        ))
        .contains("must be 1 to 63 bytes long"));
        ok(&format!(
            "{HEAD}[[rules]]\nname = \"{}\"\naction = \"allow\"\n",
            "x".repeat(63)
        ));
        assert!(one_err("[[rules]]\naction = \"allow\"\n").contains("needs a unique name"));
        assert!(one_err("[[rules]]\nname = \"a\"\n").contains("has no action"));
        assert_eq!(
            one_err("[[rules]]\nname = \"a\"\naction = \"reject\"\n"),
            "f.toml:8:10: action = \"reject\" is not valid; expected \"allow\" or \"drop\""
        );
    }

    #[test]
    fn in_iface_must_be_an_agent_interface() {
        assert_eq!(
            one_err("[[rules]]\nname = \"a\"\naction = \"allow\"\nin_iface = \"eth9\"\n"),
            "f.toml:9:12: in_iface = \"eth9\" is not one of agent.interfaces (eth0)"
        );
    }

    #[test]
    fn agent_errors() {
        let pol = "[policy]\ndefault = \"drop\"\n";
        let e = errs(&format!(
            "[agent]\ninterfaces = [\"eth0\", \"a/b\", \"this-name-is-too-long\", \"eth0\", \"\"]\n{pol}"
        ));
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e[0].starts_with("f.toml:2:23: ") && e[0].contains("not a valid interface name"));
        assert!(e[1].starts_with("f.toml:2:30: ") && e[1].contains("1 to 15 bytes"));
        assert_eq!(e[2], "f.toml:2:55: interface \"eth0\" is listed twice");
        assert!(e[3].starts_with("f.toml:2:63: "));

        assert!(errs(&format!("[agent]\ninterfaces = []\n{pol}"))[0]
            .starts_with("f.toml:2:14: agent.interfaces must name at least one interface"));
        assert!(errs(&format!("[agent]\nxdp_mode = \"auto\"\n{pol}"))[0]
            .contains("agent.interfaces is required"));
        assert_eq!(
            errs(&format!("[agent]\ninterfaces = [\"eth0\"]\nxdp_mode = \"native\"\n{pol}")),
            ["f.toml:3:12: agent.xdp_mode = \"native\" is not valid; expected \"auto\", \"driver\" or \"skb\""]
        );
        assert_eq!(
            errs(&format!(
                "[agent]\ninterfaces = [\"eth0\"]\nforward = \"xdp\"\n{pol}"
            )),
            ["f.toml:3:11: agent.forward = \"xdp\" is not supported yet"]
        );
        let c = parse_config_allow_unsupported(
            "f.toml",
            &format!("[agent]\ninterfaces = [\"eth0\"]\nforward = \"xdp\"\n{pol}"),
        )
        .unwrap();
        assert_eq!(c.agent.forward, ForwardMode::Xdp);
        assert_eq!(
            errs(&format!(
                "[agent]\ninterfaces = [\"eth0\"]\nbpffs = \"nva\"\n{pol}"
            )),
            ["f.toml:3:9: agent.bpffs must be an absolute path, got \"nva\""]
        );
        assert!(errs(&format!(
            "[agent]\ninterfaces = [\"eth0\"]\nhealth_listen = \"9090\"\n{pol}"
        ))[0]
            .starts_with(
                "f.toml:3:17: agent.health_listen = \"9090\" is not an address with a port"
            ));
        assert!(errs(&format!(
            "[agent]\ninterfaces = [\"eth0\"]\ntcp_probe_listen = \"127.0.0.1:9090\"\n{pol}"
        ))[0]
            .contains("would share a port"));
    }

    #[test]
    fn policy_errors() {
        let agent = "[agent]\ninterfaces = [\"eth0\"]\n";
        assert_eq!(
            errs(&format!("{agent}[policy]\nstateful = false\n")),
            ["f.toml:3:1: policy.default is required (\"allow\" or \"drop\"): the verdict for traffic no rule matches"]
        );
        assert!(errs(agent)[0].contains("missing [policy] table"));
        assert_eq!(
            errs(&format!("{agent}[policy]\ndefault = \"drop\"\nmanagement = [\"ssh\", \"tcp/70000\", \"udp/0\"]\nfragments = \"reassemble\"\n")),
            [
                "f.toml:5:15: management entry \"ssh\" must look like \"tcp/22\" or \"udp/53\"",
                "f.toml:5:22: port 70000 is out of range (0 to 65535)",
                "f.toml:5:35: management entry \"udp/0\": port 0 is not a service port",
                "f.toml:6:13: policy.fragments = \"reassemble\" is not valid; expected \"drop\" or \"allow\"",
            ]
        );
        assert_eq!(
            errs(&format!("{agent}[policy]\ndefault = \"drop\"\nconntrack_max = 0\n[policy.timeouts]\ntcp_syn = -1\n")),
            [
                "f.toml:5:17: policy.conntrack_max = 0 is out of range (1 to 4294967295)",
                "f.toml:7:11: policy.timeouts.tcp_syn = -1 is out of range (1 to 4294967295)",
            ]
        );
        assert_eq!(
            errs(&format!(
                "{agent}[policy]\ndefault = \"drop\"\n[policy.timeouts]\nudp = 86401\n"
            )),
            ["f.toml:6:7: policy.timeouts.udp = 86401 is out of range (1 to 86400 seconds)"]
        );
    }

    #[test]
    fn serde_errors_have_positions() {
        // Unknown key: points at the key.
        let e = errs(&format!("{HEAD}colour = \"blue\"\n"));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("f.toml:6:1: unknown field `colour`"),
            "{e:?}"
        );
        // Wrong type.
        let e = errs(&format!("{HEAD}stateful = \"yes\"\n"));
        assert!(e[0].starts_with("f.toml:6:12: "), "{e:?}");
        // Syntax error.
        let e = errs("[agent\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("f.toml:1:7: invalid table header"),
            "{e:?}"
        );
        assert!(!e[0].contains('\n'), "{e:?}");
        // Duplicate key.
        let e = errs(&format!("{HEAD}default = \"allow\"\n"));
        assert!(
            e[0].starts_with("f.toml:6:1: duplicate key `default`"),
            "{e:?}"
        );
        // Unknown key in a rule.
        let e = errs(&format!(
            "{HEAD}[[rules]]\nname = \"a\"\naction = \"allow\"\nport = [\"80\"]\n"
        ));
        assert!(
            e[0].starts_with("f.toml:9:1: unknown field `port`"),
            "{e:?}"
        );
    }

    #[test]
    fn all_semantic_errors_are_collected_in_order() {
        let text = "[agent]\ninterfaces = [\"eth0\"]\nforward = \"xdp\"\n\
                    [policy]\ndefault = \"drop\"\nstateful = true\n\
                    [[rules]]\nname = \"a\"\naction = \"allow\"\ndport = [\"80\"]\n\
                    [[rules]]\nname = \"b\"\naction = \"allow\"\nsrc = [\"10.0.0.1/8\"]\n";
        let e = errs(text);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("f.toml:3:11: agent.forward"));
        assert!(e[1].starts_with("f.toml:10:9: sport/dport"));
        assert!(e[2].starts_with("f.toml:14:8: 10.0.0.1/8 has host bits set"));
    }

    #[test]
    fn io_error_display() {
        let e = load_config(Path::new("/nonexistent/nva.toml")).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].col), (0, 0));
        assert!(e[0]
            .to_string()
            .starts_with("/nonexistent/nva.toml: cannot read: "));
    }

    #[test]
    fn load_config_reads_file() {
        let path =
            std::env::temp_dir().join(format!("nva-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, HEAD).unwrap();
        let c = load_config(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.unwrap().agent.interfaces, vec!["eth0".to_string()]);
    }

    #[test]
    fn line_col_counts_characters() {
        let t = "a\nüx = 1\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 2), (2, 1));
        assert_eq!(line_col(t, 4), (2, 2)); // after the 2-byte 'ü'
        assert_eq!(line_col(t, 100), (3, 1));
    }
}
