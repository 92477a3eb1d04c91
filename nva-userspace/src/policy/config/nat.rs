//! The `[[nat]]` tables: a name, a kind, the match fields of `[[rules]]`
//! (validated by the same code), the translation target and, for SNAT, the
//! source ports to allocate from.

use std::net::IpAddr;

use serde::Deserialize;
use toml::Spanned;

use super::rules::{port_number, MatchTable, RawRule};
use super::Ctx;
use crate::configfile::{Names, OneOrMany};
use crate::policy::model::{
    Nat, NatKind, PolicySettings, PortRange, Proto, Rule, DEFAULT_SNAT_PORTS,
};

use nva_common::MAX_NAT_ATOMS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNat {
    name: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    proto: Option<Spanned<String>>,
    src: Option<Spanned<OneOrMany>>,
    dst: Option<Spanned<OneOrMany>>,
    sport: Option<Spanned<OneOrMany>>,
    dport: Option<Spanned<OneOrMany>>,
    icmp_type: Option<Spanned<OneOrMany>>,
    in_iface: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    to_ports: Option<Spanned<String>>,
}

/// Parses `to`: "ADDR", "ADDR:PORT" or "[V6ADDR]:PORT".
pub(crate) fn parse_target(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let t = s.trim();
    if let Ok(addr) = t.parse::<IpAddr>() {
        return Ok((addr, None));
    }
    if let Ok(sa) = t.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!(
                "to = {s:?}: port 0 is not a port packets can be sent to"
            ));
        }
        return Ok((sa.ip(), Some(sa.port())));
    }
    Err(format!(
        "to = {s:?} is not \"ADDR\", \"ADDR:PORT\" or \"[V6ADDR]:PORT\""
    ))
}

/// Parses `to_ports`: "PORT" or "LO-HI" (inclusive), from 1.
fn parse_to_ports(s: &str) -> Result<PortRange, String> {
    let (lo, hi) = match s.split_once('-') {
        None => {
            let p = port_number(s)?;
            (p, p)
        }
        Some((lo, hi)) => (port_number(lo)?, port_number(hi)?),
    };
    if lo > hi {
        return Err(format!("to_ports = {s:?} is an empty range ({lo} > {hi})"));
    }
    if lo == 0 {
        return Err(format!("to_ports = {s:?} includes port 0"));
    }
    Ok(PortRange { lo, hi })
}

/// The families an entry's match admits (empty prefix lists: both).
fn families(rule: &Rule) -> (bool, bool) {
    let of = |l: &[crate::policy::model::Cidr]| {
        if l.is_empty() {
            (true, true)
        } else {
            (l.iter().any(|c| c.is_v4()), l.iter().any(|c| !c.is_v4()))
        }
    };
    let (s4, s6) = of(&rule.src);
    let (d4, d6) = of(&rule.dst);
    let (mut v4, mut v6) = (s4 && d4, s6 && d6);
    match rule.proto {
        Proto::Icmp => v6 = false,
        Proto::Icmpv6 => v4 = false,
        _ => {}
    }
    (v4, v6)
}

