//! End to end against the kernel's own firewalls: the same rule sets as nva
//! (`nva agent`, XDP), an nftables rule list, the nftables ruleset an expert
//! would write with sets, and iptables (legacy), each on a fresh
//! client ── nva ── server topology, with 64-byte UDP frames from an AF_PACKET generator.
//!
//! veth processes what it receives in the sender's softirq context, so the
//! generator (pinned to CPU 0) and the receive path share CPU 0. Two figures
//! per run: packets per second through that CPU (generator included), and
//! the receive path's CPU per packet: CPU 0's softirq time (the kernel
//! samples it at each tick) over the packets received. The second is the
//! NVA's capacity; the first is what this test rig delivers.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nva::classifier::compiler::{rule_matches, PacketView};
use nva::classifier::rulegen::{rules_toml, Rng, RuleGen};
use nva::datapath::Baseline;
use nva::policy::model::{Action, PortRange, Proto, Rule};
use nva_common::{XDP_PARSE_DROP_PROGRAM, XDP_PROGRAM};
use nva_tests::agent::RunningAgent;
use nva_tests::{in_netns, Netns, Topology, CLIENT_IF, NVA_IN_IF, NVA_OUT_IF, SERVER_IF};
use serde_json::json;

use crate::baselines;
use crate::generator::{parse_mac, udp_frame, Flood};
use crate::report::{line_plot, Section, Spread, Verdict};

/// Topology ids 231..=234 (one per firewall, created and removed in turn).
const TOPOLOGY_ID: u8 = 231;
/// Source port of the generated frames.
pub(crate) const SPORT: u16 = 40_000;

pub struct Settings {
    pub sizes: Vec<usize>,
    /// Sizes of the block-list rule sets (the case nftables sets are made for).
    pub blocklist_sizes: Vec<usize>,
    /// Sizes of the ClassBench acl-shaped rule sets, measured for nva only
    /// (the end-to-end target at 100,000 rules; the kernel's
    /// firewalls would take minutes to load them, and a rule list that
    /// long would measure nothing but its length).
    pub classbench_sizes: Vec<usize>,
    /// Length of one measurement.
    pub seconds: f64,
    pub rounds: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                sizes: vec![10, 100],
                blocklist_sizes: vec![100],
                classbench_sizes: vec![1000],
                seconds: 0.5,
                rounds: 1,
            }
        } else {
            Settings {
                sizes: vec![10, 1000, 10_000],
                blocklist_sizes: vec![10_000],
                classbench_sizes: vec![100_000],
                seconds: 2.0,
                rounds: 3,
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Firewall {
    Nva,
    NftSets,
    NftList,
    Iptables,
}

impl Firewall {
    const ALL: [Firewall; 4] = [
        Firewall::Nva,
        Firewall::NftSets,
        Firewall::NftList,
        Firewall::Iptables,
    ];
    fn name(self) -> &'static str {
        match self {
            Firewall::Nva => "nva (XDP)",
            Firewall::NftSets => "nftables, sets (expert)",
            Firewall::NftList => "nftables, rule list",
            Firewall::Iptables => "iptables (legacy)",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Firewall::Nva => "nva",
            Firewall::NftSets => "nft_sets",
            Firewall::NftList => "nft_list",
            Firewall::Iptables => "iptables",
        }
    }
}

/// One measurement's figures.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// Frames the NVA side received per second.
    pub received_pps: f64,
    /// Frames that reached the server per second.
    pub delivered_pps: f64,
    /// CPU 0 softirq ns per received frame (the receive path, firewall included).
    pub softirq_ns: f64,
    /// ns per run of the XDP program itself (kernel run statistics), when asked.
    pub program_ns: Option<f64>,
}

/// Total run time (ns) and runs of the loaded programs named `name`.
fn program_runs(name: &str) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| p.name_as_str() == Some(name))
        .fold((0, 0), |(t, n), p| {
            (t + p.run_time().as_nanos() as u64, n + p.run_count())
        })
}

/// Size of the JIT-compiled code of the loaded program named `name`.
fn jited_bytes(name: &str) -> Option<u32> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| p.size_jitted())
        .max()
}

