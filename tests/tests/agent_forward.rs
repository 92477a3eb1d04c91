//! `forward = "xdp"` with real traffic through `nva agent`: the program
//! routes allowed packets itself (FIB lookup, MAC rewrite, TTL one less,
//! redirect), and hands the kernel what only the kernel should do (TTL
//! expiring, packets over the egress MTU, unresolved neighbours, the NVA's
//! own addresses). The client and server namespaces are set up as veth
//! needs for redirects (GRO on, TX checksum offload off); without that the
//! agent refuses `forward = "xdp"`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nva_tests::agent::RunningAgent;
use nva_tests::traffic::{http_get, transfer_100m_intact, udp_delivered};
use nva_tests::{in_netns, nva_binary, require_root, Topology, NVA_IN_IF, NVA_OUT_IF};

fn config_text(t: &Topology, stateful: bool) -> String {
    format!(
        r#"
[agent]
interfaces = ["{NVA_IN_IF}", "{NVA_OUT_IF}"]
health_listen = "0.0.0.0:9090"
forward = "xdp"
bpffs = "{{bpffs}}"

[policy]
default = "drop"
stateful = {stateful}

[[rules]]
name = "client-side"
action = "allow"
src = ["10.{id}.1.0/24", "fd00:{id}:1::/64"]

[[rules]]
name = "server-side"
action = "allow"
src = ["10.{id}.2.0/24", "fd00:{id}:2::/64"]

[[rules]]
name = "neighbour-discovery"
action = "allow"
proto = "icmpv6"
icmp_type = [133, 134, 135, 136]
{nat}"#,
        id = t.id,
        nat = if stateful {
            format!(
                "\n[[nat]]\nname = \"public-in\"\nkind = \"dnat\"\nproto = \"tcp\"\ndst = [\"{}/32\"]\ndport = [\"8080\"]\nto = \"{}:80\"\n",
                t.nva_in_v4(),
                t.server_v4()
            )
        } else {
            String::new()
        }
    )
}

/// A TCP connection from `from` to `to_ip:port` in `to`: a line each way.
fn tcp_both_ways(from: &nva_tests::Netns, to: &nva_tests::Netns, to_ip: &str, port: u16) -> bool {
    let addr = SocketAddr::new(to_ip.parse().unwrap(), port);
    let listener = in_netns(to, || TcpListener::bind(addr).unwrap());
    let Ok(mut conn) = in_netns(from, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    }) else {
        return false;
    };
    let (mut accepted, _) = listener.accept().unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = [0u8; 5];
    conn.write_all(b"hello").is_ok()
        && accepted.read_exact(&mut got).is_ok()
        && &got == b"hello"
        && accepted.write_all(b"there").is_ok()
        && conn.read_exact(&mut got).is_ok()
        && &got == b"there"
}

