//! NAT with real sockets through `nva agent`, in the Azure shape: the
//! client side is the internet, the NVA's client-side address is the public
//! one, the server namespace holds the workload. DNAT brings the client to
//! the workload (which sees the client's real address), SNAT takes the
//! workload out (the peer sees the NVA's address and a port from
//! `to_ports`); replies, ping and ICMP errors come back translated.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use nva_tests::agent::RunningAgent;
use nva_tests::{in_netns, require_root, Topology};

const FROM: u16 = 20000;
const TO: u16 = 20999;

fn config_text(t: &Topology) -> String {
    format!(
        r#"
[agent]
interfaces = ["{n0}", "{n1}"]
health_listen = "0.0.0.0:9090"
bpffs = "{{bpffs}}"

[policy]
default = "drop"
stateful = true

[[rules]]
name = "web"
action = "allow"
proto = "tcp"
dst = ["{s4}", "{s6}"]
dport = ["80"]

[[rules]]
name = "workload-out"
action = "allow"
src = ["{s4}", "{s6}"]

[[rules]]
name = "neighbour-discovery"
action = "allow"
proto = "icmpv6"
icmp_type = [133, 134, 135, 136]

[[nat]]
name = "web-in"
kind = "dnat"
proto = "tcp"
dst = ["{p4}/32"]
dport = ["8080"]
to = "{s4}:80"

[[nat]]
name = "web-in6"
kind = "dnat"
proto = "tcp"
dst = ["{p6}/128"]
dport = ["8080"]
to = "[{s6}]:80"

[[nat]]
name = "closed-in"
kind = "dnat"
proto = "tcp"
dst = ["{p4}/32"]
dport = ["8081"]
to = "{s4}:81"

[[nat]]
name = "egress"
kind = "snat"
src = ["{s4}/32"]
to = "{p4}"
to_ports = "{FROM}-{TO}"

[[nat]]
name = "egress6"
kind = "snat"
src = ["{s6}/128"]
to = "{p6}"
to_ports = "{FROM}-{TO}"
"#,
        n0 = nva_tests::NVA_IN_IF,
        n1 = nva_tests::NVA_OUT_IF,
        s4 = t.server_v4(),
        s6 = t.server_v6(),
        p4 = t.nva_in_v4(),
        p6 = t.nva_in_v6(),
    )
}

/// The client connects to the public address; the workload sees the
/// client's own address; bytes go both ways.
fn dnat_tcp(t: &Topology, public: &str, workload: &str, client: &str) {
    let listen: SocketAddr = SocketAddr::new(workload.parse().unwrap(), 80);
    let listener = in_netns(&t.server, || TcpListener::bind(listen).unwrap());
    let target = SocketAddr::new(public.parse().unwrap(), 8080);
    let mut conn = in_netns(&t.client, || {
        TcpStream::connect_timeout(&target, Duration::from_secs(3))
    })
    .unwrap_or_else(|e| panic!("client reaches the workload through {target}: {e}"));
    let (mut accepted, peer) = listener.accept().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        client,
        "the workload sees the client's real address"
    );
    conn.write_all(b"hello through dnat").unwrap();
    let mut buf = [0u8; 18];
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello through dnat");
    accepted.write_all(b"answer").unwrap();
    let mut ans = [0u8; 6];
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.read_exact(&mut ans).unwrap();
    assert_eq!(&ans, b"answer");
    assert_eq!(
        conn.peer_addr().unwrap(),
        target,
        "the client talks to the public address"
    );
}

/// The workload reaches a server on the client side; the server sees the
/// NVA's address and a port from to_ports.
fn snat_tcp(t: &Topology, server_side: &str, public: &str) {
    let listen = SocketAddr::new(server_side.parse().unwrap(), 7000);
    let listener = in_netns(&t.client, || TcpListener::bind(listen).unwrap());
    let mut conn = in_netns(&t.server, || {
        TcpStream::connect_timeout(&listen, Duration::from_secs(3))
    })
    .unwrap_or_else(|e| panic!("workload reaches {listen} through SNAT: {e}"));
    let (mut accepted, peer) = listener.accept().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        public,
        "the peer sees the NVA's address"
    );
    assert!(
        (FROM..=TO).contains(&peer.port()),
        "port {} from to_ports",
        peer.port()
    );
    accepted.write_all(b"pong").unwrap();
    let mut got = [0u8; 4];
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

#[test]
fn dnat_and_snat_with_real_sockets() {
    require_root();
    let t = Topology::new(224);
    let agent = RunningAgent::start(&t, &config_text(&t), true);

    dnat_tcp(&t, &t.nva_in_v4(), &t.server_v4(), &t.client_v4());
    dnat_tcp(&t, &t.nva_in_v6(), &t.server_v6(), &t.client_v6());
    snat_tcp(&t, &t.client_v4(), &t.nva_in_v4());
    snat_tcp(&t, &t.client_v6(), &t.nva_in_v6());

    // Rules apply after DNAT: port 81 of the workload is allowed by no rule.
    let closed = SocketAddr::new(t.nva_in_v4().parse().unwrap(), 8081);
    let r = in_netns(&t.client, || {
        TcpStream::connect_timeout(&closed, Duration::from_secs(1))
    });
    assert!(r.is_err(), "a DNAT to a port no rule allows stays dropped");

    // UDP through SNAT, and the port unreachable that comes back: the
    // workload's socket gets ECONNREFUSED.
    let refused = in_netns(&t.server, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(SocketAddr::new(t.client_v4().parse().unwrap(), 9))
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"anyone?").unwrap();
        let mut buf = [0u8; 16];
        s.recv(&mut buf)
    });
    assert_eq!(
        refused.as_ref().map_err(|e| e.kind()).unwrap_err(),
        std::io::ErrorKind::ConnectionRefused,
        "ICMP port unreachable comes back through SNAT: {refused:?}"
    );

    // Ping through SNAT, both families.
    for dst in [t.client_v4(), t.client_v6()] {
        let out = t.server.exec(&["ping", "-c", "2", "-W", "2", &dst]);
        assert!(
            out.status.success(),
            "ping {dst} through SNAT: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // The translations are counted by entry, and conntrack shows them.
    let (code, body) =
        nva_tests::traffic::http_get(&t.client, &format!("{}:9090", t.nva_in_v4()), "/metrics")
            .unwrap();
    assert_eq!(code, 200);
    let metric = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {body}"))
    };
    assert_eq!(metric("nva_nat_translations_total{rule=\"web-in\"}"), 1);
    assert_eq!(metric("nva_nat_translations_total{rule=\"web-in6\"}"), 1);
    assert!(metric("nva_nat_translations_total{rule=\"egress\"}") >= 3);
    assert_eq!(metric("nva_nat_port_exhausted_total{rule=\"egress\"}"), 0);
    drop(agent);
}
