//! The health probe tells the truth about the data path; metrics count what
//! was sent.

use std::time::{Duration, Instant};

use nva_tests::agent::RunningAgent;
use nva_tests::traffic::{http_get, tcp_connects, udp_delivered};
use nva_tests::{require_root, wait_until, Topology, NVA_IN_IF, NVA_OUT_IF};

const HEALTH: &str = "127.0.0.1:9090";
const TCP_PROBE: &str = "127.0.0.1:9091";

fn config() -> String {
    format!(
        r#"
[agent]
interfaces = ["{NVA_IN_IF}", "{NVA_OUT_IF}"]
health_listen = "{HEALTH}"
tcp_probe_listen = "{TCP_PROBE}"
health_interval_ms = 200
bpffs = "{{bpffs}}"

[policy]
default = "drop"

[[rules]]
name = "steady"
action = "allow"
proto = "udp"
dport = ["7000"]
"#
    )
}

fn health(t: &Topology) -> (u16, String) {
    http_get(&t.nva, HEALTH, "/health").expect("GET /health")
}

/// Waits for /health to return `code`; returns how long it took.
fn until_health(t: &Topology, code: u16, within: Duration) -> Duration {
    let start = Instant::now();
    let ok = wait_until(within, || health(t).0 == code);
    assert!(
        ok,
        "/health did not become {code} within {within:?}: {:?}",
        health(t)
    );
    start.elapsed()
}

/// A topology with an agent that reports healthy.
fn healthy_agent(id: u8) -> (Topology, RunningAgent) {
    require_root();
    let t = Topology::new(id);
    let agent = RunningAgent::start(&t, &config(), true);
    until_health(&t, 200, Duration::from_secs(5));
    (t, agent)
}

#[test]
fn health_follows_the_data_path() {
    let (t, agent) = healthy_agent(215);
    assert!(
        tcp_connects(&t.nva, TCP_PROBE),
        "TCP probe accepts while healthy"
    );
    let (_, status) = http_get(&t.nva, HEALTH, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["rules"], 1);
    assert_eq!(status["generation"], 1);

    // Detached behind the agent's back: 503 within the probe interval
    // (200 ms, plus one check), naming the interface; the TCP probe refuses.
    agent.detach_link(NVA_IN_IF);
    let took = until_health(&t, 503, Duration::from_secs(2));
    // One interval to notice, plus HTTP and polling slack on a busy machine.
    assert!(took < Duration::from_millis(1000), "503 after {took:?}");
    assert!(health(&t).1.contains(&format!("attached:{NVA_IN_IF}")));
    assert!(
        wait_until(Duration::from_secs(1), || !tcp_connects(&t.nva, TCP_PROBE)),
        "TCP probe refuses while unhealthy"
    );
    // The agent does not re-attach by itself (an operator or a failover
    // decides); a reload repairs it.
    let out = agent.nva(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until_health(&t, 200, Duration::from_secs(3));
    assert!(wait_until(Duration::from_secs(1), || tcp_connects(
        &t.nva, TCP_PROBE
    )));

    // An interface going down is unhealthy too.
    t.nva.ip(&["link", "set", NVA_OUT_IF, "down"]);
    until_health(&t, 503, Duration::from_secs(2));
    assert!(health(&t).1.contains(&format!("link_up:{NVA_OUT_IF}")));
    t.nva.ip(&["link", "set", NVA_OUT_IF, "up"]);
    until_health(&t, 200, Duration::from_secs(3));

    // nva status tells the same.
    let out = agent.nva(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("healthy"), "{text}");
}

#[test]
fn metrics_count_the_packets_sent() {
    require_root();
    let t = Topology::new(216);
    let agent = RunningAgent::start(&t, &config(), true);
    // ARP and v6 neighbour traffic do not match "steady"; only this does.
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 7000, 37),
        37
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 7001, 5),
        0
    );
    let (code, body) = http_get(&t.nva, HEALTH, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("nva_rule_packets_total{rule=\"steady\"} 37\n"),
        "{body}"
    );
    assert!(body.contains("nva_ruleset_generation 1\n"), "{body}");
    assert!(
        body.contains("nva_reloads_total{result=\"ok\"} 0\n"),
        "{body}"
    );
    let dropped = body
        .lines()
        .find(|l| l.starts_with("nva_packets_total{verdict=\"drop\",reason=\"default\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(dropped >= 5, "default drops counted: {dropped}");
    // A refused reload is counted as an error.
    agent.write_config(&config().replace("dport = [\"7000\"]", "dport = [\"70000\"]"));
    assert!(!agent.nva(&["reload"]).status.success());
    let body = wait_until(Duration::from_secs(2), || {
        http_get(&t.nva, HEALTH, "/metrics")
            .unwrap()
            .1
            .contains("nva_reloads_total{result=\"error\"} 1\n")
    });
    assert!(body, "reload error counted");
    // Health answers fast, also under repeated polling.
    for _ in 0..50 {
        let start = Instant::now();
        assert_eq!(health(&t).0, 200);
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
    }
}

#[test]
fn logged_rules_and_drops_emit_rate_limited_events() {
    require_root();
    let t = Topology::new(217);
    let config = config()
        .replace("[policy]\n", "[policy]\nlog_drops = true\n")
        .replace("dport = [\"7000\"]\n", "dport = [\"7000\"]\nlog = true\n");
    let agent = RunningAgent::start(&t, &config, true);
    // 200 datagrams in well under 2 s: far more than the per-second budget.
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 7000, 200),
        200
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 7002, 20),
        0
    );
    std::thread::sleep(Duration::from_millis(500));
    let events: Vec<serde_json::Value> = agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "nva::event")
        .collect();
    let of = |rule: &str| {
        events
            .iter()
            .filter(|e| e["fields"]["rule"] == rule)
            .collect::<Vec<_>>()
    };
    let steady = of("steady");
    if steady.is_empty() {
        eprintln!("agent log:\n{}", agent.log());
    }
    assert!(!steady.is_empty(), "logged rule emits events: {events:?}");
    // 10 per second per CPU; the send takes at most a few seconds.
    assert!(
        steady.len() <= 10 * 2 * 4,
        "rate limited: {} events",
        steady.len()
    );
    assert!(steady.len() < 200, "sampled, not one per packet");
    assert_eq!(steady[0]["fields"]["dport"], 7000);
    assert_eq!(steady[0]["fields"]["verdict"], "pass");
    assert_eq!(steady[0]["fields"]["src"], t.client_v4());
    let drops = of("(default)");
    assert!(!drops.is_empty(), "default drops logged with log_drops");
    assert_eq!(drops[0]["fields"]["verdict"], "drop");
}

/// Resident memory of process `pid`, in KiB.
#[test]
fn health_answers_while_idle_and_slow_clients_hold_connections() {
    let (t, agent) = healthy_agent(223);
    let pid = agent.state().unwrap()["pid"].as_u64().unwrap();
    let figures = nva_tests::abuse::abuse_http(
        &t.nva,
        HEALTH.parse().unwrap(),
        pid,
        &|| health(&t).0,
        Duration::from_millis(100),
    );
    eprintln!("agent under abuse: {figures:?}");
}
