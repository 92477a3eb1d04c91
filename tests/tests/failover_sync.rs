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
//! round kills nva-a's agent, which restarts as the standby while traffic
//! flows through nva-b and catches up by a full resync; the second round
//! fails nva-b, and nva-a carries every connection on.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nva_tests::agent::RunningAgent;
use nva_tests::lab::{self, fail_nva, repair_nva, FailoverDaemon, Lab, FAILURE_KINDS};
use nva_tests::zookeeper::Ensemble;
use nva_tests::{in_netns, require_root, wait_until, Netns};

const DIRECT: usize = 4;
const THROUGH_DNAT: usize = 8;
const THROUGH_SNAT: usize = 4;
const SNAT_PORT: u16 = 7000;
const EVERY: Duration = Duration::from_millis(50);

/// One long-lived connection exchanging a line every `EVERY`, recording
/// when each answer came, and the error that ended it, if any.
struct Talker {
    answers: Arc<Mutex<Vec<Instant>>>,
    error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Talker {
    fn start(ns: &Netns, to: SocketAddr) -> Talker {
        let conn = in_netns(ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
        })
        .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        // Generous: a failover pauses the connection for a while.
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (answers, error, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(None)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a, e, s) = (answers.clone(), error.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut w = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let text = format!("line {n}");
                let mut got = String::new();
                let result = writeln!(w, "{text}")
                    .map_err(|e| e.to_string())
                    .and_then(|_| r.read_line(&mut got).map_err(|e| e.to_string()));
                match result {
                    Ok(_) if got.trim_end() == text => a.lock().unwrap().push(Instant::now()),
                    Ok(_) => {
                        *e.lock().unwrap() = Some(format!("answer {got:?} to {text:?}"));
                        return;
                    }
                    Err(err) => {
                        *e.lock().unwrap() = Some(err);
                        return;
                    }
                }
                std::thread::sleep(EVERY);
            }
        });
        Talker {
            answers,
            error,
            stop,
            thread: Some(thread),
        }
    }

    /// The longest time without an answer since `from` (until now).
    fn longest_pause_since(&self, from: Instant) -> Duration {
        let answers = self.answers.lock().unwrap();
        let mut last = from;
        let mut longest = Duration::ZERO;
        for t in answers.iter().filter(|t| **t > from) {
            longest = longest.max(t.duration_since(last));
            last = *t;
        }
        longest.max(Instant::now().duration_since(last))
    }

    fn answered_since(&self, from: Instant) -> usize {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t > from)
            .count()
    }
}

impl Drop for Talker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A metric of NVA `i`'s agent (None while it is unreachable).
fn metric(lab: &Lab, i: usize, name: &str) -> Option<f64> {
    let (code, body) =
        nva_tests::traffic::http_get(&lab.mgmt, &format!("10.99.1.{}:9090", 11 + i), "/metrics")
            .ok()?;
    (code == 200).then_some(())?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// The lines of NVA `i`'s metrics that start with `prefix` (diagnostics).
fn metric_lines(lab: &Lab, i: usize, prefix: &str) -> String {
    nva_tests::traffic::http_get(&lab.mgmt, &format!("10.99.1.{}:9090", 11 + i), "/metrics")
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with(prefix) && !l.ends_with(" 0"))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

#[test]
fn established_connections_survive_each_failure_kind() {
    require_root();
    let lab = Lab::new("w");
    let (dir, key) = lab::sync_key("w");

    let zk = Ensemble::start(&lab.mgmt, "w");
    let mut agents: [RunningAgent; 2] = [0, 1].map(|i| {
        RunningAgent::start_in(
            &lab.nvas[i],
            &format!("w-{i}"),
            &Lab::agent_config_with_sync(i, &key),
            true,
        )
    });
    let stop = Arc::new(AtomicBool::new(false));
    lab::line_echo(
        &lab.backend,
        SocketAddr::new(lab::BACKEND.parse().unwrap(), lab::SERVICE_PORT),
        stop.clone(),
    );
    lab::line_echo(
        &lab.client,
        SocketAddr::new(lab::CLIENT.parse().unwrap(), SNAT_PORT),
        stop.clone(),
    );
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

    let backend = SocketAddr::new(lab::BACKEND.parse().unwrap(), lab::SERVICE_PORT);
    let public = SocketAddr::new(lab::VIP.parse().unwrap(), lab::PUBLIC_PORT);
    let client = SocketAddr::new(lab::CLIENT.parse().unwrap(), SNAT_PORT);
    let mut talkers: Vec<(String, Talker)> = Vec::new();
    for k in 0..DIRECT {
        talkers.push((format!("direct {k}"), Talker::start(&lab.client, backend)));
    }
    for k in 0..THROUGH_DNAT {
        talkers.push((format!("dnat {k}"), Talker::start(&lab.client, public)));
    }
    for k in 0..THROUGH_SNAT {
        talkers.push((format!("snat {k}"), Talker::start(&lab.backend, client)));
    }
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || talkers
            .iter()
            .all(|(_, t)| t.answered_since(started) > 5)),
        "every connection talks through the active NVA"
    );

    let mut report = Vec::new();
    let mut active = first_active;
    // The detached program last: the failed NVA's kernel then sees the
    // packets to its own (public) address, and its NAT guard must keep it
    // from resetting the translated connections.
    for k in [0, 2, 1] {
        let kind = FAILURE_KINDS[k];
        // The dwell time has passed, and the standby has caught up: its
        // peer is connected to it, and since it (re)started it has received
        // at least every connection's flow (a restarted standby gets them
        // by a full resync).
        std::thread::sleep(Duration::from_millis(1500));
        let standby = 1 - active;
        let flows = (DIRECT + THROUGH_DNAT + THROUGH_SNAT) as f64;
        assert!(
            wait_until(Duration::from_secs(20), || {
                metric(&lab, active, "nva_sync_peer_up") == Some(1.0)
                    && metric(&lab, standby, "nva_sync_received_total").is_some_and(|n| n >= flows)
                    && metric(&lab, standby, "nva_sync_last_received_age_seconds")
                        .is_some_and(|age| age < 1.0)
            }),
            "{kind}: the standby {} caught up with the sync",
            ["nva-a", "nva-b"][standby]
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
        let moved_at = Instant::now();
        let resumed = |(_, t): &(String, Talker)| {
            t.answered_since(moved_at) > 3 || t.error.lock().unwrap().is_some()
        };
        if !wait_until(Duration::from_secs(20), || talkers.iter().all(resumed)) {
            let stuck: Vec<&String> = talkers
                .iter()
                .filter(|c| !resumed(c))
                .map(|(n, _)| n)
                .collect();
            let drops = metric_lines(&lab, other, "nva_packets_total{verdict=\"drop\"");
            panic!(
                "{kind}: connections {stuck:?} did not resume through {}; its drops: {drops}",
                ["nva-a", "nva-b"][other]
            );
        }
        let mut pauses = Vec::new();
        for (name, t) in &talkers {
            if let Some(e) = t.error.lock().unwrap().as_ref() {
                panic!("{kind}: connection {name} broke: {e}");
            }
            pauses.push((name.clone(), t.longest_pause_since(failed_at)));
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
    stop.store(true, Ordering::Relaxed);
    drop(talkers);
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
}
