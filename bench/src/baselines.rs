//! The same rule set for the kernel's own firewalls: an nftables rule list
//! (one rule per nva rule), the nftables ruleset an expert would write with
//! sets (rules regrouped into blocks of one action, each block one set
//! lookup per field shape, hooked at ingress), and iptables (legacy
//! x_tables). Every translation keeps nva's first-match semantics and its
//! default of dropping IP traffic no rule matches; interface matches are not
//! translated (the benchmark's rule sets have none).

use std::fmt::Write as _;

use nva::policy::model::{Action, Cidr, PortRange, Proto, Rule};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
    Both,
}

/// The address family a rule's addresses restrict it to. Like nva, a rule
/// without addresses matches its protocol number in both families.
fn family(r: &Rule) -> Family {
    match r.src.first().or(r.dst.first()) {
        Some(c) if c.is_v4() => Family::V4,
        Some(_) => Family::V6,
        None => Family::Both,
    }
}

fn proto_number(p: Proto) -> Option<u8> {
    match p {
        Proto::Any => None,
        Proto::Tcp => Some(6),
        Proto::Udp => Some(17),
        Proto::Icmp => Some(1),
        Proto::Icmpv6 => Some(58),
    }
}

fn cidrs_overlap(a: &Cidr, b: &Cidr) -> bool {
    a.is_v4() == b.is_v4() && (a.contains(b.addr) || b.contains(a.addr))
}

fn ranges_overlap(a: &PortRange, b: &PortRange) -> bool {
    a.lo <= b.hi && b.lo <= a.hi
}

/// Whether two lists (empty = anything) have a common value.
fn lists_meet<T>(a: &[T], b: &[T], meet: impl Fn(&T, &T) -> bool) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|x| b.iter().any(|y| meet(x, y)))
}

/// Whether some packet matches both rules.
fn rules_meet(a: &Rule, b: &Rule) -> bool {
    let fam_ok = matches!(
        (family(a), family(b)),
        (Family::Both, _) | (_, Family::Both) | (Family::V4, Family::V4) | (Family::V6, Family::V6)
    );
    let proto_ok = match (proto_number(a.proto), proto_number(b.proto)) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    fam_ok
        && proto_ok
        && a.in_iface.is_none()
        && b.in_iface.is_none()
        && lists_meet(&a.src, &b.src, cidrs_overlap)
        && lists_meet(&a.dst, &b.dst, cidrs_overlap)
        && lists_meet(&a.sport, &b.sport, ranges_overlap)
        && lists_meet(&a.dport, &b.dport, ranges_overlap)
        && lists_meet(&a.icmp_type, &b.icmp_type, |x, y| x == y)
}

/// The translations leave interface matches out: the benchmark's rule sets
/// must not have any.
fn no_interface_matches(rules: &[Rule]) {
    assert!(
        rules.iter().all(|r| r.in_iface.is_none()),
        "the translations do not carry in_iface"
    );
}

/// Block of each rule: blocks alternate actions (block 0 has the first
/// rule's action) and a rule goes to the earliest block of its action after
/// every earlier rule it overlaps with the other action. Matching the blocks
/// in order then gives the verdict of first match in rule order: a rule of
/// the other action that matches the same packet and was earlier sits in an
/// earlier block; one that was later sits in a later block.
pub fn blocks(rules: &[Rule]) -> Vec<usize> {
    no_interface_matches(rules);
    let Some(first) = rules.first() else {
        return Vec::new();
    };
    let parity = |a: Action| usize::from(a != first.action);
    let mut out: Vec<usize> = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let mut at_least = parity(r.action);
        for (j, earlier) in rules[..i].iter().enumerate() {
            if earlier.action != r.action && out[j] >= at_least && rules_meet(earlier, r) {
                at_least = out[j] + 1;
            }
        }
        if at_least % 2 != parity(r.action) {
            at_least += 1;
        }
        out.push(at_least);
    }
    out
}

/// Drops list members covered by another member (nftables rejects
/// overlapping elements in one set).
fn disjoint_cidrs(list: &[Cidr]) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = Vec::new();
    let mut sorted = list.to_vec();
    sorted.sort_by_key(|c| c.len);
    for c in sorted {
        if !out.iter().any(|o| o.contains(c.addr) && o.len <= c.len) {
            out.push(c);
        }
    }
    out
}

