//! Real traffic through `nva agent`: client -- nva (XDP on both links,
//! forward = "kernel") -- server, each in its own network namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nva_tests::agent::RunningAgent;
use nva_tests::traffic::{tcp_refused, udp_delivered};

use nva_tests::{in_netns, nva_binary, require_root, Topology, NVA_IN_IF, NVA_OUT_IF};

fn config_text(t: &Topology) -> String {
    format!(
        r#"
[agent]
interfaces = ["{n0}", "{n1}"]
xdp_mode = "auto"
forward = "kernel"
health_listen = "0.0.0.0:9090"
bpffs = "{{bpffs}}"

[policy]
default = "drop"
fragments = "drop"

[[rules]]
name = "tcp-in"
action = "allow"
proto = "tcp"
dst = ["{s4}", "{s6}"]
dport = ["8080"]
in_iface = "{n0}"

[[rules]]
name = "tcp-replies"
action = "allow"
proto = "tcp"
src = ["{s4}", "{s6}"]
sport = ["8080"]
in_iface = "{n1}"

[[rules]]
name = "udp-in"
action = "allow"
proto = "udp"
dst = ["{s4}", "{s6}"]
dport = ["5353"]

[[rules]]
name = "udp-from-server-side-only"
action = "allow"
proto = "udp"
dport = ["6000"]
in_iface = "{n1}"

[[rules]]
name = "neighbour-discovery"
action = "allow"
proto = "icmpv6"
icmp_type = [133, 134, 135, 136]
"#,
        n0 = NVA_IN_IF,
        n1 = NVA_OUT_IF,
        s4 = t.server_v4(),
        s6 = t.server_v6(),
    )
}

fn tcp_exchange(t: &Topology, server_ip: &str, port: u16) -> std::io::Result<Vec<u8>> {
    let addr: SocketAddr = SocketAddr::new(server_ip.parse().unwrap(), port);
    let listener = in_netns(&t.server, || TcpListener::bind(addr).unwrap());
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        listener.set_nonblocking(false)?;
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        s.read_exact(&mut buf)?;
        s.write_all(&buf)?; // echo back 1 MiB
        Ok(())
    });
    let mut client = in_netns(&t.client, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    client.write_all(&data)?;
    let mut back = vec![0u8; data.len()];
    client.read_exact(&mut back)?;
    server.join().unwrap()?;
    assert_eq!(back, data, "echoed data intact");
    Ok(back)
}

#[test]
fn agent_enforces_rules_on_real_traffic() {
    require_root();
    let t = Topology::new(211);
    let check = std::process::Command::new(nva_binary())
        .args(["check", "--config", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(
                config_text(&t)
                    .replace("{bpffs}", "/sys/fs/bpf/x")
                    .as_bytes(),
            )?;
            c.wait()
        })
        .unwrap();
    assert!(check.success(), "nva check accepts the test config");
    let mut agent = RunningAgent::start(&t, &config_text(&t), true);
    // XDP is attached on both links.
    for dev in [NVA_IN_IF, NVA_OUT_IF] {
        let link = t.nva.exec_ok(&["ip", "link", "show", "dev", dev]);
        assert!(link.contains("xdp"), "XDP on {dev}: {link}");
    }

    // Allowed TCP, both families, carries data intact.
    tcp_exchange(&t, &t.server_v4(), 8080).expect("allowed v4 TCP works");
    tcp_exchange(&t, &t.server_v6(), 8080).expect("allowed v6 TCP works");
    assert!(agent.packets_of("tcp-in") > 100);
    assert!(agent.packets_of("tcp-replies") > 100);

    // TCP to a port no rule allows: refused, v4 and v6.
    assert!(
        tcp_refused(&t.client, &t.server, &t.server_v4(), 8081),
        "v4 tcp/8081 must be dropped"
    );
    assert!(
        tcp_refused(&t.client, &t.server, &t.server_v6(), 8081),
        "v6 tcp/8081 must be dropped"
    );

    // Management (the health port) passes to the NVA itself despite
    // default = "drop", but not through it to the same port elsewhere.
    assert!(
        nva_tests::traffic::tcp_connects(&t.client, &format!("{}:9090", t.nva_in_v4())),
        "health port of the NVA reachable"
    );
    assert!(
        tcp_refused(&t.client, &t.server, &t.server_v4(), 9090),
        "management is no bypass to other hosts"
    );

    // Allowed UDP arrives, and the counter equals the datagrams sent.
    let before = agent.packets_of("udp-in");
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 5353, 50),
        50
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v6(), 5353, 30),
        30
    );
    assert_eq!(
        agent.packets_of("udp-in") - before,
        80,
        "udp-in counts every datagram"
    );

    // UDP no rule allows: nothing arrives.
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 5354, 10),
        0
    );

    // in_iface: udp/6000 is allowed only when it arrives on the server side.
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 6000, 10),
        0,
        "client->server udp/6000 dropped"
    );
    assert_eq!(
        udp_delivered(&t.server, &t.client, &t.client_v4(), 6000, 10),
        10,
        "server->client udp/6000 passes"
    );
    assert_eq!(agent.packets_of("udp-from-server-side-only"), 10);

    // SIGTERM: the agent exits cleanly and detaches.
    let status = agent.child.take().unwrap().stop().expect("agent exited");
    assert!(
        status.success() || status.code().is_none(),
        "agent exit: {status:?}"
    );
    for dev in [NVA_IN_IF, NVA_OUT_IF] {
        let link = t.nva.exec_ok(&["ip", "link", "show", "dev", dev]);
        assert!(!link.contains("xdp"), "XDP detached from {dev}: {link}");
    }
    // With no filter, the formerly dropped port is reachable.
    assert!(!tcp_refused(&t.client, &t.server, &t.server_v4(), 8081));
}

