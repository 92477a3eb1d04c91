//! Flows between the conntrack table and sync records: what an NVA exports
//! of its table, and how the peer imports it into its own.
//!
//! Addresses that differ between the pair are mapped by NAT entry name. In
//! Azure the public IP moves to the other NVA's NIC, whose private address
//! differs: a flow that the active NVA translated with its DNAT entry
//! "web-in" (original destination: its own address) is imported with the
//! original destination of the standby's entry "web-in" (its own address,
//! the single host prefix of that entry's `dst`), and an SNAT'd flow takes
//! the `to` address of the standby's SNAT entry of the same name, keeping
//! its port. A flow whose entries the standby does not have, or whose
//! originator's packet the standby's rules would not allow, is not
//! imported (counted as refused).

use std::net::IpAddr;

use nva_common::{
    ConntrackEntry, ConntrackKey, NatBinding, CT_FLAG_IMPORTED, NAT_REVERSE, NAT_REWRITE_DST,
    NAT_REWRITE_SRC, NO_RULE, PROTO_ICMP, PROTO_ICMPV6,
};

use super::codec::{FlowRecord, NatRecord};
use crate::classifier::compiler::{rule_matches, PacketView};
use crate::conntrack::{remaining_ns, ConntrackError, Table};
use crate::nat::addr_bytes;
use crate::policy::model::{Action, Config, NatKind};

/// What a side needs to translate between its table and records.
pub struct Context<'a> {
    pub config: &'a Config,
    /// Counter indexes of the rules and NAT entries, by name.
    pub rules: &'a [(String, u32)],
    pub nat: &'a [(String, u32)],
    /// Generation of the running rule set (imported flows were checked
    /// against it).
    pub generation: u64,
    pub timeouts_s: &'a [u32],
    pub ifindex_of: &'a dyn Fn(&str) -> Option<u32>,
}

