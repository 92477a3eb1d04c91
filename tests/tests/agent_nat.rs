//! NAT with real sockets through `nva agent`, in the Azure shape, with
//! nftables NAT as the oracle: the client side is the internet, the NVA's
//! client-side address is the public one, the server namespace holds the
//! workloads. DNAT brings the client to a workload (which sees the
//! client's real address), SNAT takes the workloads out (the peer sees the
//! NVA's address and a port from `to_ports`); replies, ping and ICMP
//! errors come back translated. The same scenarios run once through nva
//! and once through nftables' NAT on the same topology shape, and must be
//! seen the same way by the endpoints.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use nva_tests::agent::RunningAgent;
use nva_tests::{in_netns, require_root, Topology};

/// SNAT's port range: ten times the flows opened at once (netfilter, too,
/// gives up on a range that is nearly full: it probes a bounded number of
/// ports).
const FROM: u16 = 20000;
const TO: u16 = 29999;
/// Concurrent SNAT flows opened at once.
const MANY: usize = 1000;

/// The second workload (for the colliding pair).
fn workload2_v4(t: &Topology) -> String {
    format!("10.{}.2.3", t.id)
}

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
name = "dns"
action = "allow"
proto = "udp"
dst = ["{s4}"]
dport = ["53"]

[[rules]]
name = "workloads-out"
action = "allow"
src = ["10.{id}.2.0/24", "fd00:{id}:2::/64"]

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
name = "dns-in"
kind = "dnat"
proto = "udp"
dst = ["{p4}/32"]
dport = ["5353"]
to = "{s4}:53"

[[nat]]
name = "egress"
kind = "snat"
src = ["10.{id}.2.0/24"]
to = "{p4}"
to_ports = "{FROM}-{TO}"

[[nat]]
name = "egress6"
kind = "snat"
src = ["fd00:{id}:2::/64"]
to = "{p6}"
to_ports = "{FROM}-{TO}"
"#,
        id = t.id,
        n0 = nva_tests::NVA_IN_IF,
        n1 = nva_tests::NVA_OUT_IF,
        s4 = t.server_v4(),
        s6 = t.server_v6(),
        p4 = t.nva_in_v4(),
        p6 = t.nva_in_v6(),
    )
}

/// The same policy in nftables (the oracle): NAT in prerouting and
/// postrouting, the rules in the forward hook.
fn nft_ruleset(t: &Topology) -> String {
    format!(
        r#"
table ip oracle_nat {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {p4} tcp dport 8080 dnat to {s4}:80
    ip daddr {p4} tcp dport 8081 dnat to {s4}:81
    ip daddr {p4} udp dport 5353 dnat to {s4}:53
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.{id}.2.0/24 meta l4proto {{ tcp, udp }} snat to {p4}:{FROM}-{TO}
    ip saddr 10.{id}.2.0/24 snat to {p4}
  }}
}}
table ip6 oracle_nat6 {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip6 daddr {p6} tcp dport 8080 dnat to [{s6}]:80
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ip6 saddr fd00:{id}:2::/64 meta l4proto {{ tcp, udp }} snat to [{p6}]:{FROM}-{TO}
    ip6 saddr fd00:{id}:2::/64 snat to {p6}
  }}
}}
table inet oracle_filter {{
  chain forward_filter {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ip daddr {s4} tcp dport 80 accept
    ip6 daddr {s6} tcp dport 80 accept
    ip daddr {s4} udp dport 53 accept
    ip saddr 10.{id}.2.0/24 accept
    ip6 saddr fd00:{id}:2::/64 accept
  }}
}}
"#,
        id = t.id,
        s4 = t.server_v4(),
        s6 = t.server_v6(),
        p4 = t.nva_in_v4(),
        p6 = t.nva_in_v6(),
    )
}

