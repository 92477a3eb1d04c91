//! Real traffic through `nva agent`: client -- nva (XDP on both links,
//! forward = "kernel") -- server, each in its own network namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use nva_tests::{
    in_netns, nva_binary, require_root, wait_until, ChildGuard, Topology, NVA_IN_IF, NVA_OUT_IF,
};

struct Agent {
    child: ChildGuard,
    config: std::path::PathBuf,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config_text(t: &Topology, bpffs: &str) -> String {
    format!(
        r#"
[agent]
interfaces = ["{n0}", "{n1}"]
xdp_mode = "auto"
forward = "kernel"
health_listen = "127.0.0.1:9090"
bpffs = "{bpffs}"

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

fn start_agent(t: &Topology) -> Agent {
    let dir = std::env::temp_dir().join(format!("nva-agent-test-{}-{}", std::process::id(), t.id));
    std::fs::create_dir_all(&dir).unwrap();
    let bpffs = format!("/sys/fs/bpf/nva-test-{}-{}", std::process::id(), t.id);
    let config = dir.join("nva.toml");
    std::fs::write(&config, config_text(t, &bpffs)).unwrap();
    let check = std::process::Command::new(nva_binary())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nva check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = t
        .nva
        .nsenter(&[
            nva_binary().to_str().unwrap(),
            "agent",
            "--config",
            config.to_str().unwrap(),
        ])
        .spawn()
        .expect("spawn nva agent");
    let agent = Agent {
        child: ChildGuard::new(child),
        config,
        _dir: TempDir(dir),
    };
    let started = wait_until(Duration::from_secs(30), || rules_json(&agent).is_some());
    assert!(started, "agent did not come up");
    agent
}

/// `nva rules --json` as (name, packets).
fn rules_json(agent: &Agent) -> Option<Vec<(String, u64)>> {
    let out = std::process::Command::new(nva_binary())
        .args(["rules", "--json", "--config"])
        .arg(&agent.config)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["packets"].as_u64().unwrap(),
                )
            })
            .collect(),
    )
}

fn packets_of(agent: &Agent, rule: &str) -> u64 {
    rules_json(agent)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == rule)
        .unwrap_or_else(|| panic!("rule {rule} missing"))
        .1
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

fn tcp_refused(t: &Topology, server_ip: &str, port: u16) -> bool {
    let addr: SocketAddr = SocketAddr::new(server_ip.parse().unwrap(), port);
    // A listener exists, so only the filter can stop the connection.
    let _listener = in_netns(&t.server, || TcpListener::bind(addr).unwrap());
    in_netns(&t.client, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
    })
    .is_err()
}

/// Sends `n` datagrams from `from` to `to_ip:port` in namespace `to`;
/// returns how many arrived.
fn udp_delivered(
    from: &nva_tests::Netns,
    to: &nva_tests::Netns,
    to_ip: &str,
    port: u16,
    n: usize,
) -> usize {
    let addr = SocketAddr::new(to_ip.parse().unwrap(), port);
    let rx = in_netns(to, || UdpSocket::bind(addr).unwrap());
    rx.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let unspecified = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let tx = in_netns(from, || UdpSocket::bind(unspecified).unwrap());
    for i in 0..n {
        tx.send_to(format!("datagram {i}").as_bytes(), addr)
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut got = 0;
    let mut buf = [0u8; 64];
    while rx.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    got
}

#[test]
fn agent_enforces_rules_on_real_traffic() {
    require_root();
    let t = Topology::new(211);
    let agent = start_agent(&t);
    // XDP is attached on both links.
    for dev in [NVA_IN_IF, NVA_OUT_IF] {
        let link = t.nva.exec_ok(&["ip", "link", "show", "dev", dev]);
        assert!(link.contains("xdp"), "XDP on {dev}: {link}");
    }

    // Allowed TCP, both families, carries data intact.
    tcp_exchange(&t, &t.server_v4(), 8080).expect("allowed v4 TCP works");
    tcp_exchange(&t, &t.server_v6(), 8080).expect("allowed v6 TCP works");
    assert!(packets_of(&agent, "tcp-in") > 100);
    assert!(packets_of(&agent, "tcp-replies") > 100);

    // TCP to a port no rule allows: refused, v4 and v6.
    assert!(
        tcp_refused(&t, &t.server_v4(), 8081),
        "v4 tcp/8081 must be dropped"
    );
    assert!(
        tcp_refused(&t, &t.server_v6(), 8081),
        "v6 tcp/8081 must be dropped"
    );

    // Allowed UDP arrives, and the counter equals the datagrams sent.
    let before = packets_of(&agent, "udp-in");
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), 5353, 50),
        50
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v6(), 5353, 30),
        30
    );
    assert_eq!(
        packets_of(&agent, "udp-in") - before,
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
    assert_eq!(packets_of(&agent, "udp-from-server-side-only"), 10);

    // SIGTERM: the agent exits cleanly and detaches.
    let mut child = agent.child;
    let status = child.stop().expect("agent exited");
    assert!(
        status.success() || status.code().is_none(),
        "agent exit: {status:?}"
    );
    for dev in [NVA_IN_IF, NVA_OUT_IF] {
        let link = t.nva.exec_ok(&["ip", "link", "show", "dev", dev]);
        assert!(!link.contains("xdp"), "XDP detached from {dev}: {link}");
    }
    // With no filter, the formerly dropped port is reachable.
    assert!(!tcp_refused(&t, &t.server_v4(), 8081));
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