fn ip(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

fn name_of(counters: &[(String, u32)], counter: u32) -> Option<String> {
    counters
        .iter()
        .find(|(_, c)| *c == counter)
        .map(|(n, _)| n.clone())
}

fn counter_of(counters: &[(String, u32)], name: &str) -> Option<u32> {
    counters.iter().find(|(n, _)| n == name).map(|(_, c)| *c)
}

fn ms(ns: u64) -> u32 {
    (ns / 1_000_000).min(u32::MAX as u64) as u32
}

/// The live flows of `table` as records (`now`: the table's clock).
pub fn export(table: &Table, cx: &Context, now: u64) -> Result<Vec<FlowRecord>, ConntrackError> {
    Ok(export_all(table, cx, now)?
        .into_iter()
        .filter(|(_, imported)| !imported)
        .map(|(r, _)| r)
        .collect())
}

/// Every live flow of `table` as a record, with whether it is the peer's
/// (imported, not seen here yet): the sender sends only its own flows, but
/// a flow that became the peer's has not ended.
pub fn export_all(
    table: &Table,
    cx: &Context,
    now: u64,
) -> Result<Vec<(FlowRecord, bool)>, ConntrackError> {
    let bindings = table.bindings()?;
    let ifindexes: Vec<Option<u32>> = cx
        .config
        .agent
        .interfaces
        .iter()
        .map(|n| (cx.ifindex_of)(n))
        .collect();
    let mut out = Vec::new();
    for (k, e) in table.entries()? {
        if remaining_ns(&e, cx.timeouts_s, now) == 0 {
            continue;
        }
        let imported = e.flags & CT_FLAG_IMPORTED != 0;
        let (src, sport, dst, dport) = if e.origin_is_lo != 0 {
            (k.addr_lo, k.port_lo, k.addr_hi, k.port_hi)
        } else {
            (k.addr_hi, k.port_hi, k.addr_lo, k.port_lo)
        };
        let nat = if e.nat != 0 {
            let Some(b) = bindings.get(&k) else {
                continue;
            };
            Some(NatRecord {
                dnat: (b.flags & NAT_REWRITE_DST != 0).then(|| {
                    (
                        name_of(cx.nat, b.dnat_counter).unwrap_or_default(),
                        ip(&b.dst, k.family),
                        b.dport,
                    )
                }),
                snat: (b.flags & NAT_REWRITE_SRC != 0).then(|| {
                    (
                        name_of(cx.nat, b.snat_counter).unwrap_or_default(),
                        ip(&b.src, k.family),
                        b.sport,
                    )
                }),
            })
        } else {
            None
        };
        out.push((
            FlowRecord {
                proto: k.proto,
                src: ip(&src, k.family),
                sport,
                dst: ip(&dst, k.family),
                dport,
                vlan: k.vlan,
                origin_iface: ifindexes
                    .iter()
                    .position(|i| *i == Some(e.origin_ifindex))
                    .map_or(0xff, |p| p as u8),
                state: e.state,
                idle_ms: ms(now.saturating_sub(e.last_seen_ns)),
                age_ms: ms(now.saturating_sub(e.created_ns)),
                nat,
            },
            imported,
        ));
    }
    Ok(out)
}

/// Why a record was not imported.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The local rules do not allow its originator's packet.
    Rules,
    /// A NAT entry it names does not exist here (or is of another kind).
    NatEntry(String),
    /// Malformed (unknown interface index and the like).
    Invalid(&'static str),
}

/// The single host address of a DNAT entry's `dst` in `family`: the
/// address packets for it arrive at here.
fn dnat_local_address(cx: &Context, name: &str, v4: bool) -> Result<Option<IpAddr>, Refusal> {
    let entry = cx
        .config
        .nat
        .iter()
        .find(|n| n.name == name && n.kind == NatKind::Dnat)
        .ok_or_else(|| Refusal::NatEntry(name.to_string()))?;
    let hosts: Vec<IpAddr> = entry
        .matches
        .dst
        .iter()
        .filter(|c| c.is_v4() == v4 && c.len == if v4 { 32 } else { 128 })
        .map(|c| c.addr)
        .collect();
    Ok(match hosts.as_slice() {
        [one] => Some(*one),
        _ => None,
    })
}

/// The first rule that decides the originator's packet (as the rules saw
/// it, after DNAT): Ok(counter) when it is allowed.
fn allowed(cx: &Context, view: &PacketView) -> Result<u32, Refusal> {
    for r in &cx.config.rules {
        if rule_matches(r, view) {
            return if r.action == Action::Allow {
                Ok(counter_of(cx.rules, &r.name).unwrap_or(NO_RULE))
            } else {
                Err(Refusal::Rules)
            };
        }
    }
    if cx.config.policy.default == Action::Allow {
        Ok(NO_RULE)
    } else {
        Err(Refusal::Rules)
    }
}

/// What a record becomes here: the flow's conntrack key and entry, and for
/// a translated flow its forward and reverse bindings (key, binding).
pub struct Localized {
    pub key: ConntrackKey,
    pub entry: ConntrackEntry,
    pub bindings: Option<[(ConntrackKey, NatBinding); 2]>,
}

/// The conntrack entry and bindings a record becomes here.
pub fn localize(cx: &Context, r: &FlowRecord, now: u64) -> Result<Localized, Refusal> {
    let v4 = r.src.is_ipv4();
    if r.dst.is_ipv4() != v4 {
        return Err(Refusal::Invalid("mixed address families"));
    }
    let iface = match r.origin_iface {
        0xff => None,
        i => Some(
            cx.config
                .agent
                .interfaces
                .get(i as usize)
                .ok_or(Refusal::Invalid("interface index"))?
                .clone(),
        ),
    };
    let echo = r.proto == PROTO_ICMP || r.proto == PROTO_ICMPV6;
    // Our addresses for the peer's.
    let mut orig_dst = r.dst;
    let mut dnat = None;
    let mut snat = None;
    if let Some(n) = &r.nat {
        if let Some((name, to, port)) = &n.dnat {
            if let Some(local) = dnat_local_address(cx, name, v4)? {
                orig_dst = local;
            }
            dnat = Some((name.clone(), *to, *port));
        }
        if let Some((name, _, port)) = &n.snat {
            let entry = cx
                .config
                .nat
                .iter()
                .find(|e| &e.name == name && e.kind == NatKind::Snat && e.to.is_ipv4() == v4)
                .ok_or_else(|| Refusal::NatEntry(name.clone()))?;
            snat = Some((name.clone(), entry.to, *port));
        }
    }
    let (seen_dst, seen_dport) = match &dnat {
        Some((_, to, port)) => (*to, if echo { r.dport } else { *port }),
        None => (orig_dst, r.dport),
    };
    let view = PacketView {
        src: r.src,
        dst: seen_dst,
        proto: r.proto,
        sport: if echo { 0 } else { r.sport },
        dport: if echo { 0 } else { seen_dport },
        icmp_type: match r.proto {
            PROTO_ICMP => 8,
            PROTO_ICMPV6 => 128,
            _ => 0,
        },
        iface: iface.clone(),
    };
    let rule_counter = allowed(cx, &view)?;
    let mut key = ConntrackKey::default();
    let src_is_lo = key.set_from_packet(
        !v4,
        r.proto,
        r.vlan,
        &addr_bytes(r.src),
        r.sport,
        &addr_bytes(orig_dst),
        r.dport,
    );
    let entry = ConntrackEntry {
        created_ns: now.saturating_sub(r.age_ms as u64 * 1_000_000),
        last_seen_ns: now.saturating_sub(r.idle_ms as u64 * 1_000_000),
        generation: cx.generation,
        packets: [0, 0],
        bytes: [0, 0],
        rule_counter,
        origin_ifindex: iface.as_deref().and_then(cx.ifindex_of).unwrap_or(0),
        state: r.state,
        origin_is_lo: src_is_lo as u8,
        nat: (dnat.is_some() || snat.is_some()) as u8,
        flags: CT_FLAG_IMPORTED,
        _pad32: 0,
    };
    if entry.nat == 0 {
        return Ok(Localized {
            key,
            entry,
            bindings: None,
        });
    }
    let nat_counter = |t: &Option<(String, IpAddr, u16)>| {
        t.as_ref()
            .and_then(|(name, _, _)| counter_of(cx.nat, name))
            .unwrap_or(NO_RULE)
    };
    let (new_src, new_sport) = match &snat {
        Some((_, to, port)) => (*to, *port),
        None => (r.src, r.sport),
    };
    let (new_dst, new_dport) = match &dnat {
        Some((_, to, port)) => (*to, *port),
        None => (orig_dst, r.dport),
    };
    // Echo flows are keyed by their identifier on both sides.
    let new_dport = if echo { new_sport } else { new_dport };
    let forward = NatBinding {
        src: addr_bytes(new_src),
        dst: addr_bytes(new_dst),
        sport: new_sport,
        dport: new_dport,
        flags: if dnat.is_some() { NAT_REWRITE_DST } else { 0 }
            | if snat.is_some() { NAT_REWRITE_SRC } else { 0 },
        from_lo: src_is_lo as u8,
        _pad16: 0,
        dnat_counter: nat_counter(&dnat),
        snat_counter: nat_counter(&snat),
        flow: key,
    };
    let mut reverse_key = ConntrackKey::default();
    let new_src_is_lo = reverse_key.set_from_packet(
        !v4,
        r.proto,
        r.vlan,
        &addr_bytes(new_src),
        new_sport,
        &addr_bytes(new_dst),
        new_dport,
    );
    let reverse = NatBinding {
        src: addr_bytes(orig_dst),
        dst: addr_bytes(r.src),
        sport: r.dport,
        dport: r.sport,
        flags: NAT_REVERSE
            | if dnat.is_some() { NAT_REWRITE_SRC } else { 0 }
            | if snat.is_some() { NAT_REWRITE_DST } else { 0 },
        from_lo: (!new_src_is_lo) as u8,
        ..forward
    };
    Ok(Localized {
        key,
        entry,
        bindings: Some([(key, forward), (reverse_key, reverse)]),
    })
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub imported: usize,
    pub ended: usize,
    pub refused: usize,
    /// Records not applied because this side owns the flow and saw it more
    /// recently (a restarted peer resyncing its stale copy).
    pub kept: usize,
}

/// Imports records into `table`: live flows are inserted (or refreshed),
/// ended ones removed.
pub fn import(
    table: &mut Table,
    cx: &Context,
    records: &[FlowRecord],
    now: u64,
) -> Result<Imported, ConntrackError> {
    let mut stats = Imported::default();
    for r in records {
        match localize(cx, r, now) {
            Ok(l) => {
                // A flow this side owns (has seen packets of) is only
                // replaced by a fresher copy, and never ended by the peer.
                let local = table.get(&l.key)?;
                let owned = local.filter(|e| e.flags & CT_FLAG_IMPORTED == 0);
                if r.state == 0 {
                    if owned.is_some() {
                        stats.kept += 1;
                    } else {
                        table.remove(&l.key)?;
                        stats.ended += 1;
                    }
                    continue;
                }
                if owned.is_some_and(|e| e.last_seen_ns >= l.entry.last_seen_ns) {
                    stats.kept += 1;
                    continue;
                }
                for (k, b) in l.bindings.iter().flatten() {
                    table.insert_binding(k, b)?;
                }
                table.insert(&l.key, &l.entry)?;
                stats.imported += 1;
            }
            Err(why) => {
                tracing::debug!(?why, flow = ?r, "sync: flow not imported");
                stats.refused += 1;
            }
        }
    }
    Ok(stats)
}
