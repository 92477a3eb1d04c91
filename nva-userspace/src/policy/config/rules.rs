//! The `[[rules]]` tables: names, actions, protocols, addresses, ports,
//! ICMP types, and the checks that a rule can match at all.

use serde::Deserialize;
use toml::Spanned;

use super::Ctx;
use crate::configfile::{items, Names, OneOrMany, Scalar};
use crate::policy::model::{Cidr, PortRange, Proto, Rule};

/// Longest rule name (bytes).
pub const MAX_RULE_NAME_LEN: usize = 63;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Option<Spanned<String>>,
    pub(super) action: Option<Spanned<String>>,
    pub(super) proto: Option<Spanned<String>>,
    pub(super) src: Option<Spanned<OneOrMany>>,
    pub(super) dst: Option<Spanned<OneOrMany>>,
    pub(super) sport: Option<Spanned<OneOrMany>>,
    pub(super) dport: Option<Spanned<OneOrMany>>,
    pub(super) icmp_type: Option<Spanned<OneOrMany>>,
    pub(super) in_iface: Option<Spanned<String>>,
    pub(super) log: Option<bool>,
}

/// The table a set of match fields comes from: `[[rules]]` (with an
/// action) or `[[nat]]` (the match of a translation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum MatchTable {
    Rules,
    Nat,
}

impl MatchTable {
    fn noun(self) -> &'static str {
        match self {
            MatchTable::Rules => "rule",
            MatchTable::Nat => "nat entry",
        }
    }
    fn table(self) -> &'static str {
        match self {
            MatchTable::Rules => "[[rules]]",
            MatchTable::Nat => "[[nat]]",
        }
    }
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
    pub(super) fn rule(
        &mut self,
        raw: Spanned<RawRule>,
        ifaces: &[String],
        ifaces_known: bool,
        names: &mut Names,
        table: MatchTable,
    ) -> Option<Rule> {
        let noun = table.noun();
        let rule_span = raw.span();
        let raw = raw.into_inner();
        let mark = self.c.mark();

        let name = match &raw.name {
            None => {
                self.c.err(
                    rule_span.clone(),
                    format!(
                        "{noun} without a name: every {} needs a unique name",
                        table.table()
                    ),
                );
                String::new()
            }
            Some(v) => {
                let name = v.get_ref();
                if name.is_empty() || name.len() > MAX_RULE_NAME_LEN {
                    self.c.err(
                        v.span(),
                        format!(
                            "{noun} name {name:?} must be 1 to {MAX_RULE_NAME_LEN} bytes long (it is {})",
                            name.len()
                        ),
                    );
                } else if name.chars().any(char::is_control) {
                    self.c.err(
                        v.span(),
                        format!("{noun} name {name:?} contains control characters"),
                    );
                } else if let Some(first) = names.first_use(name, v.span().start) {
                    let first = self.c.line_of(first);
                    self.c.err(
                        v.span(),
                        format!("duplicate {noun} name {name:?} (first used on line {first})"),
                    );
                }
                name.clone()
            }
        };
        let what = if name.is_empty() {
            noun.to_string()
        } else {
            format!("{noun} {name:?}")
        };

        let action = if table == MatchTable::Nat {
            Some(crate::policy::model::Action::Allow)
        } else {
            self.c
                .required(
                    &raw.action,
                    rule_span.clone(),
                    format!("{what} has no action (\"allow\" or \"drop\")"),
                )
                .and_then(|v| self.action("action", v))
        };

        let proto = match &raw.proto {
            None => Some(Proto::Any),
            Some(v) => self.c.one_of(
                "proto",
                v,
                &[
                    ("tcp", Proto::Tcp),
                    ("udp", Proto::Udp),
                    ("icmp", Proto::Icmp),
                    ("icmpv6", Proto::Icmpv6),
                    ("any", Proto::Any),
                ],
            ),
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
                    self.c
                        .err(v.span(), "sport/dport need proto = \"tcp\" or \"udp\"");
                    continue;
                }
            }
            *out = self.port_list(key, v);
        }

        let mut icmp_type = Vec::new();
        if let Some(v) = &raw.icmp_type {
            if proto.is_some_and(|p| !matches!(p, Proto::Icmp | Proto::Icmpv6)) {
                self.c
                    .err(v.span(), "icmp_type needs proto = \"icmp\" or \"icmpv6\"");
            } else {
                let items = items(v);
                if items.is_empty() {
                    self.c.err(
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
                        _ => self.c.err(
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
                    self.c.err(
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
                self.c.err(
                    span,
                    format!(
                        "{what} can never match: src is {} and dst is {}",
                        fs.describe(),
                        fd.describe()
                    ),
                );
            } else if let (Some(p), Some(v)) = (proto, &raw.proto) {
                if p == Proto::Icmp && !both.v4 {
                    self.c.err(
                        v.span(),
                        format!("{what} can never match: proto \"icmp\" is IPv4 but its addresses are IPv6 only (use \"icmpv6\")"),
                    );
                } else if p == Proto::Icmpv6 && !both.v6 {
                    self.c.err(
                        v.span(),
                        format!("{what} can never match: proto \"icmpv6\" is IPv6 but its addresses are IPv4 only (use \"icmp\")"),
                    );
                }
            }
        }

        if self.c.failed_since(mark) {
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
            self.c.err(
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
                self.c.err(
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
            match self.c.check(span, Cidr::parse(s)) {
                Some(c) if !out.contains(&c) => out.push(c),
                Some(_) => {}
                None => ok = false,
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
            self.c.err(
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
            match self.c.check(span, r) {
                Some(r) if !out.contains(&r) => out.push(r),
                _ => {}
            }
        }
        out
    }
}

pub(super) fn port_number(s: &str) -> Result<u16, String> {
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
