//! Forwarding end to end: who forwards what the rules allow. nva with
//! `forward = "kernel"` (XDP_PASS, Linux routes) against `forward = "xdp"`
//! (the program routes and redirects), stateless at 10 and 10,000 rules;
//! and nva `forward = "xdp"`, stateful, on an established flow against the
//! stateful Linux NVA a user would build instead: Linux forwarding with an
//! nftables `ct state established accept` in front of the same rules.
//!
//! Same rig as the end-to-end part: 64-byte UDP frames of one flow from an
//! AF_PACKET generator on CPU 0, the receive path's CPU per frame (CPU 0's
//! softirq time over the frames received) and the frames delivered per
//! second. On veth the receiving namespace's own work (the server's UDP
//! stack) is in every figure.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Result};
use nva::classifier::rulegen::rules_toml;
use nva_tests::agent::RunningAgent;
use nva_tests::{in_netns, Topology, CLIENT_IF, NVA_IN_IF, NVA_OUT_IF, SERVER_IF};
use serde_json::json;

use crate::baselines;
use crate::endtoend::{self, measure, pin_to_cpu, AffinityGuard, Sample, FORWARD_PORT, SPORT};
use crate::report::{line_plot, Section, Spread, Verdict};

/// Topology ids 237..=240 (one per setup, created and removed in turn).
const TOPOLOGY_ID: u8 = 237;

pub struct Settings {
    pub sizes: Vec<usize>,
    pub seconds: f64,
    pub rounds: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                sizes: vec![10],
                seconds: 0.5,
                rounds: 1,
            }
        } else {
            Settings {
                sizes: vec![10, 10_000],
                seconds: 2.0,
                rounds: 3,
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    NvaKernel,
    NvaXdp,
    NvaXdpStateful,
    LinuxCtEstablished,
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::NvaKernel,
        Setup::NvaXdp,
        Setup::NvaXdpStateful,
        Setup::LinuxCtEstablished,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::NvaKernel => "nva, forward = \"kernel\", stateless",
            Setup::NvaXdp => "nva, forward = \"xdp\", stateless",
            Setup::NvaXdpStateful => "nva, forward = \"xdp\", stateful, established flow",
            Setup::LinuxCtEstablished => {
                "Linux forwarding, nftables ct state established accept, established flow"
            }
        }
    }

    fn key(self) -> &'static str {
        match self {
            Setup::NvaKernel => "nva_kernel",
            Setup::NvaXdp => "nva_xdp",
            Setup::NvaXdpStateful => "nva_xdp_stateful",
            Setup::LinuxCtEstablished => "linux_ct_established",
        }
    }
}