/// What the endpoints saw; equal for nva and the oracle.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// DNAT TCP (v4, v6): the workload saw the client's own address, the
    /// client talked to the public address, bytes went both ways.
    dnat_tcp: [bool; 2],
    /// DNAT UDP: the reply came from the address the client used.
    dnat_udp_reply_from_public: bool,
    /// A DNAT to a port no rule allows: the connection fails.
    closed_dnat_refused: bool,
    /// SNAT TCP (v4, v6): the peer saw the public address and a port from
    /// to_ports, and the reply came back.
    snat_tcp: [bool; 2],
    /// UDP to a closed port through SNAT: the workload gets ECONNREFUSED.
    udp_refused_through_snat: bool,
    /// Ping through SNAT (v4, v6).
    ping: [bool; 2],
    /// MANY concurrent SNAT flows: distinct source ports seen by the peer,
    /// all within to_ports, and replies back at their own socket.
    many_distinct_ports: usize,
    many_in_range: bool,
    many_replies: usize,
    /// Two workloads, the same source port, the same destination: the peer
    /// sees two different ports, and both replies arrive.
    colliding_pair_distinct: bool,
    colliding_pair_replies: usize,
    /// 100 MiB through DNAT arrived intact.
    transfer_intact: bool,
}

fn dnat_tcp(t: &Topology, public: &str, workload: &str, client: &str) -> bool {
    let listen = SocketAddr::new(workload.parse().unwrap(), 80);
    let listener = in_netns(&t.server, || TcpListener::bind(listen).unwrap());
    let target = SocketAddr::new(public.parse().unwrap(), 8080);
    let Ok(mut conn) = in_netns(&t.client, || {
        TcpStream::connect_timeout(&target, Duration::from_secs(3))
    }) else {
        return false;
    };
    let (mut accepted, peer) = listener.accept().unwrap();
    conn.write_all(b"hello through dnat").unwrap();
    let mut buf = [0u8; 18];
    accepted.read_exact(&mut buf).unwrap();
    accepted.write_all(b"answer").unwrap();
    let mut ans = [0u8; 6];
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let answered = conn.read_exact(&mut ans).is_ok() && &ans == b"answer";
    peer.ip().to_string() == client
        && conn.peer_addr().unwrap() == target
        && &buf == b"hello through dnat"
        && answered
}

fn dnat_udp(t: &Topology) -> bool {
    let workload = in_netns(&t.server, || {
        UdpSocket::bind(SocketAddr::new(t.server_v4().parse().unwrap(), 53)).unwrap()
    });
    let client = in_netns(&t.client, || UdpSocket::bind("0.0.0.0:0").unwrap());
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    workload
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let public = SocketAddr::new(t.nva_in_v4().parse().unwrap(), 5353);
    client.send_to(b"query", public).unwrap();
    let mut buf = [0u8; 16];
    let Ok((_, from)) = workload.recv_from(&mut buf) else {
        return false;
    };
    workload.send_to(b"answer", from).unwrap();
    matches!(client.recv_from(&mut buf), Ok((6, src)) if src == public)
}

fn closed_dnat_refused(t: &Topology) -> bool {
    let closed = SocketAddr::new(t.nva_in_v4().parse().unwrap(), 8081);
    in_netns(&t.client, || {
        TcpStream::connect_timeout(&closed, Duration::from_secs(1))
    })
    .is_err()
}

fn snat_tcp(t: &Topology, server_side: &str, public: &str) -> bool {
    let listen = SocketAddr::new(server_side.parse().unwrap(), 7000);
    let listener = in_netns(&t.client, || TcpListener::bind(listen).unwrap());
    let Ok(mut conn) = in_netns(&t.server, || {
        TcpStream::connect_timeout(&listen, Duration::from_secs(3))
    }) else {
        return false;
    };
    let (mut accepted, peer) = listener.accept().unwrap();
    accepted.write_all(b"pong").unwrap();
    let mut got = [0u8; 4];
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.read_exact(&mut got).is_ok()
        && &got == b"pong"
        && peer.ip().to_string() == public
        && (FROM..=TO).contains(&peer.port())
}

