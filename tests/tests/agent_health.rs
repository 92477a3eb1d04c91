//! The health probe tells the truth about the data path; metrics count what
//! was sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nva_tests::agent::RunningAgent;
use nva_tests::traffic::{http_get, tcp_connects, udp_delivered};
use nva_tests::{in_netns, require_root, wait_until, Topology, NVA_IN_IF, NVA_OUT_IF};

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
fn rss_kib(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Whether the server closed `s` within `within` (EOF or reset, no answer).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// /health keeps answering within a probe's timeout while hundreds of idle
/// connections and slowloris clients are open; those are cut off after the
/// header time (2 s), and huge request heads are refused, not buffered.
#[test]
fn health_answers_while_idle_and_slow_clients_hold_connections() {
    let (t, agent) = healthy_agent(223);
    let pid = agent.state().unwrap()["pid"].as_u64().unwrap();
    let addr: SocketAddr = HEALTH.parse().unwrap();
    // Sockets keep the namespace they were made in.
    let connect = |n: usize| -> Vec<TcpStream> {
        in_netns(&t.nva, || {
            (0..n)
                .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap())
                .collect()
        })
    };
    let rss_before = rss_kib(pid);

    let mut idle = connect(300);
    // Slowloris: a request head that grows by a byte a second.
    let slow: Vec<_> = connect(5)
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: nva\r\nX-Slow: ");
                while started.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_secs(1));
                    if s.write_all(b"a").is_err() {
                        return Some(started.elapsed());
                    }
                }
                None
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Probes every 100 ms for 3 s: before and after the idle ones are cut.
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let start = Instant::now();
        assert_eq!(health(&t).0, 200);
        slowest = slowest.max(start.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        slowest < Duration::from_millis(100),
        "slowest /health: {slowest:?}"
    );
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(3)),
            "idle connections are closed after the header time"
        );
    }
    for handle in slow {
        let cut = handle.join().unwrap();
        assert!(
            cut.is_some_and(|d| d < Duration::from_secs(5)),
            "slowloris cut off: {cut:?}"
        );
    }

    // Ten 1 MiB request heads at once: refused at 16 KiB each (431 or a
    // closed connection), not buffered.
    let big: Vec<_> = connect(10)
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut head = b"GET /health HTTP/1.1\r\nHost: nva\r\nX-Big: ".to_vec();
                head.resize(head.len() + (1 << 20), b'a');
                head.extend_from_slice(b"\r\n\r\n");
                let _ = s.write_all(&head);
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    for handle in big {
        let answer = handle.join().unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "a 1 MiB head: {answer:?}"
        );
    }
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "the agent grew by {grown} KiB");
    assert_eq!(health(&t).0, 200);
}