impl Ctx<'_> {
    /// All `[[nat]]` entries; None when any is refused.
    pub(super) fn nat_entries(
        &mut self,
        raw: Vec<Spanned<RawNat>>,
        ifaces: &[String],
        ifaces_known: bool,
        policy: Option<&PolicySettings>,
    ) -> Option<Vec<Nat>> {
        let mut names = Names::default();
        let mut out = Vec::with_capacity(raw.len());
        let mut ok = true;
        let mut atoms = [0usize; 2];
        for entry in raw {
            let span = entry.span();
            if let Some(p) = policy {
                if !p.stateful {
                    self.c.err(
                        span.clone(),
                        "[[nat]] needs policy.stateful = true: a translation is kept with the flow's conntrack entry",
                    );
                    ok = false;
                }
            }
            match self.nat(entry, ifaces, ifaces_known, &mut names) {
                Some(n) => {
                    let k = (n.kind == NatKind::Snat) as usize;
                    atoms[k] += n.atom_count();
                    if atoms[k] > MAX_NAT_ATOMS as usize {
                        self.c.err(
                            span,
                            format!(
                                "too many {} matches: the [[nat]] entries up to {:?} need {} (each combination of src, dst, sport, dport and icmp_type is one), at most {MAX_NAT_ATOMS} are supported",
                                if k == 1 { "SNAT" } else { "DNAT" },
                                n.name,
                                atoms[k]
                            ),
                        );
                        ok = false;
                    }
                    out.push(n);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn nat(
        &mut self,
        raw: Spanned<RawNat>,
        ifaces: &[String],
        ifaces_known: bool,
        names: &mut Names,
    ) -> Option<Nat> {
        let span = raw.span();
        let raw = raw.into_inner();
        let mark = self.c.mark();
        let what = match &raw.name {
            Some(n) => format!("nat entry {:?}", n.get_ref()),
            None => "nat entry".to_string(),
        };
        let kind = self
            .c
            .required(
                &raw.kind,
                span.clone(),
                format!("{what} has no kind (\"dnat\" or \"snat\")"),
            )
            .and_then(|v| {
                self.c.one_of(
                    "kind",
                    v,
                    &[("dnat", NatKind::Dnat), ("snat", NatKind::Snat)],
                )
            });
        let target = self
            .c
            .required(
                &raw.to,
                span.clone(),
                format!("{what} has no `to` (the address to translate to)"),
            )
            .and_then(|v| {
                let t = self.c.check(v.span(), parse_target(v.get_ref()));
                t.map(|t| (t, v.span()))
            });
        let to_ports = match (&raw.to_ports, kind) {
            (None, _) => Some(DEFAULT_SNAT_PORTS),
            (Some(v), Some(NatKind::Dnat)) => {
                self.c.err(
                    v.span(),
                    "to_ports is for kind = \"snat\"; a DNAT's port is part of `to` (\"ADDR:PORT\")",
                );
                None
            }
            (Some(v), _) => self.c.check(v.span(), parse_to_ports(v.get_ref())),
        };
        let matches = self.rule(
            Spanned::new(
                span.clone(),
                RawRule {
                    name: raw.name,
                    action: None,
                    proto: raw.proto,
                    src: raw.src,
                    dst: raw.dst,
                    sport: raw.sport,
                    dport: raw.dport,
                    icmp_type: raw.icmp_type,
                    in_iface: raw.in_iface,
                    log: None,
                },
            ),
            ifaces,
            ifaces_known,
            names,
            MatchTable::Nat,
        );
        if let (Some(m), Some(((to, to_port), to_span)), Some(kind)) = (&matches, &target, kind) {
            let (v4, v6) = families(m);
            let family_ok = if to.is_ipv4() { v4 } else { v6 };
            if !family_ok {
                self.c.err(
                    to_span.clone(),
                    format!(
                        "{what}: to = {to} is IPv{} but the entry matches IPv{} only (NAT keeps the address family)",
                        if to.is_ipv4() { 4 } else { 6 },
                        if to.is_ipv4() { 6 } else { 4 }
                    ),
                );
            }
            if to_port.is_some() {
                if kind == NatKind::Snat {
                    self.c.err(
                        to_span.clone(),
                        "an SNAT's `to` is an address; its ports are to_ports = \"LO-HI\"",
                    );
                } else if !matches!(m.proto, Proto::Tcp | Proto::Udp) {
                    self.c.err(
                        to_span.clone(),
                        format!("{what}: a port in `to` needs proto = \"tcp\" or \"udp\""),
                    );
                }
            }
            if to.is_unspecified() || to.is_multicast() {
                self.c.err(
                    to_span.clone(),
                    format!("{what}: to = {to} cannot be a packet's address"),
                );
            }
        }
        if self.c.failed_since(mark) {
            return None;
        }
        let matches = matches?;
        let ((to, to_port), _) = target?;
        Some(Nat {
            name: matches.name.clone(),
            kind: kind?,
            matches,
            to,
            to_port,
            to_ports: to_ports?,
        })
    }
}