#[test]
fn check_reports_errors_with_positions() {
    let dir = std::env::temp_dir().join(format!("nva-check-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[agent]\ninterfaces = [\"eth0\"]\n\n[policy]\ndefault = \"drop\"\n\n[[rules]]\nname = \"x\"\naction = \"allow\"\nproto = \"tcp\"\ndst = [\"10.0.0.300/24\"]\ndport = [\"90-80\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(nva_binary())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = bad.display().to_string();
    assert!(
        stderr.contains(&format!("{path}:11:")),
        "dst error position: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{path}:12:")),
        "dport error position: {stderr}"
    );
    let good = dir.join("good.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/example.toml"),
        &good,
    )
    .unwrap();
    let out = std::process::Command::new(nva_binary())
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "one-line summary"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A block list through `nva agent` and real packets: `nva check` names
/// the short path, the listed destinations are dropped and the rest passes,
/// and a reload moving the list to the other family swaps both at once.
#[test]
fn a_block_list_drops_what_it_lists_and_passes_the_rest() {
    require_root();
    let t = Topology::new(241);
    let config = |blocked: &str| {
        format!(
            r#"
[agent]
interfaces = ["{NVA_IN_IF}", "{NVA_OUT_IF}"]
forward = "kernel"
health_listen = "127.0.0.1:9090"
bpffs = "{{bpffs}}"

[policy]
default = "drop"

[[rules]]
name = "block-server"
action = "drop"
dst = ["{blocked}"]

[[rules]]
name = "block-elsewhere"
action = "drop"
dst = ["198.51.100.0/24", "203.0.113.7/32", "2001:db8:ffff::/48"]

[[rules]]
name = "allow-the-rest"
action = "allow"
"#
        )
    };
    let agent = RunningAgent::start(&t, &config(&t.server_v4()), true);
    let check = agent.nva(&["check"]);
    let report = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{report}");
    assert!(
        report.contains("address prefixes only"),
        "nva check names the short path: {report}"
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 7001, 20),
        0,
        "the listed IPv4 address is dropped"
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v6(), 7001, 20),
        20,
        "the rest passes"
    );
    assert!(agent.packets_of("block-server") >= 20);

    agent.write_config(&config(&t.server_v6()));
    let out = agent.nva(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v6(), 7002, 20),
        0,
        "after the reload the listed IPv6 address is dropped"
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 7002, 20),
        20,
        "and IPv4 passes"
    );
    drop(agent);
}