fn merged_ranges(list: &[PortRange]) -> Vec<PortRange> {
    let mut sorted = list.to_vec();
    sorted.sort_by_key(|r| r.lo);
    let mut out: Vec<PortRange> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.lo as u32 <= last.hi as u32 + 1 => last.hi = last.hi.max(r.hi),
            _ => out.push(r),
        }
    }
    out
}

fn range_text(r: &PortRange, sep: &str) -> String {
    if r.lo == r.hi {
        r.lo.to_string()
    } else {
        format!("{}{sep}{}", r.lo, r.hi)
    }
}

fn verdict(a: Action) -> &'static str {
    match a {
        Action::Allow => "accept",
        Action::Drop => "drop",
    }
}

fn addr_keyword(c: &Cidr) -> &'static str {
    if c.is_v4() {
        "ip"
    } else {
        "ip6"
    }
}

fn set_of(items: Vec<String>) -> String {
    if items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// One nftables rule per nva rule (lists become anonymous sets), in an
/// `inet` table's forward chain with policy drop.
pub fn nft_rule_list(rules: &[Rule]) -> String {
    no_interface_matches(rules);
    let mut out = String::from(
        "table inet nva_bench {\n  chain forward {\n    type filter hook forward priority filter; policy drop;\n",
    );
    for r in rules {
        let mut m = String::new();
        if let Some(p) = proto_number(r.proto) {
            let _ = write!(m, "meta l4proto {p} ");
        }
        for (list, dir) in [(&r.src, "saddr"), (&r.dst, "daddr")] {
            let list = disjoint_cidrs(list);
            if let Some(c) = list.first() {
                let kw = addr_keyword(c);
                let _ = write!(
                    m,
                    "{kw} {dir} {} ",
                    set_of(list.iter().map(|c| c.to_string()).collect())
                );
            }
        }
        for (list, dir) in [(&r.sport, "sport"), (&r.dport, "dport")] {
            if !list.is_empty() {
                let items = merged_ranges(list)
                    .iter()
                    .map(|p| range_text(p, "-"))
                    .collect();
                let _ = write!(m, "th {dir} {} ", set_of(items));
            }
        }
        if !r.icmp_type.is_empty() {
            let kw = if r.proto == Proto::Icmp {
                "icmp"
            } else {
                "icmpv6"
            };
            let mut types = r.icmp_type.clone();
            types.sort_unstable();
            types.dedup();
            let _ = write!(
                m,
                "{kw} type {} ",
                set_of(types.iter().map(|t| t.to_string()).collect())
            );
        }
        if m.is_empty() && family(r) == Family::Both {
            m.push_str("meta nfproto { ipv4, ipv6 } ");
        }
        let _ = writeln!(out, "    {m}{}", verdict(r.action));
    }
    out.push_str("  }\n}\n");
    out
}

/// One value per field of a rule: the rule is the union of these.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Atom {
    src: Option<Cidr>,
    dst: Option<Cidr>,
    sport: Option<PortRange>,
    dport: Option<PortRange>,
    icmp: Option<u8>,
}

impl Atom {
    fn meets(&self, o: &Atom) -> bool {
        fn meet<T>(a: &Option<T>, b: &Option<T>, f: impl Fn(&T, &T) -> bool) -> bool {
            match (a, b) {
                (Some(x), Some(y)) => f(x, y),
                _ => true,
            }
        }
        meet(&self.src, &o.src, cidrs_overlap)
            && meet(&self.dst, &o.dst, cidrs_overlap)
            && meet(&self.sport, &o.sport, ranges_overlap)
            && meet(&self.dport, &o.dport, ranges_overlap)
            && meet(&self.icmp, &o.icmp, |x, y| x == y)
    }
}

/// Which fields a set's elements have, besides protocol and family.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Shape {
    family: Family,
    proto: Option<u8>,
    src: bool,
    dst: bool,
    sport: bool,
    dport: bool,
    icmp: bool,
}