/// CPU 0's softirq ticks from /proc/stat.
fn cpu0_softirq_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu0 "))
        .context("no cpu0 line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq ...
    v.get(6).copied().context("short cpu0 line in /proc/stat")
}

fn counter(ns: &Netns, dev: &str, name: &str) -> Result<u64> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/statistics/{name}")]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("reading {name} of {dev} in {}", ns.name))
}

/// UDP datagrams the server received for ports nobody listens on: the
/// benchmark's frames, and nothing else.
fn udp_no_ports(ns: &Netns) -> Result<u64> {
    let out = ns.exec(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Udp lines in /proc/net/snmp of {}", ns.name);
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "NoPorts")
        .and_then(|(_, v)| v.parse().ok())
        .context("no Udp NoPorts counter")
}

fn mac(ns: &Netns, dev: &str) -> Result<String> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")]);
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Restores the calling thread's CPU affinity when dropped.
pub(crate) struct AffinityGuard(libc::cpu_set_t);

impl AffinityGuard {
    pub(crate) fn save() -> AffinityGuard {
        // SAFETY: a zeroed cpu_set_t is valid; the kernel fills it in.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            AffinityGuard(set)
        }
    }
}

impl Drop for AffinityGuard {
    fn drop(&mut self) {
        // SAFETY: the set was filled in by sched_getaffinity.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// Pins the calling thread (and what it starts from now on) to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Floods `frame` from CPU 0 of the client namespace for `seconds` (after a
/// short warm-up) and samples the counters around it. With `program`, the
/// kernel's BPF run statistics are on for this measurement (they cost two
/// clock reads per run, so the other measurements go without) and the
/// program's own time per run is reported.
pub(crate) fn measure(
    t: &Topology,
    frame: &[u8],
    seconds: f64,
    program: Option<&str>,
) -> Result<Sample> {
    let stats = match program {
        Some(_) => Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("enabling BPF run statistics")?,
        ),
        None => None,
    };
    let flood = Flood::start(&t.client, CLIENT_IF, frame.to_vec(), 0)?;
    std::thread::sleep(Duration::from_millis(300));
    let runs0 = program.map(program_runs);
    let rx0 = counter(&t.nva, NVA_IN_IF, "rx_packets")?;
    let del0 = udp_no_ports(&t.server)?;
    let soft0 = cpu0_softirq_ticks()?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let rx1 = counter(&t.nva, NVA_IN_IF, "rx_packets")?;
    let del1 = udp_no_ports(&t.server)?;
    let soft1 = cpu0_softirq_ticks()?;
    let runs1 = program.map(program_runs);
    drop(stats);
    let elapsed = started.elapsed().as_secs_f64();
    if flood.sent() == 0 {
        bail!("the generator sent nothing");
    }
    drop(flood);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let received = rx1.saturating_sub(rx0).max(1) as f64;
    Ok(Sample {
        received_pps: received / elapsed,
        delivered_pps: del1.saturating_sub(del0) as f64 / elapsed,
        softirq_ns: (soft1 - soft0) as f64 * 1e9 / hz / received,
        program_ns: match (runs0, runs1) {
            (Some((t0, n0)), Some((t1, n1))) if n1 > n0 => {
                Some(t1.saturating_sub(t0) as f64 / (n1 - n0) as f64)
            }
            _ => None,
        },
    })
}

/// What the rule sets look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Random overlapping rules of both actions (see `nva::classifier::rulegen`); the
    /// frames to drop match none of them.
    Random,
    /// Drop rules for destination networks (/24 and /32); the frames to
    /// drop match the last one.
    Blocklist,
    /// ClassBench acl-shaped rules (see `nva::classifier::rulegen::classbench`);
    /// like `Random`, the frames to drop match none of them.
    ClassBenchAcl,
}

/// Where the frames to drop go: the server in `Random` rule sets, an
/// address next to it (blocked by the last block-list rule) in `Blocklist`.
fn drop_destination(t: &Topology, shape: Shape) -> IpAddr {
    match shape {
        Shape::Random | Shape::ClassBenchAcl => t.server_v4().parse().expect("server address"),
        Shape::Blocklist => format!("10.{}.2.3", t.id).parse().expect("address"),
    }
}

