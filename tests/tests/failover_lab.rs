//! The failover daemon in the lab: real agents, real ZooKeeper, real routes
//! in the fabric namespace, and a client whose requests must keep being
//! answered.

use std::time::{Duration, Instant};

use nva_tests::lab::{
    self, fail_nva, repair_nva, FailoverDaemon, Lab, RequestStream, Service, FAILURE_KINDS,
};
use nva_tests::zookeeper::Ensemble;
use nva_tests::{require_root, wait_until};

/// Waits until the routes point at NVA `i` (and returns how long it took).
fn wait_routed(lab: &Lab, i: usize, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    wait_until(within, || lab.routed_to() == Some(i)).then(|| started.elapsed())
}

fn switches(d: &FailoverDaemon) -> u64 {
    d.metric("nva_failover_switches_total").unwrap_or(-1.0) as u64
}

/// Kills, detaches, takes down: each kind of failure of the active NVA moves
/// traffic to the other one, with exactly one switch, and requests resume.
#[test]
fn failover_for_each_failure_kind() {
    require_root();
    let lab = Lab::new("k");
    let zk = Ensemble::start(&lab.mgmt, "k");
    let mut agents = lab.start_agents("k");
    let _service = Service::start(&lab);
    let cfg = lab.failover_config("fo-1", Some(&zk.connect_string()), 9190, 1);
    let d1 = FailoverDaemon::start(&lab, "k-fo-1", &cfg, 9190);
    let cfg = lab.failover_config("fo-2", Some(&zk.connect_string()), 9191, 1);
    let d2 = FailoverDaemon::start(&lab, "k-fo-2", &cfg, 9191);
    assert!(
        wait_routed(&lab, 0, Duration::from_secs(20)).is_some(),
        "nva-a activated: {}",
        d1.log_text()
    );
    let leader = if d1.is_leader() { &d1 } else { &d2 };
    let leader_log = || leader.log_text();
    assert!(!(d1.is_leader() && d2.is_leader()), "one leader");
    let requests = RequestStream::start(&lab, Duration::from_millis(20));
    assert!(
        wait_until(Duration::from_secs(10), || requests.answered() > 10),
        "requests answered through nva-a"
    );
    // The Azure shape: the public address (the VIP) reaches the service
    // through DNAT, and the backend goes out as the VIP through SNAT.
    // The daemon moves the VIP after the routes, each step behind a
    // leadership check with ZooKeeper: on a loaded machine (this file's
    // tests run side by side, each with its own ensemble) that can take a
    // while after the routes moved, so the switch is complete only when the
    // VIP is on the active NVA too.
    let nat_works = |when: &str, active: usize| {
        assert!(
            wait_until(Duration::from_secs(10), || lab.vip_holders() == [active]),
            "{when}: the VIP is on {} alone (held by {:?}): {}",
            ["nva-a", "nva-b"][active],
            lab.vip_holders(),
            leader_log()
        );
        assert!(
            lab::request(&lab, lab::VIP, lab::PUBLIC_PORT),
            "{when}: the client reaches the service through {}:{} (DNAT); the fabric has {:?} for the VIP, nva-{}'s ext0 is {}",
            lab::VIP,
            lab::PUBLIC_PORT,
            lab.fabric_vip_mac(),
            ["a", "b"][active],
            lab.ext_mac(active)
        );
        let seen = lab::backend_out_seen_as(&lab).expect("the backend connects out");
        assert_eq!(
            seen.ip().to_string(),
            lab::VIP,
            "{when}: the client sees the VIP (SNAT)"
        );
    };
    nat_works("on nva-a", 0);

    let mut outages = Vec::new();
    let mut active = 0;
    for (k, kind) in FAILURE_KINDS.iter().enumerate() {
        // The dwell time (1 s) since the last switch has passed.
        std::thread::sleep(Duration::from_millis(1500));
        let before = switches(leader);
        let failed_at = Instant::now();
        fail_nva(&lab, &mut agents, active, k);
        let other = 1 - active;
        let took = wait_routed(&lab, other, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{kind}: traffic did not move: {}", leader.log_text()));
        assert!(
            wait_until(Duration::from_secs(5), || requests
                .answered_since(failed_at + took)
                > 5),
            "{kind}: requests resumed through {}",
            ["nva-a", "nva-b"][other]
        );
        let outage = requests.longest_gap_since(failed_at);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(switches(leader), before + 1, "{kind}: exactly one switch");
        // Leader or not, every daemon reports the active NVA it reads.
        let name = ["nva-a", "nva-b"][other];
        for d in [&d1, &d2] {
            assert!(
                wait_until(Duration::from_secs(3), || d
                    .status()
                    .is_some_and(|s| s["active"] == name)),
                "{kind}: a daemon's /status names {name}: {:?}",
                d.status()
            );
        }
        eprintln!("{kind}: routes switched after {took:?}, longest gap between answers {outage:?}");
        outages.push((kind, took, outage));
        // Repair the failed NVA for the next round (no automatic failback).
        repair_nva(&lab, &mut agents, active, k);
        active = other;
    }
    nat_works(
        &format!("after the failovers, on {}", ["nva-a", "nva-b"][active]),
        active,
    );
    let sent = requests.stop();
    eprintln!("outages (interval_ms = 100, fall = 3, session timeout 2000 ms): {outages:?}; {sent} requests sent");
    for (kind, _, outage) in &outages {
        assert!(
            *outage < Duration::from_secs(5),
            "{kind}: outage {outage:?}"
        );
    }
}

/// Killing the leader elects the other daemon without a spurious switch;
/// a switch left half done (desired state written, routes not yet) is
/// completed by the new leader.
#[test]
fn leader_failure_elects_the_other_and_completes_a_half_done_switch() {
    require_root();
    let lab = Lab::new("l");
    let zk = Ensemble::start(&lab.mgmt, "l");
    let _agents = lab.start_agents("l");
    let mut d1 = FailoverDaemon::start(
        &lab,
        "l-fo-1",
        &lab.failover_config("fo-1", Some(&zk.connect_string()), 9190, 1),
        9190,
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut d2 = FailoverDaemon::start(
        &lab,
        "l-fo-2",
        &lab.failover_config("fo-2", Some(&zk.connect_string()), 9191, 1),
        9191,
    );
    assert!(wait_routed(&lab, 0, Duration::from_secs(20)).is_some());
    assert!(
        wait_until(Duration::from_secs(5), || d1.is_leader()),
        "the first daemon leads"
    );
    assert!(!d2.is_leader());

    let killed = Instant::now();
    d1.kill9();
    assert!(
        wait_until(Duration::from_secs(8), || d2.is_leader()),
        "fo-2 leads after the session timeout: {}",
        d2.log_text()
    );
    let elected_after = killed.elapsed();
    eprintln!("new leader after {elected_after:?} (session timeout 2000 ms)");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.routed_to(), Some(0), "no spurious switch");
    assert_eq!(switches(&d2), 0);

    // The first daemon comes back (as a follower); then the leader dies in
    // the middle of a switch: the desired state says nva-b, the routes
    // still say nva-a.
    d1.spawn(&lab.mgmt);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!d1.is_leader() && d2.is_leader());
    d2.kill9();
    let zk_connect = zk.connect_string();
    let mgmt = lab.mgmt.name.clone();
    nva_tests::in_netns_named(&mgmt, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use nva::failover::coord::{SharedState, ZkCoordinator};
            // Joins the election last, so it never leads; it only writes
            // what the dead leader's first phase would have written.
            let mut c =
                ZkCoordinator::join(&zk_connect, "/nva/lab", "test", Duration::from_secs(2))
                    .await
                    .unwrap();
            let mut state: SharedState = c.read_state().await.unwrap();
            state.active = Some("nva-b".into());
            c.write_state(&state).await.unwrap();
        })
    });
    assert!(
        wait_routed(&lab, 1, Duration::from_secs(10)).is_some(),
        "the new leader completes the switch: {}",
        d1.log_text()
    );
    assert!(d1.is_leader());
    assert!(
        wait_until(Duration::from_secs(3), || d1
            .metric("nva_failover_repairs_total")
            .is_some_and(|r| r >= 1.0)),
        "counted as a repair"
    );
}

