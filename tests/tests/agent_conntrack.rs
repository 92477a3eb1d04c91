//! Stateful filtering with real sockets through `nva agent`: with only an
//! outbound rule (backend -> client tcp/80), the backend's connections work
//! both ways while the client cannot open any; a long transfer arrives
//! intact; removing the rule stops a running connection at its next packet.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nva_tests::agent::RunningAgent;
use nva_tests::traffic::{http_get, tcp_refused};
use nva_tests::{in_netns, require_root, Topology};

/// A multiple of the pattern's period (251), so every chunk is the same.
const CHUNK: usize = 251 * 4096;
/// Just over 100 MiB.
const TRANSFER: usize = CHUNK * 102;

fn config_text(t: &Topology, with_web: bool) -> String {
    let web = if with_web {
        format!(
            r#"
[[rules]]
name = "backend-to-client-web"
action = "allow"
proto = "tcp"
src = ["{s4}", "{s6}"]
dst = ["{c4}", "{c6}"]
dport = ["80"]
"#,
            s4 = t.server_v4(),
            s6 = t.server_v6(),
            c4 = t.client_v4(),
            c6 = t.client_v6(),
        )
    } else {
        String::new()
    };
    format!(
        r#"
[agent]
interfaces = ["{n0}", "{n1}"]
health_listen = "0.0.0.0:9090"
bpffs = "{{bpffs}}"

[policy]
default = "drop"
stateful = true
{web}
[[rules]]
name = "neighbour-discovery"
action = "allow"
proto = "icmpv6"
icmp_type = [133, 134, 135, 136]
"#,
        n0 = nva_tests::NVA_IN_IF,
        n1 = nva_tests::NVA_OUT_IF,
    )
}

/// The byte at offset `i` of the test stream.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Connects from the backend (server namespace) to the client's port 80.
fn backend_connect(t: &Topology, client_ip: &str) -> (TcpStream, TcpStream) {
    let addr = SocketAddr::new(client_ip.parse().unwrap(), 80);
    let listener = in_netns(&t.client, || TcpListener::bind(addr).unwrap());
    let out = in_netns(&t.server, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .expect("backend connects out to the client");
    let (accepted, _) = listener.accept().unwrap();
    (out, accepted)
}

fn metric(t: &Topology, name_and_labels: &str) -> u64 {
    let (code, body) = http_get(&t.client, &format!("{}:9090", t.nva_in_v4()), "/metrics")
        .expect("metrics reachable (management port)");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels} missing from /metrics"))
}

fn conntrack_json(agent: &RunningAgent) -> Vec<serde_json::Value> {
    let out = agent.nva(&["conntrack", "list", "--json"]);
    assert!(
        out.status.success(),
        "nva conntrack list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn outbound_rule_admits_replies_only_and_rule_removal_cuts_running_connections() {
    require_root();
    let t = Topology::new(218);
    let mut agent = RunningAgent::start(&t, &config_text(&t, true), true);

    // The backend opens a connection and pushes 100 MB; the client answers.
    let (mut out, mut accepted) = backend_connect(&t, &t.client_v4());
    let sender = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..CHUNK).map(pattern).collect();
        for _ in 0..TRANSFER / CHUNK {
            out.write_all(&chunk).unwrap();
        }
        out.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        out.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        out.read_to_string(&mut answer).unwrap();
        answer
    });
    accepted
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = accepted.read(&mut buf).expect("transfer stalls");
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(received + k), "byte {} corrupted", received + k);
        }
        received += n;
    }
    assert_eq!(received, TRANSFER, "the whole transfer arrived");
    accepted.write_all(b"got it").unwrap();
    drop(accepted);
    assert_eq!(sender.join().unwrap(), "got it", "the reply came back");

    // The flow is tracked under the rule that admitted it.
    let flows = conntrack_json(&agent);
    let web: Vec<_> = flows
        .iter()
        .filter(|f| f["rule"] == "backend-to-client-web")
        .collect();
    assert!(!web.is_empty(), "tracked flows: {flows:#?}");
    assert!(web[0]["src"].as_str().unwrap().starts_with(&t.server_v4()));
    assert!(web[0]["bytes_orig"].as_u64().unwrap() >= TRANSFER as u64);

    // IPv6 works the same way.
    let (mut out6, mut acc6) = backend_connect(&t, &t.client_v6());
    out6.write_all(b"ping6").unwrap();
    let mut got = [0u8; 5];
    acc6.read_exact(&mut got).unwrap();
    acc6.write_all(b"pong6").unwrap();
    out6.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong6");

    // The client cannot open anything towards the backend.
    for port in [80, 22, 8080] {
        assert!(
            tcp_refused(&t.client, &t.server, &t.server_v4(), port),
            "client -> backend tcp/{port} must be refused"
        );
    }
    assert!(tcp_refused(&t.client, &t.server, &t.server_v6(), 80));

    // A running connection, then the rule goes away.
    let (mut live, mut live_peer) = backend_connect(&t, &t.client_v4());
    live.write_all(b"before").unwrap();
    let mut before = [0u8; 6];
    live_peer.read_exact(&mut before).unwrap();
    assert_eq!(metric(&t, "nva_conntrack_revoked_total"), 0);
    let revoked_before = metric(&t, "nva_packets_total{verdict=\"drop\",reason=\"revoked\"}");
    agent.write_config(&config_text(&t, false));
    let out = agent.nva(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    live.write_all(b"after the rule change").unwrap();
    live_peer
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    let got = live_peer.read(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "nothing arrives after the rule change: {got:?}"
    );
    assert_eq!(
        metric(&t, "nva_packets_total{verdict=\"drop\",reason=\"revoked\"}") - revoked_before,
        1,
        "the connection stopped at its first packet under the new rules"
    );
    assert!(
        tcp_refused(&t.server, &t.client, &t.client_v4(), 80),
        "new connections are refused"
    );

    // The CLI works from the pinned maps, also with the agent gone.
    agent.kill9();
    let count = agent.nva(&["conntrack", "count"]);
    assert!(
        count.status.success(),
        "{}",
        String::from_utf8_lossy(&count.stderr)
    );
    let live_flows: u64 = String::from_utf8_lossy(&count.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(live_flows >= 1, "the IPv6 flow is still tracked");
    let flush = agent.nva(&["conntrack", "flush"]);
    assert!(flush.status.success());
    assert!(String::from_utf8_lossy(&flush.stdout).starts_with("flushed "));
    let count = agent.nva(&["conntrack", "count"]);
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "0");
    let list = agent.nva(&["conntrack", "list"]);
    assert!(list.status.success());
    drop(agent);
}