fn atoms(r: &Rule) -> Vec<Atom> {
    fn opts<T: Copy>(list: &[T]) -> Vec<Option<T>> {
        if list.is_empty() {
            vec![None]
        } else {
            list.iter().copied().map(Some).collect()
        }
    }
    let mut out = Vec::new();
    for src in opts(&disjoint_cidrs(&r.src)) {
        for dst in opts(&disjoint_cidrs(&r.dst)) {
            for sport in opts(&merged_ranges(&r.sport)) {
                for dport in opts(&merged_ranges(&r.dport)) {
                    for icmp in opts(&r.icmp_type) {
                        out.push(Atom {
                            src,
                            dst,
                            sport,
                            dport,
                            icmp,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Counts of what [`nft_sets`] produced.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct SetsSummary {
    pub blocks: usize,
    pub nft_rules: usize,
    pub elements: usize,
}

/// The expert's ruleset: a `netdev` ingress chain on `devices` (before routing),
/// the rules in blocks of one action (see [`blocks`]); in each block one
/// rule per field shape whose set holds every rule's values, split into
/// several sets where elements overlap (nftables wants disjoint elements).
pub fn nft_sets(rules: &[Rule], devices: &[&str]) -> (String, SetsSummary) {
    no_interface_matches(rules);
    let block_of = blocks(rules);
    let n_blocks = block_of.iter().max().map_or(0, |m| m + 1);
    let mut summary = SetsSummary {
        blocks: n_blocks,
        ..SetsSummary::default()
    };
    let mut out = format!(
        "table netdev nva_bench {{\n  chain ingress {{\n    type filter hook ingress devices = {{ {} }} priority filter; policy accept;\n",
        devices
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for b in 0..n_blocks {
        let in_block: Vec<&Rule> = rules
            .iter()
            .zip(&block_of)
            .filter(|(_, &k)| k == b)
            .map(|(r, _)| r)
            .collect();
        let Some(action) = in_block.first().map(|r| r.action) else {
            continue;
        };
        // Shape -> sets of mutually disjoint atoms.
        let mut shapes: std::collections::BTreeMap<Shape, Vec<Vec<Atom>>> = Default::default();
        let mut seen = std::collections::HashSet::new();
        for r in in_block {
            for a in atoms(r) {
                let shape = Shape {
                    family: family(r),
                    proto: proto_number(r.proto),
                    src: a.src.is_some(),
                    dst: a.dst.is_some(),
                    sport: a.sport.is_some(),
                    dport: a.dport.is_some(),
                    icmp: a.icmp.is_some(),
                };
                if !seen.insert((shape.clone(), a.clone())) {
                    continue;
                }
                let sets = shapes.entry(shape).or_default();
                match sets.iter_mut().find(|s| !s.iter().any(|o| o.meets(&a))) {
                    Some(s) => s.push(a),
                    None => sets.push(vec![a]),
                }
            }
        }
        for (shape, sets) in shapes {
            for set in sets {
                summary.nft_rules += 1;
                summary.elements += set.len();
                out.push_str("    ");
                out.push_str(&sets_rule(&shape, &set));
                let _ = writeln!(out, " {}", verdict(action));
            }
        }
    }
    summary.nft_rules += 1;
    out.push_str("    meta protocol { ip, ip6 } drop\n  }\n}\n");
    (out, summary)
}

fn sets_rule(shape: &Shape, set: &[Atom]) -> String {
    let ip = match shape.family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
        Family::Both => "",
    };
    let mut keys: Vec<String> = Vec::new();
    if shape.icmp {
        keys.push(
            if shape.proto == Some(1) {
                "icmp type"
            } else {
                "icmpv6 type"
            }
            .into(),
        );
    }
    if shape.src {
        keys.push(format!("{ip} saddr"));
    }
    if shape.dst {
        keys.push(format!("{ip} daddr"));
    }
    if shape.sport {
        keys.push("th sport".into());
    }
    if shape.dport {
        keys.push("th dport".into());
    }
    let mut m = match (shape.family, shape.proto) {
        (Family::Both, None) => "meta protocol { ip, ip6 } ".to_string(),
        (Family::V4, None) if keys.is_empty() => "meta protocol ip ".into(),
        (Family::V6, None) if keys.is_empty() => "meta protocol ip6 ".into(),
        (Family::V4, Some(p)) => format!("meta protocol ip meta l4proto {p} "),
        (Family::V6, Some(p)) => format!("meta protocol ip6 meta l4proto {p} "),
        (_, Some(p)) => format!("meta l4proto {p} "),
        _ => String::new(),
    };
    if keys.is_empty() {
        return m.trim_end().to_string();
    }
    let elements: Vec<String> = set
        .iter()
        .map(|a| {
            let mut parts = Vec::new();
            if let Some(t) = a.icmp {
                parts.push(t.to_string());
            }
            for c in [a.src, a.dst].into_iter().flatten() {
                parts.push(c.to_string());
            }
            for p in [a.sport, a.dport].into_iter().flatten() {
                parts.push(range_text(&p, "-"));
            }
            parts.join(" . ")
        })
        .collect();
    // A concatenation takes a set even for one element.
    let elements = if keys.len() > 1 {
        format!("{{ {} }}", elements.join(", "))
    } else {
        set_of(elements)
    };
    let _ = write!(m, "{} {elements}", keys.join(" . "));
    m
}

/// iptables-legacy-restore input for IPv4 and IPv6: the FORWARD chain with
/// policy DROP, one iptables rule per (source, destination, ICMP type) of
/// each nva rule (iptables takes one address per rule), ports through
/// multiport. Returns (v4, v6, iptables rules in total).
pub fn iptables(rules: &[Rule]) -> (String, String, usize) {
    no_interface_matches(rules);
    let mut v4 = String::from("*filter\n:FORWARD DROP [0:0]\n");
    let mut v6 = v4.clone();
    let mut count = 0;
    for r in rules {
        let fam = family(r);
        for (text, is_v4) in [(&mut v4, true), (&mut v6, false)] {
            // ICMP types exist per family in iptables: ICMP rules go to
            // iptables, ICMPv6 rules to ip6tables (nva would also match
            // protocol 1 in IPv6 and 58 in IPv4, which no real host sends).
            let wanted = match (fam, r.proto) {
                (Family::V4, _) | (Family::Both, Proto::Icmp) => is_v4,
                (Family::V6, _) | (Family::Both, Proto::Icmpv6) => !is_v4,
                (Family::Both, _) => true,
            };
            if !wanted {
                continue;
            }
            let proto = match r.proto {
                Proto::Any => String::new(),
                Proto::Tcp => "-p tcp ".into(),
                Proto::Udp => "-p udp ".into(),
                Proto::Icmp => "-p icmp ".into(),
                Proto::Icmpv6 => "-p ipv6-icmp ".into(),
            };
            let mut ports = String::new();
            for (list, flag) in [(&r.sport, "--sports"), (&r.dport, "--dports")] {
                if !list.is_empty() {
                    let items: Vec<String> = merged_ranges(list)
                        .iter()
                        .map(|p| range_text(p, ":"))
                        .collect();
                    let _ = write!(ports, "-m multiport {flag} {} ", items.join(","));
                }
            }
            let addrs = |list: &[Cidr], flag: &str| -> Vec<String> {
                if list.is_empty() {
                    vec![String::new()]
                } else {
                    disjoint_cidrs(list)
                        .iter()
                        .map(|c| format!("{flag} {c} "))
                        .collect()
                }
            };
            // iptables reads ICMP type 255 as "any type": that one value
            // is left out (the rule then misses type 255 packets only).
            let icmp: Vec<String> = if r.icmp_type.is_empty() {
                vec![String::new()]
            } else {
                let kw = if is_v4 {
                    "--icmp-type"
                } else {
                    "--icmpv6-type"
                };
                r.icmp_type
                    .iter()
                    .filter(|&&t| t != 255)
                    .map(|t| format!("{kw} {t} "))
                    .collect()
            };
            let target = match r.action {
                Action::Allow => "ACCEPT",
                Action::Drop => "DROP",
            };
            for s in addrs(&r.src, "-s") {
                for d in addrs(&r.dst, "-d") {
                    for t in &icmp {
                        count += 1;
                        let _ = writeln!(text, "-A FORWARD {proto}{s}{d}{ports}{t}-j {target}");
                    }
                }
            }
        }
    }
    v4.push_str("COMMIT\n");
    v6.push_str("COMMIT\n");
    (v4, v6, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nva::classifier::compiler::{linear_first_match, rule_matches};
    use nva::classifier::rulegen::{Rng, RuleGen};

    /// Matching the blocks in order (any rule of the block) gives the same
    /// verdict as first match in rule order.
    #[test]
    fn blocks_keep_first_match_verdicts() {
        for seed in 0..20u64 {
            let mut rng = Rng::new(seed);
            let gen = RuleGen::new(&mut rng, 300);
            let mut rules = gen.rules(&mut rng, 300);
            for r in &mut rules {
                r.in_iface = None;
            }
            let block_of = blocks(&rules);
            for _ in 0..3000 {
                let mut p = gen.packet(&mut rng, &rules);
                p.iface = None;
                let want = linear_first_match(&rules, &p).map(|i| rules[i].action);
                let got = (0..=block_of.iter().copied().max().unwrap_or(0)).find_map(|b| {
                    rules
                        .iter()
                        .zip(&block_of)
                        .find(|(r, &k)| k == b && rule_matches(r, &p))
                        .map(|(r, _)| r.action)
                });
                assert_eq!(got, want, "seed {seed}, packet {p:?}");
            }
        }
    }
}
