//! What NAT costs. In the kernel (BPF_PROG_TEST_RUN): a packet of an
//! established translated flow against one of an established untranslated
//! flow, the same rules otherwise. End to end: the receive path's CPU per
//! translated packet through nva (`forward = "kernel"`: XDP rewrites, the
//! kernel forwards) against nftables' NAT on the same topology and policy,
//! with nva untranslated beside them for scale.
//!
//! BPF_PROG_TEST_RUN repeats a run on the same buffer, which the program
//! rewrites: the translated flow is therefore a DNAT to its own destination
//! (the binding is looked up and every field and checksum rewritten, with
//! the same values), so that each repetition sees the same packet.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nva::classifier::compiler::compile;
use nva::datapath::DataPath;
use nva::nat::CompiledNat;
use nva::policy::config::parse_config;
use nva_common::XDP_PASS;
use nva_tests::agent::RunningAgent;
use nva_tests::frames::{ethernet, ipv4, udp, with_checksums, ETH_P_IP};
use nva_tests::Topology;
use serde_json::json;

use crate::endtoend::{frame, measure, Sample};
use crate::report::{Section, Spread, Verdict};

/// Topology id of the end-to-end runs (one at a time).
const TOPOLOGY_ID: u8 = 236;
/// The translated service's public port and the workload's port.
const PUBLIC_PORT: u16 = 9;
const WORKLOAD_PORT: u16 = 9;

pub struct Settings {
    pub repeat: u32,
    pub rounds: usize,
    pub seconds: f64,
    pub e2e_rounds: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                repeat: 10_000,
                rounds: 3,
                seconds: 0.5,
                e2e_rounds: 1,
            }
        } else {
            Settings {
                repeat: 200_000,
                rounds: 9,
                seconds: 2.0,
                e2e_rounds: 3,
            }
        }
    }
}

const TEST_RUN_CONFIG: &str = r#"
[agent]
interfaces = ["eth0"]

[policy]
default = "drop"
stateful = true

[[rules]]
name = "plain"
action = "allow"
proto = "udp"
dst = ["10.1.0.10/32"]
dport = ["53"]

[[rules]]
name = "published"
action = "allow"
proto = "udp"
dst = ["198.51.100.1/32"]
dport = ["53"]

[[nat]]
name = "same-place"
kind = "dnat"
proto = "udp"
dst = ["198.51.100.1/32"]
dport = ["53"]
to = "198.51.100.1:53"
"#;

fn udp4(dst: &str) -> Vec<u8> {
    with_checksums(ethernet(
        &[],
        ETH_P_IP,
        &ipv4(
            "192.0.2.7".parse().unwrap(),
            dst.parse().unwrap(),
            17,
            &[],
            0,
            &udp(40000, 53, b"nat bench payload"),
        ),
    ))
}

/// ns per established packet: (translated, untranslated, ratio), each a
/// spread over the rounds.
fn test_run(s: &Settings) -> Result<(Spread, Spread, Spread)> {
    let config =
        parse_config("bench.toml", TEST_RUN_CONFIG).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let compiled = compile(&config.rules, &config.policy)?;
    let nat = CompiledNat::compile(&config.nat).tables(&[0], &|_| None);
    let dp = DataPath::load_with_nat(&compiled, &nat, 1, &|_| None)?;
    let translated = udp4("198.51.100.1");
    let plain = udp4("10.1.0.10");
    // The first packets open the flows.
    for f in [&translated, &plain] {
        if dp.test_run(f, 0)? != XDP_PASS {
            bail!("the bench's flows are not admitted");
        }
    }
    let (mut t, mut p, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.rounds {
        let (a, dt) = dp.time_run(&translated, s.repeat)?;
        let (b, dp_) = dp.time_run(&plain, s.repeat)?;
        if a != XDP_PASS || b != XDP_PASS {
            bail!("an established packet was not passed");
        }
        let (dt, dp_) = (dt.as_nanos() as f64, dp_.as_nanos().max(1) as f64);
        t.push(dt);
        p.push(dp_);
        r.push(dt / dp_);
    }
    Ok((Spread::of(&t), Spread::of(&p), Spread::of(&r)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    NvaTranslated,
    NvaPlain,
    NftNat,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::NvaTranslated => "nva, DNAT",
            Setup::NvaPlain => "nva, no NAT (same flow to the workload)",
            Setup::NftNat => "nftables NAT",
        }
    }
}

fn nva_config(t: &Topology) -> String {
    format!(
        r#"
[agent]
interfaces = ["{n0}", "{n1}"]
health_listen = "127.0.0.1:9090"
bpffs = "{{bpffs}}"

[policy]
default = "drop"
stateful = true

[[rules]]
name = "service"
action = "allow"
proto = "udp"
dst = ["{s4}/32"]
dport = ["{WORKLOAD_PORT}"]

[[nat]]
name = "service-in"
kind = "dnat"
proto = "udp"
dst = ["{p4}/32"]
dport = ["{PUBLIC_PORT}"]
to = "{s4}:{WORKLOAD_PORT}"
"#,
        n0 = nva_tests::NVA_IN_IF,
        n1 = nva_tests::NVA_OUT_IF,
        s4 = t.server_v4(),
        p4 = t.nva_in_v4(),
    )
}

fn nft_nat(t: &Topology) -> String {
    format!(
        r#"
table ip bench_nat {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {p4} udp dport {PUBLIC_PORT} dnat to {s4}:{WORKLOAD_PORT}
  }}
  chain forward_filter {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ip daddr {s4} udp dport {WORKLOAD_PORT} accept
  }}
}}
"#,
        s4 = t.server_v4(),
        p4 = t.nva_in_v4(),
    )
}