fn udp_refused(t: &Topology) -> bool {
    let got = in_netns(&t.server, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(SocketAddr::new(t.client_v4().parse().unwrap(), 9))
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"anyone?").unwrap();
        let mut buf = [0u8; 16];
        s.recv(&mut buf)
    });
    matches!(got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn ping(t: &Topology, dst: &str) -> bool {
    t.server
        .exec(&["ping", "-c", "2", "-W", "2", dst])
        .status
        .success()
}

/// A UDP echo service on the client side that records each datagram's
/// source; stops after `expect` distinct sources or 10 s.
fn echo_server(t: &Topology, port: u16, expect: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    let sock = in_netns(&t.client, || {
        UdpSocket::bind(SocketAddr::new(t.client_v4().parse().unwrap(), port)).unwrap()
    });
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Room for a burst of MANY datagrams while the thread catches up.
    nva_tests::traffic::force_rcvbuf(&sock, 8 << 20);
    std::thread::spawn(move || {
        let mut seen: Vec<SocketAddr> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 64];
        while seen.len() < expect && std::time::Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
                if !seen.contains(&from) {
                    seen.push(from);
                }
            }
        }
        seen
    })
}

/// Opens `MANY` UDP flows from the workload at once (each its own socket,
/// all kept open) and counts the replies each gets back.
fn many_snat_flows(t: &Topology) -> (usize, bool, usize) {
    raise_fd_limit(4 * MANY as u64);
    let echo = echo_server(t, 7100, MANY);
    let dst = SocketAddr::new(t.client_v4().parse().unwrap(), 7100);
    let socks: Vec<UdpSocket> = in_netns(&t.server, || {
        (0..MANY)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect()
    });
    let mut replied = vec![false; MANY];
    let mut buf = [0u8; 64];
    // Bounded retries for datagrams lost on the way (a burst can overrun
    // a queue, with nftables as with nva).
    for _round in 0..5 {
        for (i, s) in socks.iter().enumerate() {
            if !replied[i] {
                let _ = s.send_to(format!("flow {i}").as_bytes(), dst);
            }
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        for (i, s) in socks.iter().enumerate() {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                if &buf[..n] == format!("flow {i}").as_bytes() {
                    replied[i] = true;
                }
            }
        }
        if replied.iter().all(|r| *r) {
            break;
        }
    }
    let seen = echo.join().unwrap();
    let mut ports: Vec<u16> = seen.iter().map(|a| a.port()).collect();
    let in_range = ports.iter().all(|p| (FROM..=TO).contains(p))
        && seen.iter().all(|a| a.ip().to_string() == t.nva_in_v4());
    ports.sort();
    ports.dedup();
    (
        ports.len(),
        in_range,
        replied.iter().filter(|r| **r).count(),
    )
}

fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Two workloads send from the same source port to the same destination.
fn colliding_pair(t: &Topology) -> (bool, usize) {
    let echo = echo_server(t, 7200, 2);
    let dst = SocketAddr::new(t.client_v4().parse().unwrap(), 7200);
    let socks: Vec<UdpSocket> = in_netns(&t.server, || {
        [t.server_v4(), workload2_v4(t)]
            .iter()
            .map(|w| {
                let s = UdpSocket::bind(SocketAddr::new(w.parse().unwrap(), 6000)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s
            })
            .collect()
    });
    let mut replies = 0;
    for s in &socks {
        s.send_to(b"same port", dst).unwrap();
    }
    let mut buf = [0u8; 16];
    for s in &socks {
        if s.recv_from(&mut buf).is_ok() {
            replies += 1;
        }
    }
    let seen = echo.join().unwrap();
    let distinct = seen.len() == 2 && seen[0].port() != seen[1].port();
    (distinct, replies)
}

fn transfer_through_dnat(t: &Topology) -> bool {
    nva_tests::traffic::transfer_100m_intact(
        &t.client,
        &t.server,
        SocketAddr::new(t.server_v4().parse().unwrap(), 80),
        SocketAddr::new(t.nva_in_v4().parse().unwrap(), 8080),
    )
}

/// Runs every scenario on a topology whose NVA translates (nva or nftables).
fn scenarios(t: &Topology) -> Seen {
    let (many_distinct_ports, many_in_range, many_replies) = many_snat_flows(t);
    let (colliding_pair_distinct, colliding_pair_replies) = colliding_pair(t);
    Seen {
        dnat_tcp: [
            dnat_tcp(t, &t.nva_in_v4(), &t.server_v4(), &t.client_v4()),
            dnat_tcp(t, &t.nva_in_v6(), &t.server_v6(), &t.client_v6()),
        ],
        dnat_udp_reply_from_public: dnat_udp(t),
        closed_dnat_refused: closed_dnat_refused(t),
        snat_tcp: [
            snat_tcp(t, &t.client_v4(), &t.nva_in_v4()),
            snat_tcp(t, &t.client_v6(), &t.nva_in_v6()),
        ],
        udp_refused_through_snat: udp_refused(t),
        ping: [ping(t, &t.client_v4()), ping(t, &t.client_v6())],
        many_distinct_ports,
        many_in_range,
        many_replies,
        colliding_pair_distinct,
        colliding_pair_replies,
        transfer_intact: transfer_through_dnat(t),
    }
}

fn expected() -> Seen {
    Seen {
        dnat_tcp: [true, true],
        dnat_udp_reply_from_public: true,
        closed_dnat_refused: true,
        snat_tcp: [true, true],
        udp_refused_through_snat: true,
        ping: [true, true],
        many_distinct_ports: MANY,
        many_in_range: true,
        many_replies: MANY,
        colliding_pair_distinct: true,
        colliding_pair_replies: 2,
        transfer_intact: true,
    }
}

fn second_workload(t: &Topology) {
    t.server.ip(&[
        "addr",
        "add",
        &format!("{}/24", workload2_v4(t)),
        "dev",
        nva_tests::SERVER_IF,
    ]);
}

fn metric(t: &Topology, name: &str) -> u64 {
    let (code, body) =
        nva_tests::traffic::http_get(&t.client, &format!("{}:9090", t.nva_in_v4()), "/metrics")
            .unwrap();
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing: {body}"))
}

#[test]
fn nat_through_nva_is_seen_like_nftables_nat() {
    require_root();
    // The oracle: nftables NAT and filter in the NVA's namespace.
    let oracle = {
        let t = Topology::new(225);
        second_workload(&t);
        let out = t
            .nva
            .command(&["nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn();
        let mut child = out.expect("nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(nft_ruleset(&t).as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft ruleset loads");
        scenarios(&t)
    };
    assert_eq!(
        oracle,
        expected(),
        "nftables NAT itself behaves as expected"
    );

    let t = Topology::new(224);
    second_workload(&t);
    let agent = RunningAgent::start(&t, &config_text(&t), true);
    let seen = scenarios(&t);
    assert_eq!(seen, oracle, "nva's NAT is seen as nftables' NAT is");

    // Counted per entry.
    assert_eq!(
        metric(&t, "nva_nat_translations_total{rule=\"web-in6\"}"),
        1
    );
    assert_eq!(metric(&t, "nva_nat_translations_total{rule=\"dns-in\"}"), 1);
    assert!(metric(&t, "nva_nat_translations_total{rule=\"egress\"}") >= MANY as u64 + 4);
    assert_eq!(
        metric(&t, "nva_nat_port_exhausted_total{rule=\"egress\"}"),
        0
    );

    // `nva conntrack list` shows both tuples and the NAT entry.
    let out = agent.nva(&["conntrack", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let web = flows
        .iter()
        .find(|f| f["nat"] == "web-in6")
        .unwrap_or_else(|| panic!("the DNAT flow is listed: {flows:#?}"));
    assert_eq!(web["dst"], format!("[{}]:8080", t.nva_in_v6()));
    assert_eq!(web["translated_dst"], format!("[{}]:80", t.server_v6()));

    // With the client side's program detached (a failure the failover
    // handles), the kernel gets the public address's packets: it must not
    // answer a translated port with a reset (the flow's next packets will
    // reach the peer NVA), while other ports are refused as before.
    agent.detach_link(nva_tests::NVA_IN_IF);
    let connect = |port: u16| {
        let to = SocketAddr::new(t.nva_in_v4().parse().unwrap(), port);
        in_netns(&t.client, || {
            TcpStream::connect_timeout(&to, Duration::from_millis(700))
        })
        .err()
        .map(|e| e.kind())
    };
    assert_eq!(
        connect(8080),
        Some(std::io::ErrorKind::TimedOut),
        "a DNAT'd port is not reset while the program is detached"
    );
    assert_eq!(
        connect(9999),
        Some(std::io::ErrorKind::ConnectionRefused),
        "other ports of the address are still refused"
    );
    drop(agent);
}