/// `ping` from `ns` with extra arguments: its output.
fn ping(ns: &nva_tests::Netns, args: &[&str], dst: &str) -> String {
    let mut cmd = vec!["ping", "-c", "1", "-W", "2"];
    cmd.extend_from_slice(args);
    cmd.push(dst);
    let out = ns.exec(&cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `nva_forwarded_total{path,reason}` of the agent.
fn forwarded(t: &Topology, path: &str, reason: &str) -> u64 {
    let (_, body) = http_get(&t.client, &format!("{}:9090", t.nva_in_v4()), "/metrics").unwrap();
    let name = format!("nva_forwarded_total{{path=\"{path}\",reason=\"{reason}\"}}");
    body.lines()
        .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {body}"))
}

/// GRO on and TX checksum offload off at the NVA's peers: a redirect into
/// a veth needs the receiving end's peer to have GRO (or an XDP program),
/// and a redirected frame loses CHECKSUM_PARTIAL.
fn prepare_for_redirects(t: &Topology) {
    for (ns, dev) in [
        (&t.client, nva_tests::CLIENT_IF),
        (&t.server, nva_tests::SERVER_IF),
    ] {
        let out = ns.exec(&["ethtool", "-K", dev, "gro", "on", "tx", "off"]);
        assert!(
            out.status.success(),
            "ethtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_agent_refuses_xdp_forwarding_into_a_veth_that_cannot_take_redirects() {
    require_root();
    let t = Topology::new(227);
    let dir = std::env::temp_dir().join(format!("nva-forward-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("nva.toml");
    let bpffs = format!("/sys/fs/bpf/nva-test-forward-{}", std::process::id());
    std::fs::write(&config, config_text(&t, true).replace("{bpffs}", &bpffs)).unwrap();
    let binary = nva_binary().display().to_string();
    let out = t
        .nva
        .nsenter(&[&binary, "agent", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("cannot take redirected frames") && stderr.contains("gro on"),
        "says why and what to do: {stderr}"
    );
    assert!(
        !std::path::Path::new(&bpffs).exists(),
        "refused before anything was pinned"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn xdp_forwarding_carries_traffic_and_leaves_the_kernel_its_part() {
    require_root();
    let t = Topology::new(226);
    prepare_for_redirects(&t);
    // Nothing resolved yet: the first packets find no neighbour.
    t.nva.ip(&["neigh", "flush", "all"]);
    let agent = RunningAgent::start(&t, &config_text(&t, true), true);

    // TCP and UDP, IPv4 and IPv6, connections opened from either side.
    for (c, s) in [
        (t.client_v4(), t.server_v4()),
        (t.client_v6(), t.server_v6()),
    ] {
        assert!(tcp_both_ways(&t.client, &t.server, &s, 7001), "tcp to {s}");
        assert!(tcp_both_ways(&t.server, &t.client, &c, 7002), "tcp to {c}");
        assert_eq!(
            udp_delivered(&t.client, &t.server, &s, 7003, 20),
            20,
            "udp to {s}"
        );
        assert_eq!(
            udp_delivered(&t.server, &t.client, &c, 7004, 20),
            20,
            "udp to {c}"
        );
    }
    // The first packets went to the kernel to resolve the neighbours; the
    // rest took the fast path.
    assert!(forwarded(&t, "kernel", "no_neighbour") >= 1);
    let routed = forwarded(&t, "xdp", "routed");
    assert!(routed >= 80, "routed by the program: {routed}");

    // TTL one less: the server's echo reply (TTL 64) arrives with 63.
    let out = ping(&t.client, &[], &t.server_v4());
    assert!(out.contains("ttl=63"), "{out}");
    let out = ping(&t.client, &["-6"], &t.server_v6());
    assert!(out.contains("ttl=63"), "{out}");
    // TTL 1: the NVA's kernel answers with time exceeded.
    let expiring = forwarded(&t, "kernel", "ttl_expiring");
    let out = ping(&t.client, &["-t", "1"], &t.server_v4());
    assert!(
        out.contains(&format!("From {}", t.nva_in_v4())) && out.contains("Time to live exceeded"),
        "{out}"
    );
    assert!(forwarded(&t, "kernel", "ttl_expiring") > expiring);

    // Over the egress MTU: the kernel answers with fragmentation needed.
    t.nva.ip(&["link", "set", "dev", NVA_OUT_IF, "mtu", "1280"]);
    let out = ping(&t.client, &["-M", "do", "-s", "1400"], &t.server_v4());
    assert!(out.contains("mtu = 1280"), "frag needed: {out}");
    let out = ping(&t.client, &["-6", "-M", "do", "-s", "1400"], &t.server_v6());
    assert!(
        out.to_lowercase().contains("mtu=1280") || out.contains("mtu = 1280"),
        "packet too big: {out}"
    );
    assert!(forwarded(&t, "kernel", "over_mtu") >= 2);
    t.nva.ip(&["link", "set", "dev", NVA_OUT_IF, "mtu", "1500"]);

    // The NVA's own addresses are still served (by its kernel).
    let (code, _) = http_get(&t.client, &format!("{}:9090", t.nva_in_v4()), "/health").unwrap();
    assert_eq!(code, 200);
    let out = ping(&t.client, &[], &t.nva_in_v4());
    assert!(out.contains(" 0% packet loss"), "{out}");
    assert!(forwarded(&t, "kernel", "local") >= 1);

    // A translated flow takes the fast path too: DNAT from the NVA's
    // address to the server, the reply translated back.
    let before = forwarded(&t, "xdp", "routed");
    let listener = in_netns(&t.server, || {
        TcpListener::bind(SocketAddr::new(t.server_v4().parse().unwrap(), 80)).unwrap()
    });
    let public = SocketAddr::new(t.nva_in_v4().parse().unwrap(), 8080);
    let mut conn = in_netns(&t.client, || {
        TcpStream::connect_timeout(&public, Duration::from_secs(3))
    })
    .expect("connect through DNAT");
    let (mut accepted, peer) = listener.accept().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        t.client_v4(),
        "the server sees the client"
    );
    accepted.write_all(b"translated").unwrap();
    let mut got = [0u8; 10];
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"translated");
    assert_eq!(conn.peer_addr().unwrap(), public);
    assert!(
        forwarded(&t, "xdp", "routed") >= before + 3,
        "DNAT flow routed by the program"
    );
    drop((conn, accepted));

    // 100 MiB intact through the fast path.
    let before = forwarded(&t, "xdp", "routed");
    let server = SocketAddr::new(t.server_v4().parse().unwrap(), 5001);
    assert!(
        transfer_100m_intact(&t.client, &t.server, server, server),
        "100 MiB arrived intact"
    );
    assert!(
        forwarded(&t, "xdp", "routed") > before + 50_000,
        "the transfer took the fast path"
    );
    drop(agent);
}

#[test]
fn stateless_xdp_forwarding_carries_tcp_and_udp_both_ways() {
    require_root();
    let t = Topology::new(228);
    prepare_for_redirects(&t);
    let agent = RunningAgent::start(&t, &config_text(&t, false), true);
    for (c, s) in [
        (t.client_v4(), t.server_v4()),
        (t.client_v6(), t.server_v6()),
    ] {
        assert!(tcp_both_ways(&t.client, &t.server, &s, 7001), "tcp to {s}");
        assert!(tcp_both_ways(&t.server, &t.client, &c, 7002), "tcp to {c}");
        assert_eq!(udp_delivered(&t.client, &t.server, &s, 7003, 20), 20);
        assert_eq!(udp_delivered(&t.server, &t.client, &c, 7004, 20), 20);
    }
    assert!(forwarded(&t, "xdp", "routed") >= 80);
    drop(agent);
}