/// One end-to-end measurement of `setup` on a fresh topology.
fn end_to_end(setup: Setup, s: &Settings) -> Result<Vec<Sample>> {
    let t = Topology::new(TOPOLOGY_ID);
    let _agent = match setup {
        Setup::NvaTranslated | Setup::NvaPlain => {
            Some(RunningAgent::start(&t, &nva_config(&t), true))
        }
        Setup::NftNat => {
            let mut child = t
                .nva
                .command(&["nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .context("nft")?;
            use std::io::Write as _;
            child
                .stdin
                .take()
                .context("nft stdin")?
                .write_all(nft_nat(&t).as_bytes())?;
            if !child.wait()?.success() {
                bail!("the nftables NAT ruleset does not load");
            }
            None
        }
    };
    let dst: IpAddr = match setup {
        Setup::NvaPlain => t.server_v4().parse()?,
        _ => t.nva_in_v4().parse()?,
    };
    let frame = frame(&t, dst, PUBLIC_PORT)?;
    let mut samples = Vec::new();
    for _ in 0..s.e2e_rounds {
        let sample = measure(&t, &frame, s.seconds, None)?;
        if sample.delivered_pps <= 0.0 {
            bail!("{}: nothing reached the workload", setup.name());
        }
        samples.push(sample);
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(samples)
}

pub fn run(s: &Settings) -> Result<(Section, Vec<Verdict>)> {
    let (translated, plain, ratio) = test_run(s).context("NAT in BPF_PROG_TEST_RUN")?;
    let mut rows = vec![vec![
        "BPF_PROG_TEST_RUN, established UDP".into(),
        format!("{} ns", translated.show(1)),
        format!("{} ns", plain.show(1)),
        format!("{}×", ratio.show(2)),
    ]];
    let mut e2e = Vec::new();
    for setup in [Setup::NvaTranslated, Setup::NvaPlain, Setup::NftNat] {
        let samples = end_to_end(setup, s).with_context(|| setup.name())?;
        let ns = Spread::of(&samples.iter().map(|x| x.softirq_ns).collect::<Vec<_>>());
        let pps = Spread::of(&samples.iter().map(|x| x.delivered_pps).collect::<Vec<_>>());
        e2e.push((setup, ns, pps));
    }
    let get = |w: Setup| {
        e2e.iter()
            .find(|(s, _, _)| *s == w)
            .map(|(_, ns, pps)| (*ns, *pps))
    };
    let (nva_ns, _) = get(Setup::NvaTranslated).expect("measured");
    let (nft_ns, _) = get(Setup::NftNat).expect("measured");
    for (setup, ns, pps) in &e2e {
        rows.push(vec![
            format!("end to end: {}", setup.name()),
            format!("{} ns/packet", ns.show(0)),
            format!("{:.0} kpps delivered", pps.median / 1e3),
            String::new(),
        ]);
    }
    let verdicts = vec![
        Verdict {
            target: "translated packet ≤ 1.3 × untranslated tracked packet (BPF_PROG_TEST_RUN)"
                .into(),
            measured: format!(
                "{:.2}× ({:.1} vs {:.1} ns)",
                ratio.median, translated.median, plain.median
            ),
            met: Some(ratio.median <= 1.3),
        },
        Verdict {
            target: "translated packet end to end no costlier than nftables NAT (receive-path CPU)"
                .into(),
            measured: format!("{:.0} vs {:.0} ns/packet", nva_ns.median, nft_ns.median),
            met: Some(nva_ns.median <= nft_ns.median),
        },
    ];
    let section = Section {
        title: "NAT".into(),
        intro: "Per-packet cost of translation: in the kernel against an untranslated tracked flow, and end to end (64-byte UDP frames to the public address, DNAT to the workload, forward = \"kernel\") against nftables NAT on the same topology and policy.".into(),
        columns: vec!["measurement".into(), "translated".into(), "untranslated / delivered".into(), "ratio".into()],
        rows,
        notes: vec![
            "The in-kernel translated flow is a DNAT to its own destination: BPF_PROG_TEST_RUN repeats on one buffer, which a real translation would change between runs. The binding lookup and every rewrite and checksum update happen as for any translation.".into(),
            "End to end: CPU 0's softirq time per received frame (the generator shares CPU 0, see the end-to-end section).".into(),
        ],
        figure: None,
        data: json!({
            "test_run": {"translated_ns": translated, "untranslated_ns": plain, "ratio": ratio},
            "end_to_end": e2e.iter().map(|(s, ns, pps)| json!({"setup": s.name(), "softirq_ns": ns, "delivered_pps": pps})).collect::<Vec<_>>(),
        }),
    };
    Ok((section, verdicts))
}