/// `n - 1` drop rules for random destination networks that spare the
/// server's subnet, then one for the frames to drop, then the rule that
/// forwards the other frames.
fn blocklist(n: usize, t: &Topology) -> Vec<Rule> {
    let mut rng = Rng::new(0xb10c ^ n as u64);
    let server_net =
        nva::policy::model::Cidr::new(t.server_v4().parse().expect("server address"), 24);
    let mut rules = Vec::with_capacity(n + 1);
    let drop_dst = |name: String, c: nva::policy::model::Cidr| Rule {
        dst: vec![c],
        ..Rule::any(&name, Action::Drop)
    };
    while rules.len() + 1 < n {
        let len = if rng.chance(50) { 24 } else { 32 };
        let c = nva::policy::model::Cidr::new(IpAddr::V4((rng.next_u64() as u32).into()), len);
        if !c.contains(server_net.addr) && !server_net.contains(c.addr) {
            rules.push(drop_dst(format!("block-{}", rules.len()), c));
        }
    }
    rules.push(drop_dst(
        "block-bench".into(),
        nva::policy::model::Cidr::new(drop_destination(t, Shape::Blocklist), 32),
    ));
    // Then everything else allowed: a pure block list (nva's short path),
    // whatever the default.
    rules.push(Rule::any("allow-the-rest", Action::Allow));
    rules
}

fn forward_rule(t: &Topology) -> Rule {
    let dst: IpAddr = t.server_v4().parse().expect("server address");
    Rule {
        name: "bench-forward".into(),
        action: Action::Allow,
        proto: Proto::Udp,
        src: vec![],
        dst: vec![nva::policy::model::Cidr::new(dst, 32)],
        sport: vec![],
        dport: vec![PortRange {
            lo: FORWARD_PORT,
            hi: FORWARD_PORT,
        }],
        icmp_type: vec![],
        in_iface: None,
        log: false,
    }
}

/// UDP port of the frames to drop (no rule matches them).
const DROP_PORT: u16 = 9;
/// UDP port of the frames to forward (only the appended last rule matches).
pub(crate) const FORWARD_PORT: u16 = 5001;

/// `n` random rules, free of interface matches and of rules that match the
/// benchmark's frames (drawn again until `n` remain), so that a frame to
/// drop is considered against every rule and a frame to forward meets its
/// rule last; then that last rule.
pub(crate) fn rule_set(n: usize, t: &Topology) -> Vec<Rule> {
    let mut rng = Rng::new(0xe2e ^ n as u64);
    let gen = RuleGen::new(&mut rng, n);
    sparing_the_frames(n, t, |rng, i| gen.rule(rng, i), &mut rng)
}

/// `n` ClassBench acl-shaped rules, drawn like [`rule_set`]'s.
fn classbench_set(n: usize, t: &Topology) -> Vec<Rule> {
    use nva::classifier::rulegen::classbench::{self, ClassBench};
    let mut rng = Rng::new(0xc1a55 ^ n as u64);
    let gen = ClassBench::new(classbench::Shape::Acl, &mut rng, n);
    sparing_the_frames(n, t, |rng, i| gen.rule(rng, i), &mut rng)
}

/// `n` rules from `draw`, free of interface matches and of rules that match
/// the benchmark's frames, then the rule that forwards.
fn sparing_the_frames(
    n: usize,
    t: &Topology,
    draw: impl Fn(&mut Rng, usize) -> Rule,
    rng: &mut Rng,
) -> Vec<Rule> {
    let src: IpAddr = t.client_v4().parse().expect("client address");
    let dst: IpAddr = t.server_v4().parse().expect("server address");
    let frames = [DROP_PORT, FORWARD_PORT].map(|dport| PacketView {
        src,
        dst,
        proto: 17,
        sport: SPORT,
        dport,
        icmp_type: 0,
        iface: None,
    });
    let mut rules = Vec::with_capacity(n + 1);
    while rules.len() < n {
        let mut r = draw(rng, rules.len());
        r.in_iface = None;
        if !frames.iter().any(|p| rule_matches(&r, p)) {
            rules.push(r);
        }
    }
    rules.push(forward_rule(t));
    rules
}

