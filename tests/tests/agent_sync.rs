//! Connection-state sync between two real agents in the HA lab's
//! namespaces (management network for the sync, `loose_tcp = false`):
//! connections opened through nva-a, some of them through DNAT on the VIP,
//! are synced to nva-b; the routes and the VIP then move to nva-b, as a
//! failover does, and every connection carries on without a reset. Garbage
//! on the sync port is rejected and adds no flow.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nva_tests::agent::RunningAgent;
use nva_tests::lab::{self, Lab};
use nva_tests::{in_netns, require_root, wait_until};

const CONNECTIONS: usize = 6;

/// Points the fabric's tables (and the VIP) at NVA `i`, as the failover
/// daemon's linux provider does.
fn route_to(lab: &Lab, i: usize) {
    let host = 11 + i;
    lab.fabric.ip(&[
        "route",
        "replace",
        "10.40.0.0/24",
        "via",
        &format!("10.10.0.{host}"),
        "table",
        "100",
    ]);
    lab.fabric.ip(&[
        "route",
        "replace",
        "10.30.0.0/24",
        "via",
        &format!("10.20.0.{host}"),
        "table",
        "200",
    ]);
    let vip = format!("{}/24", lab::VIP);
    let _ = lab.nvas[1 - i].exec(&["ip", "addr", "del", &vip, "dev", "ext0"]);
    lab.nvas[i].ip(&["addr", "add", &vip, "dev", "ext0"]);
    let _ = lab.fabric.exec(&["ip", "neigh", "flush", "dev", "brx"]);
    let _ = lab.fabric.exec(&["ip", "neigh", "flush", "dev", "bri"]);
}

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(lab: &Lab, ip: &str, port: u16) -> Conn {
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        let s = in_netns(&lab.client, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn exchange(&mut self, text: &str) -> Result<(), String> {
        writeln!(self.w, "{text}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim_end() == text {
            Ok(())
        } else {
            Err(format!("got {line:?}"))
        }
    }
}

fn flows(agent: &RunningAgent) -> usize {
    let out = agent.nva(&["conntrack", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .iter()
        .filter(|f| f["state"] == "ESTABLISHED")
        .count()
}

fn metric(lab: &Lab, i: usize, name: &str) -> f64 {
    let (code, body) =
        nva_tests::traffic::http_get(&lab.mgmt, &format!("10.99.1.{}:9090", 11 + i), "/metrics")
            .unwrap();
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn synced_connections_survive_the_switch_and_garbage_is_rejected() {
    require_root();
    let lab = Lab::new("y");
    let (dir, key) = lab::sync_key("y");
    let agents: Vec<RunningAgent> = (0..2)
        .map(|i| {
            let config = Lab::agent_config_with_sync(i, &key);
            RunningAgent::start_in(&lab.nvas[i], &format!("sync{i}"), &config, true)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    lab::line_echo(
        &lab.backend,
        SocketAddr::new(lab::BACKEND.parse().unwrap(), lab::SERVICE_PORT),
        stop.clone(),
    );
    route_to(&lab, 0);
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &lab,
            0,
            "nva_sync_peer_up"
        ) == 1.0
            && metric(&lab, 1, "nva_sync_peer_up") == 1.0),
        "both agents connect to their peer"
    );

    // Half direct, half through DNAT on the VIP.
    let mut conns: Vec<Conn> = (0..CONNECTIONS)
        .map(|k| {
            if k % 2 == 0 {
                Conn::open(&lab, lab::BACKEND, lab::SERVICE_PORT)
            } else {
                Conn::open(&lab, lab::VIP, lab::PUBLIC_PORT)
            }
        })
        .collect();
    for (k, c) in conns.iter_mut().enumerate() {
        c.exchange(&format!("before {k}")).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || flows(&agents[1]) >= CONNECTIONS),
        "nva-b has the connections: {} of {CONNECTIONS}",
        flows(&agents[1])
    );

    // The switch.
    route_to(&lab, 1);
    for (k, c) in conns.iter_mut().enumerate() {
        c.exchange(&format!("after {k}"))
            .unwrap_or_else(|e| panic!("connection {k} did not survive the switch: {e}"));
    }
    assert_eq!(
        metric(
            &lab,
            1,
            "nva_packets_total{verdict=\"drop\",reason=\"tcp_not_tracked\"}"
        ),
        0.0,
        "nva-b dropped no segment as untracked"
    );

    // Both agents' /metrics (rules, NAT, sync, forwarding) pass promtool.
    for i in 0..2 {
        let (_, body) = nva_tests::traffic::http_get(
            &lab.mgmt,
            &format!("10.99.1.{}:9090", 11 + i),
            "/metrics",
        )
        .unwrap();
        nva_tests::traffic::promtool_check(&body)
            .unwrap_or_else(|e| panic!("promtool check metrics of nva-{i}: {e}\n{body}"));
    }

    // Garbage on nva-b's sync port: rejected, no flow added.
    let before = flows(&agents[1]);
    let rejected = metric(&lab, 1, "nva_sync_rejected_total");
    in_netns(&lab.mgmt, || {
        let mut s = TcpStream::connect("10.99.1.12:7800").unwrap();
        let mut challenge = [0u8; 16];
        std::io::Read::read_exact(&mut s, &mut challenge).unwrap();
        let mut junk = vec![0u8, 0, 0, 200];
        junk.extend(std::iter::repeat_n(0x41u8, 200));
        let _ = s.write_all(&junk);
    });
    assert!(
        wait_until(Duration::from_secs(3), || metric(
            &lab,
            1,
            "nva_sync_rejected_total"
        ) > rejected),
        "garbage is counted as rejected"
    );
    assert_eq!(flows(&agents[1]), before, "garbage adds no flow");

    // A frame under another key, and a frame replayed on a second
    // connection (valid on the first): both rejected, no flow added.
    let secret = std::fs::read(&key).unwrap();
    let record = nva::sync::codec::FlowRecord {
        proto: 6,
        src: lab::CLIENT.parse().unwrap(),
        sport: 45678,
        dst: lab::BACKEND.parse().unwrap(),
        dport: lab::SERVICE_PORT,
        vlan: [0, 0],
        origin_iface: 0,
        state: 3,
        idle_ms: 0,
        age_ms: 0,
        nat: None,
    };
    let payload = nva::sync::codec::encode_flows(&[record]);
    let send = |secret: &[u8], challenge_of: &mut Option<[u8; 16]>| -> TcpStream {
        in_netns(&lab.mgmt, || {
            let mut s = TcpStream::connect("10.99.1.12:7800").unwrap();
            let mut challenge = [0u8; 16];
            std::io::Read::read_exact(&mut s, &mut challenge).unwrap();
            let c = challenge_of.unwrap_or(challenge);
            let key = nva::sync::codec::Key::new(secret.trim_ascii());
            let mut sealer = nva::sync::codec::Sealer::new(key, c, [9; 16]);
            let frame = sealer
                .seal(nva::sync::codec::Kind::Flows, &payload)
                .unwrap();
            s.write_all(&frame).unwrap();
            *challenge_of = Some(challenge);
            s
        })
    };
    let rejected = metric(&lab, 1, "nva_sync_rejected_total");
    let _wrong = send(b"not the pair's key at all", &mut None);
    assert!(
        wait_until(Duration::from_secs(3), || metric(
            &lab,
            1,
            "nva_sync_rejected_total"
        ) > rejected),
        "a frame under another key is rejected"
    );
    // The first connection's frame is valid there (its challenge)...
    let mut first_challenge = None;
    let _first = send(&secret, &mut first_challenge);
    assert!(
        wait_until(Duration::from_secs(3), || flows(&agents[1]) == before + 1),
        "a valid frame from a key holder is imported"
    );
    let rejected = metric(&lab, 1, "nva_sync_rejected_total");
    // ... replayed on another connection, it is not.
    let _second = send(&secret, &mut first_challenge);
    assert!(
        wait_until(Duration::from_secs(3), || metric(
            &lab,
            1,
            "nva_sync_rejected_total"
        ) > rejected),
        "a replayed frame is rejected"
    );
    assert_eq!(flows(&agents[1]), before + 1, "the replay adds no flow");
    stop.store(true, Ordering::Relaxed);
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
}
