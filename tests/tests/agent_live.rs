//! Live operations with real traffic: atomic reloads under a steady flow,
//! refused reloads, and an agent killed with SIGKILL and restarted.

use std::time::Duration;

use nva::classifier::rulegen::{rules_toml, Rng, RuleGen};
use nva::policy::model::{Action, Rule};
use nva_tests::agent::RunningAgent;
use nva_tests::traffic::{udp_delivered, SteadyFlow};
use nva_tests::{require_root, Topology, NVA_IN_IF, NVA_OUT_IF};

const STEADY_PORT: u16 = 7000;
const TOGGLED_PORT: u16 = 7001;

/// A config whose first rules allow the steady flow and (in set A) the
/// toggled flow or (in set B) drop it, followed by `random` random rules.
fn config(set_a: bool, random: usize) -> String {
    let mut text = format!(
        r#"
[agent]
interfaces = ["{NVA_IN_IF}", "{NVA_OUT_IF}"]
health_listen = "127.0.0.1:9090"
bpffs = "{{bpffs}}"

[policy]
default = "drop"

[[rules]]
name = "steady"
action = "allow"
proto = "udp"
dport = ["{STEADY_PORT}"]

[[rules]]
name = "toggled"
action = "{}"
proto = "udp"
dport = ["{TOGGLED_PORT}"]

"#,
        if set_a { "allow" } else { "drop" }
    );
    if random > 0 {
        let mut rng = Rng::new(if set_a { 1 } else { 2 });
        let gen = RuleGen::new(&mut rng, random);
        let mut rules: Vec<Rule> = gen.rules(&mut rng, random);
        for (i, r) in rules.iter_mut().enumerate() {
            r.name = format!("random-{i}");
            r.in_iface = r
                .in_iface
                .as_deref()
                .map(|n| if n == "eth0" { NVA_IN_IF } else { NVA_OUT_IF }.to_string());
            // Random rules must not be catch-alls in front of nothing; they
            // come after the two flow rules anyway.
            if r.action == Action::Allow && r.src.is_empty() && r.dst.is_empty() {
                r.action = Action::Drop;
            }
        }
        text.push_str(&rules_toml(&rules));
    }
    text
}

/// The steady flow: client -> server udp/STEADY_PORT, one datagram per ms.
fn steady_flow(t: &Topology) -> SteadyFlow {
    SteadyFlow::client_to_server(t, STEADY_PORT, 1_000_000)
}

fn reload(agent: &RunningAgent) -> (bool, String) {
    let out = agent.nva(&["reload"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn reloads_swap_atomically_without_loss() {
    require_root();
    let t = Topology::new(212);
    let agent = RunningAgent::start(&t, &config(true, 10_000), true);
    let flow = steady_flow(&t);
    for i in 0..20 {
        let set_a = i % 2 == 1; // starts on A: the first reload goes to B
        agent.write_config(&config(set_a, 10_000));
        let (ok, out) = reload(&agent);
        assert!(ok, "reload {i}: {out}");
        // The toggled flow passes exactly while set A is active.
        let got = udp_delivered(&t.client, &t.server, &t.server_v4(), TOGGLED_PORT, 5);
        assert_eq!(
            got,
            if set_a { 5 } else { 0 },
            "reload {i}: set A = {set_a}"
        );
    }
    let (sent, received) = flow.finish();
    assert!(sent > 1000, "the steady flow ran ({sent} sent)");
    assert_eq!(
        received, sent,
        "no packet of the steady flow lost across 20 reloads"
    );
    let state = agent.state().unwrap();
    assert_eq!(state["reloads_ok"], 20);
}

#[test]
fn bad_reload_is_refused_and_rules_stay() {
    require_root();
    let t = Topology::new(213);
    let agent = RunningAgent::start(&t, &config(false, 0), true);
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), TOGGLED_PORT, 5),
        0
    );
    // Set A, but with an error on line 19: the whole file is refused.
    let bad = config(true, 0).replace(
        &format!("dport = [\"{TOGGLED_PORT}\"]"),
        "dport = [\"90-80\"]",
    );
    agent.write_config(&bad);
    let (ok, out) = reload(&agent);
    assert!(!ok, "a bad config must be refused: {out}");
    assert!(
        out.contains("nva.toml:") && out.contains("out of order"),
        "error names the place: {out}"
    );
    assert!(out.contains("stays in force"), "{out}");
    // Still set B: the toggled flow is dropped, the steady one passes.
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), TOGGLED_PORT, 5),
        0
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), STEADY_PORT, 5),
        5
    );
    let state = agent.state().unwrap();
    assert_eq!(state["reloads_error"], 1);
    assert!(state["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("out of order"));
}

#[test]
fn sigkill_keeps_filtering_and_restart_adopts() {
    require_root();
    let t = Topology::new(214);
    let mut agent = RunningAgent::start(&t, &config(false, 100), true);
    let prog_before = t.nva.exec_ok(&["ip", "link", "show", "dev", NVA_IN_IF]);
    assert!(prog_before.contains("prog/xdp"), "{prog_before}");
    // A second agent on the same bpffs is refused, and changes nothing.
    let second = t
        .nva
        .nsenter(&[
            nva_tests::nva_binary().to_str().unwrap(),
            "agent",
            "--config",
            agent.config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another agent"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let flow = steady_flow(&t);
    std::thread::sleep(Duration::from_millis(300));
    agent.kill9();
    // Filtering continues unchanged without the agent.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), TOGGLED_PORT, 5),
        0
    );
    let counted_while_dead = agent.packets_of("steady");
    assert!(
        counted_while_dead > 100,
        "counters readable from the pins: {counted_while_dead}"
    );
    // Restart: adopts without detaching; counters continue.
    agent.spawn(&t.nva);
    let after = t.nva.exec_ok(&["ip", "link", "show", "dev", NVA_IN_IF]);
    assert!(after.contains("prog/xdp"), "{after}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        agent.packets_of("steady") > counted_while_dead,
        "counters continue"
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), TOGGLED_PORT, 5),
        0
    );
    let (sent, received) = flow.finish();
    assert_eq!(received, sent, "no loss across SIGKILL and restart");
    assert!(agent.state().unwrap()["generation"].as_u64().unwrap() >= 2);

    // Clean uninstall: refused while the agent runs, done once it is gone.
    let out = agent.nva(&["detach"]);
    assert!(
        !out.status.success(),
        "detach must refuse while the agent runs"
    );
    agent.kill9();
    let out = agent.nva(&["detach"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dev in [NVA_IN_IF, NVA_OUT_IF] {
        let link = t.nva.exec_ok(&["ip", "link", "show", "dev", dev]);
        assert!(!link.contains("prog/xdp"), "detached from {dev}: {link}");
    }
    assert!(!std::path::Path::new(&agent.bpffs).exists(), "pins removed");
}
