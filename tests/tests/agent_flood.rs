//! Conntrack under a flood, with real traffic through `nva agent`
//! (issue "Hardening" §3): eight established TCP connections that exchange
//! a line every second, through a 4,096-entry table with
//! `loose_tcp = false`, survive floods of 100,000 new flows from spoofed
//! sources: UDP flows of one packet, UDP flows of two packets (a second
//! packet makes an entry look used to an LRU), and a SYN flood against the
//! server's listening port, which answers with SYN-ACKs. An evicted
//! connection would lose its next segment (`tcp_not_tracked`) and break.
//! The test prints the figures: entries, evictions, and how long a new
//! connection takes to open during the SYN flood.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nva_tests::agent::RunningAgent;
use nva_tests::frames::{ethernet, ipv4, tcp, udp, with_checksums, ETH_P_IP};
use nva_tests::lab::line_echo;
use nva_tests::long_lived::LineTalker;
use nva_tests::raw::RawSender;
use nva_tests::traffic::http_get;
use nva_tests::{require_root, wait_until, Topology, CLIENT_IF, NVA_IN_IF};

const TOPOLOGY: u8 = 230;
const ECHO_PORT: u16 = 7000;
/// Closed on the server: a UDP flood target.
const DISCARD_PORT: u16 = 9;
const TABLE: u32 = 4096;
const CONNECTIONS: usize = 8;
const FLOWS: u32 = 100_000;
/// Frames sent between two short pauses, so that the veth's queue (the
/// NVA's receive ring) is not overrun and the program sees every flow.
const BURST: u32 = 128;

fn config(t: &Topology) -> String {
    format!(
        r#"
[agent]
interfaces = ["{n0}", "{n1}"]
health_listen = "0.0.0.0:9090"
bpffs = "{{bpffs}}"

[policy]
default = "drop"
stateful = true
loose_tcp = false
conntrack_max = {TABLE}

[[rules]]
name = "clients-to-echo"
action = "allow"
proto = "tcp"
src = ["10.{id}.0.0/16"]
dst = ["{server}"]
dport = ["{ECHO_PORT}"]

[[rules]]
name = "clients-to-discard"
action = "allow"
proto = "udp"
src = ["10.{id}.0.0/16"]
dst = ["{server}"]
dport = ["{DISCARD_PORT}"]
"#,
        n0 = nva_tests::NVA_IN_IF,
        n1 = nva_tests::NVA_OUT_IF,
        id = t.id,
        server = t.server_v4(),
    )
}

/// The `n`th spoofed source: 10.ID.64.0/18, behind the client.
fn spoofed(t: &Topology, n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, t.id, 64 + ((n >> 8) & 63) as u8, (n & 0xff) as u8)
}

#[derive(Clone, Copy, Debug)]
enum Flood {
    UdpOnePacket,
    UdpTwoPackets,
    Syn,
}