struct Applied {
    /// nva's agent, kept running for the measurement (the kernel's
    /// firewalls need nothing: their tables go with the namespace).
    _agent: Option<RunningAgent>,
    /// What the translation produced, for the report.
    detail: String,
}

fn apply(fw: Firewall, t: &Topology, rules: &[Rule], dir: &Path) -> Result<Applied> {
    let started = Instant::now();
    let load = |file: &str, text: &str, cmd: &[&str]| -> Result<()> {
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        let mut args: Vec<&str> = cmd.to_vec();
        let p = path.display().to_string();
        args.push(&p);
        let out = t.nva.exec(&args);
        if !out.status.success() {
            bail!(
                "{cmd:?} {p} failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(())
    };
    let (agent, detail) = match fw {
        Firewall::Nva => {
            let config = format!(
                "[agent]\ninterfaces = [\"{NVA_IN_IF}\", \"{NVA_OUT_IF}\"]\nhealth_listen = \"127.0.0.1:9090\"\nbpffs = \"{{bpffs}}\"\n\n[policy]\ndefault = \"drop\"\nstateful = false\n\n{}",
                rules_toml(rules)
            );
            let agent = RunningAgent::start(t, &config, true);
            (Some(agent), format!("{} rules", rules.len()))
        }
        Firewall::NftList => {
            load("list.nft", &baselines::nft_rule_list(rules), &["nft", "-f"])?;
            (None, format!("{} nft rules", rules.len()))
        }
        Firewall::NftSets => {
            let (text, s) = baselines::nft_sets(rules, &[NVA_IN_IF, NVA_OUT_IF]);
            load("sets.nft", &text, &["nft", "-f"])?;
            (
                None,
                format!(
                    "{} nft rules in {} blocks, {} set elements",
                    s.nft_rules, s.blocks, s.elements
                ),
            )
        }
        Firewall::Iptables => {
            let (v4, v6, count) = baselines::iptables(rules);
            // iptables-legacy-restore reads its rules from standard input.
            for (file, text, cmd) in [
                ("v4.rules", v4, "iptables-legacy-restore"),
                ("v6.rules", v6, "ip6tables-legacy-restore"),
            ] {
                let path = dir.join(file);
                std::fs::write(&path, text)?;
                let out = t
                    .nva
                    .command(&[cmd])
                    .stdin(std::fs::File::open(&path)?)
                    .output()?;
                if !out.status.success() {
                    bail!("{cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            (None, format!("{count} iptables rules"))
        }
    };
    Ok(Applied {
        _agent: agent,
        detail: format!(
            "{detail}, loaded in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    })
}

/// The benchmark's frame: client to `dst`, udp `dport`.
pub(crate) fn frame(t: &Topology, dst: IpAddr, dport: u16) -> Result<Vec<u8>> {
    let IpAddr::V4(dst) = dst else {
        bail!("the benchmark's frames are IPv4");
    };
    Ok(udp_frame(
        parse_mac(&mac(&t.nva, NVA_IN_IF)?)?,
        parse_mac(&mac(&t.client, CLIENT_IF)?)?,
        t.client_v4().parse()?,
        dst,
        SPORT,
        dport,
    ))
}

/// The floor of the rig: nva's parser alone attached to the NVA's ingress
/// (drop every IP frame, or pass it to the kernel to forward), no rules.
fn floor(s: &Settings) -> Result<Figures> {
    eprintln!("bench: end to end, XDP floor (parse and drop / parse and pass)");
    let t = Topology::new(TOPOLOGY_ID);
    t.nva.exec(&["ping", "-c", "1", "-W", "1", &t.server_v4()]);
    let frame = frame(&t, t.server_v4().parse()?, DROP_PORT)?;
    let mut runs: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let mut program_ns = None;
    for (dropping, samples) in [true, false].into_iter().zip(runs.iter_mut()) {
        let attached = in_netns(&t.nva, || -> Result<Baseline> {
            let mut b = if dropping {
                Baseline::parse_drop()?
            } else {
                Baseline::parse_pass()?
            };
            b.attach(NVA_IN_IF)?;
            Ok(b)
        })?;
        for _ in 0..s.rounds {
            samples.push(measure(&t, &frame, s.seconds, None)?);
        }
        if dropping {
            program_ns = measure(&t, &frame, s.seconds, Some(XDP_PARSE_DROP_PROGRAM))?.program_ns;
        }
        drop(attached);
    }
    Ok(Figures {
        program_ns,
        ..figures(&runs[0], &runs[1])
    })
}

/// What the block lists show: the case nftables sets are made for.
fn blocklist_note(at: &[(usize, Firewall, Figures)]) -> String {
    let get = |fw: Firewall| at.iter().find(|(_, f, _)| *f == fw);
    match (get(Firewall::Nva), get(Firewall::NftSets), get(Firewall::Iptables)) {
        (Some((n, _, nva)), Some((_, _, sets)), Some((_, _, ipt))) => format!(
            "Block lists ({n} drop rules for destination networks, the frames to drop matching the last, then a rule allowing the rest; nva takes its short path, one longest-prefix lookup): the shape nftables sets are made for, one set lookup whatever the size. There nva's receive path costs {:.0} ns per dropped frame against {:.0} ns for the nftables sets ({:.2}×) and {:.0} ns for iptables ({:.1}×). The random rule sets above defeat sets instead: rules of both actions overlap, so first-match order leaves even the expert's ruleset many blocks of one action (the ruleset column), each needing its own lookups.",
            nva.drop_ns.median,
            sets.drop_ns.median,
            sets.drop_ns.median / nva.drop_ns.median.max(1e-9),
            ipt.drop_ns.median,
            ipt.drop_ns.median / nva.drop_ns.median.max(1e-9),
        ),
        _ => "Block lists were not measured.".into(),
    }
}

/// The note that splits nva's cost at the smallest rule set into the
/// program's own time and the rest of the path.
fn where_time_goes(
    at: &[(usize, Firewall, Figures)],
    base: &Figures,
    jited: Option<u32>,
) -> String {
    let Some((n, _, nva)) = at.iter().find(|(_, f, _)| *f == Firewall::Nva) else {
        return "nva was not measured.".into();
    };
    let prog = nva
        .program_ns
        .map_or("an unknown part".into(), |p| format!("{p:.0} ns"));
    let floor_prog = base.program_ns.unwrap_or(0.0);
    let largest = at
        .iter()
        .filter(|(_, f, _)| *f == Firewall::Nva)
        .max_by_key(|(m, _, _)| *m)
        .and_then(|(m, _, figs)| figs.program_ns.map(|p| format!("{p:.0} ns at {m} rules")))
        .unwrap_or_else(|| "not measured at other sizes".into());
    format!(
        "Where nva's time goes at {n} rules: the receive path costs {:.0} ns per dropped frame, of which {prog} in the XDP program itself (kernel BPF run statistics, from one extra run with them on). The floor, nva's parser alone, costs {:.0} ns with {floor_prog:.0} ns in the program: the other {:.0} ns are veth's XDP path, where a frame sent from a local socket arrives as an skb whose data must be copied into a fresh page before XDP may see it, then a ring and NAPI. A NIC with native XDP runs the program before any skb exists, so that part is the rig's. The program ({}) makes a dozen map lookups per frame; its time grows with the tables ({largest}), as larger tables miss more in cache.",
        nva.drop_ns.median,
        base.drop_ns.median,
        (base.drop_ns.median - floor_prog).max(0.0),
        jited.map_or("size unknown".into(), |b| format!("{:.0} KiB of machine code", b as f64 / 1024.0)),
    )
}

fn figures(d: &[Sample], f: &[Sample]) -> Figures {
    let spread =
        |v: &[Sample], g: fn(&Sample) -> f64| Spread::of(&v.iter().map(g).collect::<Vec<_>>());
    Figures {
        drop_pps: spread(d, |x| x.received_pps),
        drop_ns: spread(d, |x| x.softirq_ns),
        fwd_pps: spread(f, |x| x.delivered_pps),
        fwd_ns: spread(f, |x| x.softirq_ns),
        program_ns: None,
    }
}

struct Figures {
    /// The XDP program's own ns per dropped frame (nva and the floor).
    program_ns: Option<f64>,
    drop_pps: Spread,
    drop_ns: Spread,
    fwd_pps: Spread,
    fwd_ns: Spread,
}

impl Figures {
    fn row(&self, rules: &str, firewall: &str, ruleset: &str) -> Vec<String> {
        vec![
            rules.into(),
            firewall.into(),
            ruleset.into(),
            format!("{:.0}", self.drop_pps.median / 1e3),
            self.drop_ns.show(0),
            self.program_ns.map_or("–".into(), |v| format!("{v:.0}")),
            format!("{:.0}", self.fwd_pps.median / 1e3),
            self.fwd_ns.show(0),
        ]
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "drop_received_pps": self.drop_pps, "drop_softirq_ns": self.drop_ns,
            "drop_program_ns": self.program_ns,
            "forward_delivered_pps": self.fwd_pps, "forward_softirq_ns": self.fwd_ns,
        })
    }
}

pub fn run(s: &Settings, out_dir: &Path) -> Result<(Section, Vec<Verdict>)> {
    let dir = out_dir.join("endtoend");
    std::fs::create_dir_all(&dir)?;
    // The bench and what it starts stay off CPU 0, the generator's CPU,
    // until this part ends.
    let _affinity = AffinityGuard::save();
    pin_to_cpu(1);
    let mut rows = Vec::new();
    let mut data = Vec::new();
    let mut at: Vec<(usize, Firewall, Figures)> = Vec::new();
    let base = floor(s)?;
    let mut jited = None;
    rows.push(base.row(
        "–",
        "XDP floor: nva's parser only",
        "parse and drop / parse and pass, no rules",
    ));
    data.push(json!({"firewall": "xdp_floor", "figures": base.json()}));
    let mut at_blocklist: Vec<(usize, Firewall, Figures)> = Vec::new();
    let runs = s
        .sizes
        .iter()
        .map(|&n| (n, Shape::Random))
        .chain(s.blocklist_sizes.iter().map(|&n| (n, Shape::Blocklist)))
        .chain(
            s.classbench_sizes
                .iter()
                .map(|&n| (n, Shape::ClassBenchAcl)),
        );
    let mut at_classbench: Vec<(usize, Figures)> = Vec::new();
    for (n, shape) in runs {
        for (i, fw) in Firewall::ALL.into_iter().enumerate() {
            if shape == Shape::ClassBenchAcl && fw != Firewall::Nva {
                continue;
            }
            let label = match shape {
                Shape::Random => n.to_string(),
                Shape::Blocklist => format!("{n} (block list)"),
                Shape::ClassBenchAcl => format!("{n} (ClassBench acl)"),
            };
            eprintln!("bench: end to end, {label} rules, {}", fw.name());
            let t = Topology::new(TOPOLOGY_ID + i as u8);
            if shape == Shape::Blocklist {
                // The server owns the blocked address, so a frame the
                // firewall let through would be counted there.
                let blocked = drop_destination(&t, shape).to_string();
                t.server
                    .ip(&["addr", "add", &format!("{blocked}/32"), "dev", SERVER_IF]);
            }
            let rules = match shape {
                Shape::Random => rule_set(n, &t),
                Shape::Blocklist => blocklist(n, &t),
                Shape::ClassBenchAcl => classbench_set(n, &t),
            };
            // Resolve the server's neighbour entry before timing.
            t.nva.exec(&["ping", "-c", "1", "-W", "1", &t.server_v4()]);
            let applied = apply(fw, &t, &rules, &dir)
                .with_context(|| format!("{} with {n} rules", fw.name()))?;
            let drop_frame = frame(&t, drop_destination(&t, shape), DROP_PORT)?;
            let fwd_frame = frame(&t, t.server_v4().parse()?, FORWARD_PORT)?;
            let (mut d, mut f) = (Vec::new(), Vec::new());
            for _ in 0..s.rounds {
                d.push(measure(&t, &drop_frame, s.seconds, None)?);
                f.push(measure(&t, &fwd_frame, s.seconds, None)?);
            }
            let program_ns = if fw == Firewall::Nva {
                jited = jited.or(jited_bytes(XDP_PROGRAM));
                measure(&t, &drop_frame, s.seconds, Some(XDP_PROGRAM))?.program_ns
            } else {
                None
            };
            if let Some(leak) = d.iter().find(|x| x.delivered_pps > 0.0) {
                bail!(
                    "{}: frames meant to be dropped reached the server ({:.0}/s)",
                    fw.name(),
                    leak.delivered_pps
                );
            }
            if f.iter().any(|x| x.delivered_pps < 0.5 * x.received_pps) {
                bail!(
                    "{}: frames meant to be forwarded did not reach the server: {f:?}",
                    fw.name()
                );
            }
            let detail = applied.detail.clone();
            drop(applied);
            let figs = Figures {
                program_ns,
                ..figures(&d, &f)
            };
            rows.push(figs.row(&label, fw.name(), &detail));
            data.push(json!({
                "rules": n, "shape": format!("{shape:?}").to_lowercase(), "firewall": fw.key(),
                "setup": detail, "figures": figs.json(),
            }));
            match shape {
                Shape::Random => at.push((n, fw, figs)),
                Shape::Blocklist => at_blocklist.push((n, fw, figs)),
                Shape::ClassBenchAcl => at_classbench.push((n, figs)),
            }
        }
    }

    let figure = "endtoend.svg";
    let series: Vec<(String, Vec<(f64, f64)>)> = Firewall::ALL
        .iter()
        .map(|&fw| {
            (
                fw.name().to_string(),
                at.iter()
                    .filter(|(_, f, _)| *f == fw)
                    .map(|(n, _, figs)| (*n as f64, figs.drop_ns.median))
                    .collect(),
            )
        })
        .collect();
    std::fs::write(
        out_dir.join(figure),
        line_plot(
            "receive-path CPU per dropped 64-byte frame",
            "rules (log scale)",
            "ns / packet (log scale)",
            &series,
            true,
        ),
    )?;

    // Capacity ratios: the receive path's CPU per packet, theirs over ours.
    let ratio = |n: usize, other: Firewall| -> Option<(f64, f64)> {
        let get = |fw: Firewall| at.iter().find(|(m, f, _)| *m == n && *f == fw);
        let (_, _, ours) = get(Firewall::Nva)?;
        let (_, _, theirs) = get(other)?;
        Some((
            theirs.drop_ns.median / ours.drop_ns.median.max(1e-9),
            ours.drop_pps.median / theirs.drop_pps.median.max(1e-9),
        ))
    };
    let big = s.sizes.iter().copied().max().unwrap_or(0);
    let small = s.sizes.iter().copied().min().unwrap_or(0);
    let mut measured = Vec::new();
    let mut met = true;
    for (n, fw, want) in [
        (big, Firewall::Iptables, 20.0),
        (big, Firewall::NftList, 10.0),
        (big, Firewall::NftSets, 1.5),
        (small, Firewall::NftList, 2.0),
        (small, Firewall::NftSets, 2.0),
    ] {
        if let Some((cpu, pps)) = ratio(n, fw) {
            met &= cpu >= want;
            measured.push(format!(
                "{cpu:.1}× {} at {n} rules (want ≥ {want}×; rig pps {pps:.1}×)",
                fw.name()
            ));
        }
    }
    let mut verdicts = vec![Verdict {
        target: format!("drop throughput at {big} rules ≥ 20 × iptables, ≥ 10 × nftables rule list, ≥ 1.5 × best nftables sets/maps; at {small} rules ≥ 2 × nftables (capacity: receive-path CPU per dropped packet)"),
        measured: measured.join("; "),
        met: (big == 10_000 && small == 10).then_some(met),
    }];
    let blocklist_at = |fw: Firewall| at_blocklist.iter().find(|(_, f, _)| *f == fw);
    if let (Some((n, _, ours)), Some((_, _, sets))) =
        (blocklist_at(Firewall::Nva), blocklist_at(Firewall::NftSets))
    {
        let cpu = sets.drop_ns.median / ours.drop_ns.median.max(1e-9);
        verdicts.push(Verdict {
            target: "block list of 10,000 prefixes at least as fast as nftables with a set (receive-path CPU per dropped packet)".into(),
            measured: format!(
                "{cpu:.2}× nftables sets at {n} prefixes ({:.0} against {:.0} ns)",
                ours.drop_ns.median, sets.drop_ns.median
            ),
            met: (*n == 10_000).then_some(cpu >= 1.0),
        });
    }
    // The end-to-end target: a new flow's packet (each frame is one,
    // `stateful = false`) at 100,000 rules against 10 rules, nva alone.
    let nva_at = |n: usize| at.iter().find(|(m, f, _)| *m == n && *f == Firewall::Nva);
    if let (Some((n, large)), Some((small_n, _, small))) =
        (at_classbench.iter().max_by_key(|(n, _)| *n), nva_at(small))
    {
        let ratio = large.drop_ns.median / small.drop_ns.median.max(1e-9);
        verdicts.push(Verdict {
            target: "new-flow packet at 100,000 rules ≤ 1.3 × at 10 rules end to end (receive-path CPU per dropped packet; ClassBench acl against random)".into(),
            measured: format!(
                "{ratio:.2}× at {n} ClassBench acl rules against {small_n} random rules ({:.0} against {:.0} ns; XDP program alone {} against {} ns)",
                large.drop_ns.median,
                small.drop_ns.median,
                large.program_ns.map_or("–".into(), |p| format!("{p:.0}")),
                small.program_ns.map_or("–".into(), |p| format!("{p:.0}")),
            ),
            met: (*n == 100_000).then_some(ratio <= 1.3),
        });
    }
    let section = Section {
        title: "End to end against nftables and iptables".into(),
        intro: format!(
            "client ── nva ── server network namespaces joined by veth; the NVA namespace forwards. Random rule sets as above (interface matches removed, and rules that match the benchmark's frames drawn again) plus a last rule allowing udp to the server on one port, and block lists (below), translated for each firewall: nva (`nva agent`, XDP native on veth, `stateful = false`, default drop); an nftables rule list (one rule per nva rule, lists as anonymous sets, `inet` forward hook, policy drop); the nftables ruleset an expert would write with sets (netdev ingress hook before routing; the rules regrouped into blocks of one action, where moving a rule never changes a verdict, and each block matched with one concatenated set per field shape); iptables-legacy (FORWARD, policy drop, one rule per source × destination, multiport). The generator (an AF_PACKET socket, sendmmsg, qdisc bypassed) sends 64-byte UDP frames from CPU 0 as fast as it can: frames that no rule matches (dropped by the default after every rule is considered) and frames that only the last rule allows (forwarded). {} s per measurement, {} rounds, median (min–max). veth runs the receiver's processing in the sender's softirq on the same CPU, so the kpps columns are what this one-CPU rig moves (generator included), and ns/packet is the receive path's CPU: CPU 0's softirq time (sampled by the kernel at every tick) over the frames received.",
            s.seconds, s.rounds
        ),
        columns: ["rules", "firewall", "ruleset", "drop kpps", "drop ns/packet", "of which XDP program ns", "forward kpps", "forward ns/packet"]
            .map(String::from)
            .to_vec(),
        rows,
        notes: vec![
            where_time_goes(&at, &base, jited),
            blocklist_note(&at_blocklist),
            "Capacity ratios in the verdict compare receive-path ns/packet; the rig's pps ratio is given beside them (the generator's own cost is in every pps figure).".into(),
            "Softirq time is sampled at each timer tick unless the kernel accounts IRQ time precisely (CONFIG_IRQ_TIME_ACCOUNTING), so short runs with cheap packets carry sampling noise of a few ticks.".into(),
        ],
        figure: Some(figure.into()),
        data: json!(data),
    };
    Ok((section, verdicts))
}
