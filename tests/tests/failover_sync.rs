//! Failover with connection-state sync, in the lab: real agents (stateful,
//! `loose_tcp = false`, `[sync]` on the management network), real
//! ZooKeeper, two failover daemons. Sixteen long-lived TCP connections
//! exchange a line every 50 ms: eight through DNAT on the VIP, four
//! straight to the backend, four from the backend out through SNAT. For each
//! failure kind the active NVA fails, traffic moves to the other one, and
//! every connection must carry on: none is reset, and the longest pause of
//! each is measured and reported. The failed NVA is repaired (a killed
//! agent restarts and catches up by a full resync) and the next round fails
//! the other NVA, so both directions of the sync are exercised: the first
//! round kills the first active NVA's agent, which restarts as the standby
//! while traffic flows through the other and catches up by a full resync;
//! the second round fails the other, and the restarted one carries every
//! connection on.

use std::time::{Duration, Instant};

use nva_tests::lab::{self, fail_nva, repair_nva, FailoverDaemon, Lab, Service, FAILURE_KINDS};
use nva_tests::long_lived::{standby_caught_up, Established};
use nva_tests::zookeeper::Ensemble;
use nva_tests::{require_root, wait_until};

/// The drop counters of NVA `i` that are not zero (diagnostics).
fn drops(lab: &Lab, i: usize) -> String {
    lab.agent_metrics(i)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("nva_packets_total{verdict=\"drop\"") && !l.ends_with(" 0"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn established_connections_survive_each_failure_kind() {
    require_root();
    let lab = Lab::new("w");
    let (dir, key) = lab::sync_key("w");

    let zk = Ensemble::start(&lab.mgmt, "w");
    let mut agents = lab.start_agents_with_sync("w", &key);
    let service = Service::start(&lab);
    let cfg = lab.failover_config("fo-1", Some(&zk.connect_string()), 9190, 1);
    let d1 = FailoverDaemon::start(&lab, "w-fo-1", &cfg, 9190);
    let cfg = lab.failover_config("fo-2", Some(&zk.connect_string()), 9191, 1);
    let d2 = FailoverDaemon::start(&lab, "w-fo-2", &cfg, 9191);
    // Whichever NVA the daemons activate first carries the connections.
    assert!(
        wait_until(Duration::from_secs(30), || lab.routed_to().is_some()),
        "an NVA activated: {} {}",
        d1.log_text(),
        d2.log_text()
    );
    let first_active = lab.routed_to().expect("routed");
    // The VIP moves after the routes (see failover_lab): the DNAT
    // connections need it.
    assert!(
        wait_until(Duration::from_secs(10), || lab.vip_holders()
            == [first_active]),
        "the VIP is on the active NVA alone (held by {:?})",
        lab.vip_holders()
    );

    let established = Established::start(&lab);
    let started = Instant::now();
    let silent = established.wait_answers(started, 5, Duration::from_secs(5));
    assert!(
        silent.is_empty(),
        "every connection talks through the active NVA: {silent:?} do not"
    );

    let mut report = Vec::new();
    let mut active = first_active;
    // Each kind twice, so that each NVA fails in each way once. A detached
    // program leaves the failed NVA's kernel the packets to its own
    // (public) address: its NAT guard must keep it from resetting the
    // translated connections.
    for k in [0, 1, 2, 0, 1, 2] {
        let kind = FAILURE_KINDS[k];
        // The dwell time has passed, and the standby has caught up (a
        // restarted standby by a full resync).
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            standby_caught_up(&lab, active, Duration::from_secs(20)),
            "{kind}: the standby {} caught up with the sync",
            lab::NVA_NAMES[1 - active]
        );
        let failed_at = Instant::now();
        fail_nva(&lab, &mut agents, active, k);
        let other = 1 - active;
        assert!(
            wait_until(Duration::from_secs(10), || lab.routed_to() == Some(other)),
            "{kind}: traffic did not move: {} {}",
            d1.log_text(),
            d2.log_text()
        );
        let stuck = established.wait_answers(Instant::now(), 4, Duration::from_secs(20));
        assert!(
            stuck.is_empty(),
            "{kind}: connections {stuck:?} did not resume through {}; its drops: {}",
            lab::NVA_NAMES[other],
            drops(&lab, other)
        );
        let mut pauses = Vec::new();
        for (name, pause) in established.pauses_since(failed_at) {
            match pause {
                Ok(p) => pauses.push((name, p)),
                Err(e) => panic!("{kind}: connection {name} broke: {e}"),
            }
        }
        let longest = pauses.iter().map(|(_, p)| *p).max().unwrap();
        eprintln!("{kind}: longest pause per connection {pauses:?}; worst {longest:?}");
        report.push((kind, longest));
        repair_nva(&lab, &mut agents, active, k);
        active = other;
    }
    eprintln!(
        "sync failover: worst pause of an established connection per failure kind: {report:?}"
    );
    for (kind, longest) in &report {
        assert!(
            *longest < Duration::from_secs(10),
            "{kind}: pause {longest:?}"
        );
    }
    drop(established);
    drop(service);
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
}