/// Sends `FLOWS` new flows of `kind`; returns how many frames the kernel
/// refused (a full queue, retried once after a pause).
fn flood(t: &Topology, sender: &RawSender, kind: Flood) -> u32 {
    let server: Ipv4Addr = t.server_v4().parse().unwrap();
    let (proto, per_flow, port_base) = match kind {
        Flood::UdpOnePacket => (17, 1, 10_000),
        Flood::UdpTwoPackets => (17, 2, 20_000),
        Flood::Syn => (6, 1, 30_000),
    };
    let mut refused = 0;
    for n in 0..FLOWS {
        let sport = port_base + (n >> 14) as u16;
        let l4 = if proto == 6 {
            tcp(sport, ECHO_PORT, nva_common::TCP_SYN)
        } else {
            udp(sport, DISCARD_PORT, b"flood")
        };
        let mut frame = with_checksums(ethernet(
            &[],
            ETH_P_IP,
            &ipv4(spoofed(t, n), server, proto, &[], 0, &l4),
        ));
        for _ in 0..per_flow {
            if !sender.send(&mut frame) {
                std::thread::sleep(Duration::from_millis(2));
                if !sender.send(&mut frame) {
                    refused += 1;
                }
            }
        }
        if n % BURST == BURST - 1 {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    refused
}

fn metric(t: &Topology, name: &str) -> Option<f64> {
    let (code, body) = http_get(&t.client, &format!("{}:9090", t.nva_in_v4()), "/metrics").ok()?;
    (code == 200).then_some(())?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[test]
fn established_connections_survive_floods_of_new_flows() {
    require_root();
    let t = Topology::new(TOPOLOGY);
    // The spoofed sources live behind the client: the SYN-ACKs and ICMP
    // errors sent to them go back there (and are dropped by its kernel).
    t.nva.ip(&[
        "route",
        "add",
        &format!("10.{}.64.0/18", t.id),
        "via",
        &t.client_v4(),
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let echo: SocketAddr = format!("{}:{ECHO_PORT}", t.server_v4()).parse().unwrap();
    line_echo(&t.server, echo, stop.clone());
    let agent = RunningAgent::start(&t, &config(&t), true);
    let talkers: Vec<LineTalker> = (0..CONNECTIONS)
        .map(|_| LineTalker::start_every(&t.client, echo, Duration::from_secs(1)))
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || talkers.iter().all(|c| c
            .answered_since(Instant::now() - Duration::from_secs(60))
            > 0)),
        "the connections answer before the floods"
    );
    let sender = RawSender::open(&t.client, CLIENT_IF, &t.nva, NVA_IN_IF);
    for kind in [Flood::UdpOnePacket, Flood::UdpTwoPackets, Flood::Syn] {
        let started = Instant::now();
        // During the SYN flood a new connection opens too.
        let newcomer = matches!(kind, Flood::Syn).then(|| {
            let client = t.client.name.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let begun = Instant::now();
                let result = nva_tests::in_netns_named(&client, || {
                    TcpStream::connect_timeout(&echo, Duration::from_secs(10))
                });
                (result.map(|_| ()), begun.elapsed())
            })
        });
        let refused = flood(&t, &sender, kind);
        let took = started.elapsed();
        // Every connection exchanges lines after the flood, as before.
        let after = Instant::now();
        assert!(
            wait_until(Duration::from_secs(4), || talkers
                .iter()
                .all(|c| c.answered_since(after) >= 2 || c.error().is_some())),
            "{kind:?}: some connection stalled"
        );
        for (i, c) in talkers.iter().enumerate() {
            assert_eq!(
                c.error(),
                None,
                "connection {i} broke in the {kind:?} flood"
            );
        }
        let count = agent.nva(&["conntrack", "count"]);
        let entries = String::from_utf8_lossy(&count.stdout).trim().to_string();
        eprintln!(
            "{kind:?}: {FLOWS} flows in {:.2} s ({refused} frames refused by the sender's queue), {entries} flows tracked after it, longest pause of a connection {:?}",
            took.as_secs_f64(),
            talkers
                .iter()
                .map(|c| c.longest_pause_since(started))
                .max()
                .unwrap()
        );
        if let Some(newcomer) = newcomer {
            let (result, opened_in) = newcomer.join().unwrap();
            eprintln!("Syn: a new connection during the flood: {result:?} in {opened_in:?}");
        }
    }
    // The floods overflowed the table: the program created far more flows
    // than it holds, and evicted the surplus (counted at the agent's sweep).
    let mut figures = (0.0, 0.0);
    assert!(
        wait_until(Duration::from_secs(15), || {
            figures = (
                metric(&t, "nva_conntrack_created_total ").unwrap_or(0.0),
                metric(&t, "nva_conntrack_evictions_total ").unwrap_or(0.0),
            );
            figures.0 >= 3.0 * FLOWS as f64 * 0.9
        }),
        "the program saw the floods: {figures:?} (created, evicted)"
    );
    eprintln!(
        "created {} flows, evicted {} (the table holds {TABLE} answered and {} unreplied)",
        figures.0,
        figures.1,
        nva::datapath::unreplied_capacity(TABLE)
    );
    assert!(figures.1 > 0.0, "the floods overflowed the table");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(talkers);
    drop(agent);
}