/// A leader cut off from ZooKeeper (two of three nodes stopped) stops
/// acting: the active NVA failing meanwhile causes no switch. With the
/// quorum back, it leads again and switches.
#[test]
fn leader_without_quorum_does_not_switch() {
    require_root();
    let lab = Lab::new("f");
    let mut zk = Ensemble::start(&lab.mgmt, "f");
    let _agents = lab.start_agents("f");
    let d = FailoverDaemon::start(
        &lab,
        "f-fo-1",
        &lab.failover_config("fo-1", Some(&zk.connect_string()), 9190, 1),
        9190,
    );
    assert!(wait_routed(&lab, 0, Duration::from_secs(20)).is_some());
    assert!(d.is_leader());
    zk.kill_node(1);
    zk.kill_node(2);
    assert!(
        wait_until(Duration::from_secs(10), || !d.is_leader()),
        "the daemon stops leading without a quorum"
    );
    lab.nvas[0].ip(&["link", "set", "dev", "ext0", "down"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.routed_to(), Some(0), "no switch without the ensemble");
    assert_eq!(switches(&d), 0, "no failover");
    zk.start_node(1);
    zk.start_node(2);
    assert!(
        wait_routed(&lab, 1, Duration::from_secs(40)).is_some(),
        "with the quorum back, the failover happens: {}",
        d.log_text()
    );
}

/// A flapping NVA causes at most one switch within min_dwell_s; both NVAs
/// down causes none.
#[test]
fn flapping_and_both_down_cause_no_extra_switch() {
    require_root();
    let lab = Lab::new("a");
    let _agents = lab.start_agents("a");
    let d = FailoverDaemon::start(
        &lab,
        "a-fo-1",
        &lab.failover_config("fo-1", None, 9190, 30),
        9190,
    );
    assert!(
        wait_routed(&lab, 0, Duration::from_secs(20)).is_some(),
        "{}",
        d.log_text()
    );
    // nva-a flaps: down 1 s, up 1 s, three times; nva-b fails in between.
    for round in 0..3 {
        lab.nvas[0].ip(&["link", "set", "dev", "ext0", "down"]);
        std::thread::sleep(Duration::from_millis(1000));
        if round == 0 {
            assert_eq!(lab.routed_to(), Some(1), "the first failure switches");
        }
        lab.nvas[0].ip(&["link", "set", "dev", "ext0", "up"]);
        lab.nvas[1].ip(&["link", "set", "dev", "ext0", "down"]);
        std::thread::sleep(Duration::from_millis(1000));
        lab.nvas[1].ip(&["link", "set", "dev", "ext0", "up"]);
    }
    assert_eq!(
        switches(&d),
        1,
        "one switch within min_dwell_s: {}",
        d.metrics_text()
    );
    assert_eq!(lab.routed_to(), Some(1));
    // The daemon's /metrics pass promtool.
    let text = d.metrics_text();
    nva_tests::traffic::promtool_check(&text)
        .unwrap_or_else(|e| panic!("promtool check metrics of the daemon: {e}\n{text}"));
    // Both down: no switch, a loud alert.
    lab.nvas[0].ip(&["link", "set", "dev", "ext0", "down"]);
    lab.nvas[1].ip(&["link", "set", "dev", "ext0", "down"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        switches(&d),
        1,
        "no switch with both NVAs down: {}",
        d.log_text()
    );
    assert!(d.log_text().contains("no healthy standby"), "alerted");

    // The daemon's /status and /metrics under abuse: still answering,
    // abusers cut off, memory bounded.
    let pid = d.child.as_ref().expect("running").pid() as u64;
    let at = d.metrics.to_string();
    for path in ["/status", "/metrics"] {
        let probe = || {
            nva_tests::traffic::http_get(&lab.mgmt, &at, path)
                .map(|(code, _)| code)
                .unwrap_or(0)
        };
        let figures = nva_tests::abuse::abuse_http(
            &lab.mgmt,
            d.metrics,
            pid,
            &probe,
            Duration::from_millis(500),
        );
        eprintln!("failover daemon {path} under abuse: {figures:?}");
    }
}

/// `nva failover promote|freeze|unfreeze|status` reach the leader through
/// ZooKeeper.
#[test]
fn operator_commands_go_through_the_leader() {
    require_root();
    let lab = Lab::new("o");
    let zk = Ensemble::start(&lab.mgmt, "o");
    let _agents = lab.start_agents("o");
    let d = FailoverDaemon::start(
        &lab,
        "o-fo-1",
        &lab.failover_config("fo-1", Some(&zk.connect_string()), 9190, 0),
        9190,
    );
    assert!(wait_routed(&lab, 0, Duration::from_secs(20)).is_some());
    let nva = |args: &[&str]| {
        let mut full = vec![
            nva_tests::nva_binary().display().to_string(),
            "failover".into(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        full.push("--config".into());
        full.push(d.config.display().to_string());
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        lab.mgmt.nsenter(&full).output().unwrap()
    };
    // The VIP is on nva-a; the fabric learns its MAC (ARP passes XDP).
    assert!(
        wait_until(Duration::from_secs(3), || lab.vip_holders() == [0]),
        "VIP on nva-a"
    );
    let _ = lab
        .fabric
        .exec(&["ping", "-c", "1", "-W", "1", nva_tests::lab::VIP]);
    assert_eq!(lab.fabric_vip_mac(), Some(lab.ext_mac(0)));
    // Past the neighbour lock time, so that the announcement may override.
    std::thread::sleep(Duration::from_millis(1100));
    let out = nva(&["promote", "nva-b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_routed(&lab, 1, Duration::from_secs(5)).is_some(),
        "promoted: {}",
        d.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(3), || lab.vip_holders() == [1]),
        "VIP moved to nva-b: {}",
        d.log_text()
    );
    let mac_b = lab.ext_mac(1);
    assert!(
        wait_until(Duration::from_secs(2), || lab.fabric_vip_mac().as_ref()
            == Some(&mac_b)),
        "gratuitous ARP updated the fabric's neighbour entry: {:?} (nva-b is {mac_b})",
        lab.fabric_vip_mac()
    );
    let out = nva(&["promote", "nva-x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no NVA named \"nva-x\""));

    assert!(nva(&["freeze"]).status.success());
    assert!(wait_until(Duration::from_secs(3), || d
        .status()
        .is_some_and(|s| s["frozen"] == true)));
    lab.nvas[1].ip(&["link", "set", "dev", "ext0", "down"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.routed_to(), Some(1), "frozen: no switch");
    let out = nva(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["leader"], "fo-1");
    assert_eq!(status["active"], "nva-b");
    assert_eq!(status["frozen"], true);
    assert!(nva(&["unfreeze"]).status.success());
    assert!(
        wait_routed(&lab, 0, Duration::from_secs(5)).is_some(),
        "unfrozen: the failover happens"
    );
}