/// GRO on and TX checksum offload off at the NVA's peers, in every setup
/// alike: a redirect into a veth needs the peer's GRO (or an XDP program).
fn prepare(t: &Topology) -> Result<()> {
    for (ns, dev) in [(&t.client, CLIENT_IF), (&t.server, SERVER_IF)] {
        let out = ns.exec(&["ethtool", "-K", dev, "gro", "on", "tx", "off"]);
        if !out.status.success() {
            bail!("ethtool: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// One datagram of the benchmark's flow each way (client to server, the
/// server's answer), so that both firewalls hold it as an established
/// (replied) flow before the flood.
fn establish(t: &Topology) -> Result<()> {
    let client = SocketAddr::new(t.client_v4().parse()?, SPORT);
    let server = SocketAddr::new(t.server_v4().parse()?, FORWARD_PORT);
    let rx = in_netns(&t.server, || UdpSocket::bind(server))?;
    rx.set_read_timeout(Some(Duration::from_secs(2)))?;
    let tx = in_netns(&t.client, || UdpSocket::bind(client))?;
    tx.set_read_timeout(Some(Duration::from_secs(2)))?;
    tx.send_to(b"hello", server)?;
    let mut buf = [0u8; 16];
    let (_, from) = rx.recv_from(&mut buf)?;
    rx.send_to(b"answer", from)?;
    tx.recv_from(&mut buf)?;
    Ok(())
}

fn nva_config(rules: &[nva::policy::model::Rule], forward: &str, stateful: bool) -> String {
    format!(
        "[agent]\ninterfaces = [\"{NVA_IN_IF}\", \"{NVA_OUT_IF}\"]\nhealth_listen = \"127.0.0.1:9090\"\nforward = \"{forward}\"\nbpffs = \"{{bpffs}}\"\n\n[policy]\ndefault = \"drop\"\nstateful = {stateful}\n\n{}",
        rules_toml(rules)
    )
}

/// The setup's samples at `n` rules, on a fresh topology.
fn run_setup(setup: Setup, n: usize, s: &Settings, k: usize) -> Result<(Vec<Sample>, Option<f64>)> {
    eprintln!("bench: forwarding, {} at {n} rules", setup.name());
    let t = Topology::new(TOPOLOGY_ID + k as u8);
    prepare(&t)?;
    t.nva.exec(&["ping", "-c", "1", "-W", "1", &t.server_v4()]);
    let rules = endtoend::rule_set(n, &t);
    let _agent = match setup {
        Setup::NvaKernel => Some(RunningAgent::start(
            &t,
            &nva_config(&rules, "kernel", false),
            true,
        )),
        Setup::NvaXdp => Some(RunningAgent::start(
            &t,
            &nva_config(&rules, "xdp", false),
            true,
        )),
        Setup::NvaXdpStateful => Some(RunningAgent::start(
            &t,
            &nva_config(&rules, "xdp", true),
            true,
        )),
        Setup::LinuxCtEstablished => {
            let text = baselines::nft_rule_list(&rules).replacen(
                "policy drop;\n",
                "policy drop;\n    ct state established,related accept\n",
                1,
            );
            let mut child = t
                .nva
                .command(&["nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()?;
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())?;
            if !child.wait()?.success() {
                bail!("nft -f failed");
            }
            None
        }
    };
    if matches!(setup, Setup::NvaXdpStateful | Setup::LinuxCtEstablished) {
        establish(&t)?;
    }
    let frame = endtoend::frame(&t, t.server_v4().parse()?, FORWARD_PORT)?;
    let mut samples = Vec::new();
    for _ in 0..s.rounds {
        samples.push(measure(&t, &frame, s.seconds, None)?);
    }
    if samples.iter().all(|x| x.delivered_pps < 1.0) {
        bail!("{}: nothing reached the server", setup.name());
    }
    if matches!(setup, Setup::NvaXdp | Setup::NvaXdpStateful) {
        // The frames took the fast path, not a detour through the kernel.
        let metric = |name: &str| -> f64 {
            nva_tests::traffic::http_get(&t.nva, "127.0.0.1:9090", "/metrics")
                .ok()
                .and_then(|(_, body)| {
                    body.lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                })
                .unwrap_or(0.0)
        };
        let routed = metric("nva_forwarded_total{path=\"xdp\",reason=\"routed\"}");
        let passed = metric("nva_forwarded_total{path=\"kernel\",reason=\"no_neighbour\"}")
            + metric("nva_forwarded_total{path=\"kernel\",reason=\"local\"}")
            + metric("nva_forwarded_total{path=\"kernel\",reason=\"no_route\"}");
        if routed < 1000.0 || passed > routed / 100.0 {
            bail!(
                "{}: {routed} frames routed in XDP, {passed} passed to the kernel",
                setup.name()
            );
        }
    }
    // The program's own time, from one extra run with the kernel's BPF
    // run statistics on.
    let program_ns = match setup {
        Setup::LinuxCtEstablished => None,
        _ => measure(&t, &frame, s.seconds, Some(nva_common::XDP_PROGRAM))?.program_ns,
    };
    Ok((samples, program_ns))
}

pub fn run(s: &Settings, out_dir: &std::path::Path) -> Result<(Section, Vec<Verdict>)> {
    let _affinity = AffinityGuard::save();
    pin_to_cpu(1);
    let mut rows = Vec::new();
    let mut data = Vec::new();
    let mut verdicts = Vec::new();
    let mut xdp_vs_kernel = Vec::new();
    let mut stateful_vs_linux = Vec::new();
    let mut series: std::collections::BTreeMap<&str, Vec<(f64, f64)>> = Default::default();
    for &n in &s.sizes {
        let mut ns_of = std::collections::HashMap::new();
        for (k, setup) in Setup::ALL.iter().enumerate() {
            let (samples, program_ns) = run_setup(*setup, n, s, k)?;
            let ns = Spread::of(&samples.iter().map(|x| x.softirq_ns).collect::<Vec<_>>());
            let pps = Spread::of(&samples.iter().map(|x| x.delivered_pps).collect::<Vec<_>>());
            rows.push(vec![
                n.to_string(),
                setup.name().into(),
                ns.show(0),
                program_ns.map_or("–".into(), |p| format!("{p:.0}")),
                format!("{:.0}", pps.median / 1e3),
            ]);
            data.push(json!({
                "rules": n,
                "setup": setup.key(),
                "softirq_ns": ns,
                "program_ns": program_ns,
                "delivered_pps": pps,
            }));
            ns_of.insert(setup.key(), ns.median);
        }
        for setup in Setup::ALL {
            series
                .entry(setup.name())
                .or_default()
                .push((n as f64, ns_of[setup.key()]));
        }
        let ratio = |a: &str, b: &str| ns_of[a] / ns_of[b].max(1e-9);
        xdp_vs_kernel.push((n, ratio("nva_xdp", "nva_kernel")));
        stateful_vs_linux.push((n, ratio("nva_xdp_stateful", "linux_ct_established")));
    }
    let show = |v: &[(usize, f64)]| {
        v.iter()
            .map(|(n, r)| format!("{r:.2}× at {n} rules"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    verdicts.push(Verdict {
        target:
            "forward = \"xdp\" ≤ 0.6 × forward = \"kernel\" (receive-path CPU per forwarded packet)"
                .into(),
        measured: show(&xdp_vs_kernel),
        met: Some(xdp_vs_kernel.iter().all(|(_, r)| *r <= 0.6)),
    });
    verdicts.push(Verdict {
        target: "forward = \"xdp\", stateful, established ≤ 0.4 × Linux forwarding with nftables ct state established accept".into(),
        measured: show(&stateful_vs_linux),
        met: Some(stateful_vs_linux.iter().all(|(_, r)| *r <= 0.4)),
    });
    let figure = "forward.svg";
    let lines: Vec<(String, Vec<(f64, f64)>)> = Setup::ALL
        .iter()
        .map(|setup| (setup.name().to_string(), series[setup.name()].clone()))
        .collect();
    std::fs::write(
        out_dir.join(figure),
        line_plot(
            "receive-path CPU per forwarded 64-byte frame",
            "rules (log scale)",
            "ns / packet",
            &lines,
            false,
        ),
    )?;
    let section = Section {
        title: "Forwarding: XDP against the kernel".into(),
        intro: format!(
            "Who forwards what the rules allow: 64-byte UDP frames of one flow from the client to the server (allowed by the last of n random rules), {} s per measurement, {} rounds, median (min–max). Receive-path CPU per frame: CPU 0's softirq time over the frames the NVA received, which on veth includes the server namespace's own receive work in every setup; delivered: frames per second that reached the server. Stateful setups first exchange one datagram each way, so the flood is an established (replied) flow for both. GRO is on and TX checksum offload off at the NVA's peers in every setup (a redirect into a veth needs the peer's GRO).",
            s.seconds, s.rounds
        ),
        columns: ["rules", "setup", "receive-path ns per frame", "program ns per frame", "delivered kpps"].map(String::from).to_vec(),
        rows,
        notes: vec![
            "The established flow's packets cost nva one conntrack lookup and no classification, whatever the rule count; Linux's stateful path also skips the rule list after `ct state established accept`.".into(),
        ],
        figure: Some(figure.into()),
        data: json!(data),
    };
    Ok((section, verdicts))
}
