//! Chaos in the failover lab (issue "Hardening" §5): faults injected at
//! random, one after another, while a sampler watches the fabric and a
//! client sends requests. Two failover daemons, each with its own view of
//! the NVAs' health endpoints and its own address towards ZooKeeper, so that
//! a fault can cut one of them off alone.
//!
//! Invariants, checked all along:
//! - never two NVAs active in the fabric at once: the VIP is never on both,
//!   and the fabric's two route tables and the VIP never disagree for longer
//!   than a switch takes;
//! - never a switch to an NVA that has been failed for a second or more;
//! - at most one switch per failure of the active NVA, and none without one;
//! - once a fault is repaired, the fabric converges (both tables and the VIP
//!   on one healthy NVA) within the dwell time plus the detection time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::RunningAgent;
use crate::lab::{FailoverDaemon, Lab, RequestStream, Service, VIP};
use crate::traffic::http_get;
use crate::wait_until;
use crate::zookeeper::Ensemble;

/// The daemons' `switch.min_dwell_s`.
const DWELL: Duration = Duration::from_secs(1);
/// Fabric state may disagree this long while a switch is under way.
const SWITCH_SPAN: Duration = Duration::from_secs(2);
/// After a repair: the dwell, the probes' detection (fall 3 / rise 2 at
/// 100 ms), a ZooKeeper session timeout (2 s) for a daemon that lost it,
/// and room for a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(8);
/// A fault older than this has surely been seen by the probes
/// (fall = 3 at 100 ms, 80 ms timeout).
const DETECTED: Duration = Duration::from_secs(1);
/// A switch this long after a failure's repair still belongs to it.
const SWITCH_GRACE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// An NVA's agent SIGKILLed, restarted 0.5-2 s later.
    AgentKilled,
    /// An NVA's XDP link detached, attached again by `nva reload`.
    ProgramDetached,
    /// An NVA's external link down for 0.3-2 s.
    LinkFlap,
    /// A daemon frozen with SIGSTOP for 0.5-4 s (a long GC-like pause;
    /// beyond 2 s its ZooKeeper session expires), then resumed.
    DaemonFrozen,
    /// A daemon's packets to ZooKeeper dropped for 1-5 s.
    DaemonCutFromZooKeeper,
    /// The active NVA's agent killed, and the ZooKeeper leader killed while
    /// the daemons switch; both restarted.
    ZooKeeperLeaderKilledDuringSwitch,
    /// An NVA's /health unreachable from one daemon only, for 1-4 s.
    HealthSeenByOneDaemon,
}

pub const FAULTS: [Fault; 7] = [
    Fault::AgentKilled,
    Fault::ProgramDetached,
    Fault::LinkFlap,
    Fault::DaemonFrozen,
    Fault::DaemonCutFromZooKeeper,
    Fault::ZooKeeperLeaderKilledDuringSwitch,
    Fault::HealthSeenByOneDaemon,
];

impl Fault {
    /// Whether the NVA it hits is unhealthy for everyone while it lasts.
    fn fails_nva(self) -> bool {
        matches!(
            self,
            Fault::AgentKilled
                | Fault::ProgramDetached
                | Fault::LinkFlap
                | Fault::ZooKeeperLeaderKilledDuringSwitch
        )
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct Injected {
    pub fault: Fault,
    /// The NVA it hit, and whether that one was active then.
    pub nva: Option<usize>,
    pub was_active: bool,
    /// The daemon it hit.
    pub daemon: Option<usize>,
    pub start: Instant,
    /// When it was repaired.
    pub end: Instant,
    /// How long the fabric took to converge after the repair.
    pub converged_in: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    /// Which NVAs hold the VIP (bit i: NVA i).
    vip: u8,
    /// The NVA each route table points at.
    table100: Option<usize>,
    table200: Option<usize>,
}

pub struct ChaosOptions {
    /// How long faults are injected.
    pub seconds: u64,
    pub seed: u64,
    /// The lab's tag (namespaces `lab{tag}-*`).
    pub tag: &'static str,
}

#[derive(Debug, Default)]
pub struct ChaosReport {
    pub faults: Vec<Injected>,
    pub switches: usize,
    /// From the start of each failure that caused a switch to the switch.
    pub switch_delays: Vec<Duration>,
    pub violations: Vec<String>,
    pub samples: usize,
    pub requests_sent: u64,
    pub requests_answered: usize,
}

impl ChaosReport {
    pub fn summary(&self) -> String {
        let mut by_kind = String::new();
        for f in FAULTS {
            let n = self.faults.iter().filter(|i| i.fault == f).count();
            by_kind.push_str(&format!("  {f:?}: {n}\n"));
        }
        let slowest = self.faults.iter().filter_map(|f| f.converged_in).max();
        let mut delays = self.switch_delays.clone();
        delays.sort();
        format!(
            "{} faults injected, {} switches (after the failure: median {:?}, longest {:?}), \
             {} invariant violations, {} fabric samples, \
             {} of {} requests answered, slowest convergence after a repair {:?}\n{by_kind}{}",
            self.faults.len(),
            self.switches,
            delays.get(delays.len() / 2),
            delays.last(),
            self.violations.len(),
            self.samples,
            self.requests_answered,
            self.requests_sent,
            slowest,
            self.violations
                .iter()
                .map(|v| format!("  VIOLATION: {v}\n"))
                .collect::<String>()
        )
    }
}

/// splitmix64: a seeded sequence, so that a run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    fn chance(&mut self, in_four: u64) -> bool {
        self.below(4) < in_four
    }
}

/// The address daemon `d` probes NVA `i` at, and the checker's own.
fn health_ip(view: usize, i: usize) -> String {
    format!("10.99.1.{}", 11 + 10 * view + i)
}
const CHECKER_VIEW: usize = 2;

fn healthy(lab: &Lab, i: usize) -> bool {
    let at = format!("{}:9090", health_ip(CHECKER_VIEW, i));
    matches!(http_get(&lab.mgmt, &at, "/health"), Ok((200, _)))
}

fn sample(lab: &Lab) -> Sample {
    let table = |t: &str, net: &str| {
        let out = lab.fabric.exec(&["ip", "route", "show", "table", t]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (0..2).find(|i| text.contains(&format!("via {net}.{}", 11 + i)))
    };
    // The two NVAs cannot be read at one instant: a move from the first
    // read to the second (taken off one, then put on the other) would look
    // like both holding it. Read them in both orders; a real overlap shows
    // in both passes.
    let holds = |i: usize| {
        let out = lab.nvas[i].exec(&["ip", "-4", "addr", "show", "dev", "ext0"]);
        (String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/24")) as u8) << i
    };
    let first = holds(0) | holds(1);
    let second = holds(1) | holds(0);
    let vip = first & second;
    Sample {
        at: Instant::now(),
        vip,
        table100: table("100", "10.10.0"),
        table200: table("200", "10.20.0"),
    }
}

impl Sample {
    /// The NVA the whole fabric agrees on, if it does.
    fn agreed(&self) -> Option<usize> {
        let nva = self.table100?;
        (self.table200 == Some(nva) && self.vip == 1 << nva).then_some(nva)
    }
}

/// Drops, in namespace `ns`, packets matching `rule` in hook `hook`
/// (`input` or `output`), until [`unblock`].
fn block(ns: &crate::Netns, hook: &str, rule: &str) {
    let script = format!(
        "nft add table inet nva_chaos && \
         nft add chain inet nva_chaos {hook} '{{ type filter hook {hook} priority 0 ; }}' && \
         nft add rule inet nva_chaos {hook} {rule} drop"
    );
    let out = ns.sh(&script);
    assert!(
        out.status.success(),
        "nft in {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unblock(ns: &crate::Netns) {
    let _ = ns.exec(&["nft", "delete", "table", "inet", "nva_chaos"]);
}

fn signal(d: &FailoverDaemon, sig: nix::sys::signal::Signal) {
    if let Some(c) = &d.child {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.pid() as i32), sig);
    }
}

/// The daemon that leads, by its /status (frozen ones do not answer).
fn leader(daemons: &[FailoverDaemon; 2]) -> Option<usize> {
    (0..2).find(|d| daemons[*d].is_leader())
}

/// The failover config of daemon `d`: its own health addresses and
/// ZooKeeper address, a 1 s dwell, and no hourly cap on switches (chaos
/// makes many).
fn daemon_config(lab: &Lab, zk: &Ensemble, d: usize) -> String {
    let text = lab.failover_config(
        &format!("chaos-{d}"),
        Some(&zk.connect_string_via(&format!("127.0.0.{}", 2 + d))),
        9190 + d as u16,
        DWELL.as_secs() as u32,
    );
    let mut out = text;
    for (from, to) in [
        (
            "max_failovers_per_hour = 6",
            "max_failovers_per_hour = 3600".to_string(),
        ),
        (
            "http://10.99.1.11:9090",
            format!("http://{}:9090", health_ip(d, 0)),
        ),
        (
            "http://10.99.1.12:9090",
            format!("http://{}:9090", health_ip(d, 1)),
        ),
    ] {
        assert!(out.contains(from), "the lab's failover config has {from:?}");
        out = out.replace(from, &to);
    }
    out
}

/// Runs the chaos: sets the lab up, injects faults for `opts.seconds`,
/// checks the invariants, tears everything down.
pub fn run(opts: &ChaosOptions) -> ChaosReport {
    let mut rng = Rng(opts.seed);
    let lab = Lab::new(opts.tag);
    for (i, nva) in lab.nvas.iter().enumerate() {
        for view in 1..=CHECKER_VIEW {
            nva.ip(&[
                "addr",
                "add",
                &format!("{}/24", health_ip(view, i)),
                "dev",
                "mgmt0",
            ]);
        }
    }
    let mut zk = Ensemble::start(&lab.mgmt, opts.tag);
    let mut agents = lab.start_agents(opts.tag);
    let _service = Service::start(&lab);
    let daemons = [0, 1].map(|d| {
        FailoverDaemon::start(
            &lab,
            &format!("{}-chaos-{d}", opts.tag),
            &daemon_config(&lab, &zk, d),
            9190 + d as u16,
        )
    });
    assert!(
        wait_until(Duration::from_secs(30), || sample(&lab).agreed() == Some(0)),
        "nva-a activated: {}",
        daemons[0].log_text()
    );
    let requests = RequestStream::start(&lab, Duration::from_millis(50));

    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut report = ChaosReport::default();
    std::thread::scope(|scope| {
        let (samples_w, stop_r, lab_r) = (samples.clone(), stop.clone(), &lab);
        scope.spawn(move || {
            // Bounded by the run, and by an hour whatever happens.
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !stop_r.load(Ordering::Relaxed) && Instant::now() < deadline {
                let s = sample(lab_r);
                samples_w.lock().unwrap().push(s);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let began = Instant::now();
        // Every kind once first, in a seeded order, then at random.
        let mut plan = FAULTS.to_vec();
        for i in (1..plan.len()).rev() {
            plan.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut next = 0;
        while began.elapsed() < Duration::from_secs(opts.seconds) || next < FAULTS.len() {
            let fault = plan
                .get(next)
                .copied()
                .unwrap_or_else(|| FAULTS[rng.below(FAULTS.len() as u64) as usize]);
            next += 1;
            let active = sample(&lab).agreed().unwrap_or(0);
            let injected = inject(
                &lab,
                &mut zk,
                &mut agents,
                &daemons,
                &mut rng,
                fault,
                active,
            );
            eprintln!(
                "chaos: {:?} on nva {:?} (active: {}) / daemon {:?}, {:?}",
                injected.fault,
                injected.nva,
                injected.was_active,
                injected.daemon,
                injected.end - injected.start
            );
            // Converged: everything on one healthy NVA, both healthy again.
            let repaired = injected.end;
            let converged = wait_until(CONVERGE, || {
                sample(&lab).agreed().is_some_and(|i| healthy(&lab, i))
            });
            let mut injected = injected;
            if converged {
                injected.converged_in = Some(repaired.elapsed());
            } else {
                report.violations.push(format!(
                    "{:?}: the fabric had not converged {CONVERGE:?} after the repair: {:?}",
                    injected.fault,
                    sample(&lab)
                ));
            }
            report.faults.push(injected);
            assert!(
                wait_until(Duration::from_secs(30), || healthy(&lab, 0)
                    && healthy(&lab, 1)),
                "both NVAs healthy again after {fault:?}"
            );
            // Past the dwell time, then a random pause.
            std::thread::sleep(DWELL + rng.millis(200, 1200));
        }
        stop.store(true, Ordering::Relaxed);
    });
    report.requests_answered = requests.answered();
    report.requests_sent = requests.stop();
    let samples = samples.lock().unwrap().clone();
    report.samples = samples.len();
    check(&samples, &mut report);
    report
}

/// Injects `fault` (on the active NVA `active`, or the other one) and
/// repairs it.
fn inject(
    lab: &Lab,
    zk: &mut Ensemble,
    agents: &mut [RunningAgent; 2],
    daemons: &[FailoverDaemon; 2],
    rng: &mut Rng,
    fault: Fault,
    active: usize,
) -> Injected {
    // NVA faults mostly hit the active NVA (a failover is due), sometimes
    // the standby (none is).
    let nva = if rng.chance(3) { active } else { 1 - active };
    // Daemon faults mostly hit the leader.
    let daemon = match leader(daemons) {
        Some(l) if rng.chance(3) => l,
        Some(l) => 1 - l,
        None => rng.below(2) as usize,
    };
    let start = Instant::now();
    let (nva, daemon) = match fault {
        Fault::AgentKilled => {
            agents[nva].kill9();
            std::thread::sleep(rng.millis(500, 2000));
            agents[nva].spawn(&lab.nvas[nva]);
            (Some(nva), None)
        }
        Fault::ProgramDetached => {
            agents[nva].detach_link("ext0");
            std::thread::sleep(rng.millis(300, 2000));
            let out = agents[nva].nva(&["reload"]);
            assert!(
                out.status.success(),
                "nva reload: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (Some(nva), None)
        }
        Fault::LinkFlap => {
            lab.nvas[nva].ip(&["link", "set", "dev", "ext0", "down"]);
            std::thread::sleep(rng.millis(300, 2000));
            lab.nva_link_up(nva);
            (Some(nva), None)
        }
        Fault::DaemonFrozen => {
            signal(&daemons[daemon], nix::sys::signal::Signal::SIGSTOP);
            std::thread::sleep(rng.millis(500, 4000));
            signal(&daemons[daemon], nix::sys::signal::Signal::SIGCONT);
            (None, Some(daemon))
        }
        Fault::DaemonCutFromZooKeeper => {
            block(
                &lab.mgmt,
                "output",
                &format!("ip daddr 127.0.0.{} tcp dport 2181-2183", 2 + daemon),
            );
            std::thread::sleep(rng.millis(1000, 5000));
            unblock(&lab.mgmt);
            (None, Some(daemon))
        }
        Fault::ZooKeeperLeaderKilledDuringSwitch => {
            let zk_leader = zk.leader();
            agents[active].kill9();
            std::thread::sleep(rng.millis(150, 500));
            if let Some(l) = zk_leader {
                zk.kill_node(l);
            }
            std::thread::sleep(rng.millis(1500, 3000));
            if let Some(l) = zk_leader {
                zk.start_node(l);
            }
            agents[active].spawn(&lab.nvas[active]);
            zk.wait_quorum(Duration::from_secs(60));
            (Some(active), None)
        }
        Fault::HealthSeenByOneDaemon => {
            block(
                &lab.nvas[nva],
                "input",
                &format!("ip daddr {} tcp dport 9090", health_ip(daemon, nva)),
            );
            std::thread::sleep(rng.millis(1000, 4000));
            unblock(&lab.nvas[nva]);
            (Some(nva), Some(daemon))
        }
    };
    Injected {
        fault,
        nva,
        was_active: nva == Some(active),
        daemon,
        start,
        end: Instant::now(),
        converged_in: None,
    }
}

/// Checks the invariants on the fabric's samples and the faults' windows.
fn check(samples: &[Sample], report: &mut ChaosReport) {
    let at = |t: Instant| {
        let origin = samples.first().map_or(t, |s| s.at);
        format!("{:.2} s", t.saturating_duration_since(origin).as_secs_f64())
    };
    // Never two NVAs active at once.
    for s in samples {
        if s.vip == 0b11 {
            report
                .violations
                .push(format!("at {}: both NVAs hold the VIP", at(s.at)));
        }
    }
    let mut disagree_since: Option<Instant> = None;
    for s in samples {
        let disagree = s.agreed().is_none() && s.table100.is_some();
        match (disagree, disagree_since) {
            (true, None) => disagree_since = Some(s.at),
            (true, Some(since)) if s.at - since > SWITCH_SPAN => {
                report.violations.push(format!(
                    "from {}: the fabric's tables and VIP disagree for over {SWITCH_SPAN:?}: {s:?}",
                    at(since)
                ));
                disagree_since = Some(s.at + Duration::from_secs(3600));
            }
            (false, _) => disagree_since = None,
            _ => {}
        }
    }
    // Switches: the route table of the public side moving to the other NVA.
    let mut switches = Vec::new();
    let mut current = samples.iter().find_map(|s| s.table100);
    for s in samples {
        if let Some(to) = s.table100 {
            if Some(to) != current {
                switches.push((s.at, to));
                current = Some(to);
            }
        }
    }
    report.switches = switches.len();
    let mut used = vec![false; report.faults.len()];
    for (t, to) in switches {
        // Never to an NVA failed (for everyone) for a second or more.
        for f in &report.faults {
            if f.fault.fails_nva() && f.nva == Some(to) && f.start + DETECTED <= t && t <= f.end {
                report.violations.push(format!(
                    "at {}: a switch to nva {to}, failed ({:?}) since {}",
                    at(t),
                    f.fault,
                    at(f.start)
                ));
            }
        }
        // Each switch answers one failure of the active NVA.
        let cause = report
            .faults
            .iter()
            .enumerate()
            .rev()
            .find(|(_, f)| f.start <= t && t <= f.end + SWITCH_GRACE);
        match cause {
            Some((k, f)) if f.was_active && f.nva.is_some() => {
                report.switch_delays.push(t - f.start);
                if used[k] {
                    report.violations.push(format!(
                        "at {}: a second switch (to nva {to}) for one failure ({:?} at {})",
                        at(t),
                        f.fault,
                        at(f.start)
                    ));
                }
                used[k] = true;
            }
            Some((_, f)) => report.violations.push(format!(
                "at {}: a switch to nva {to} during {:?} (nva {:?}, daemon {:?}), which fails no active NVA",
                at(t),
                f.fault,
                f.nva,
                f.daemon
            )),
            None => report
                .violations
                .push(format!("at {}: a switch to nva {to} with no fault", at(t))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples every 50 ms from `t0`: (from ms, NVA the fabric agrees on),
    /// until `until_ms`.
    fn timeline(t0: Instant, phases: &[(u64, usize)], until_ms: u64) -> Vec<Sample> {
        (0..until_ms / 50)
            .map(|k| {
                let ms = k * 50;
                let nva = phases.iter().rev().find(|(from, _)| *from <= ms).unwrap().1;
                Sample {
                    at: t0 + Duration::from_millis(ms),
                    vip: 1 << nva,
                    table100: Some(nva),
                    table200: Some(nva),
                }
            })
            .collect()
    }

    fn fault(t0: Instant, fault: Fault, nva: usize, was_active: bool, ms: (u64, u64)) -> Injected {
        Injected {
            fault,
            nva: Some(nva),
            was_active,
            daemon: None,
            start: t0 + Duration::from_millis(ms.0),
            end: t0 + Duration::from_millis(ms.1),
            converged_in: None,
        }
    }

    fn checked(samples: &[Sample], faults: Vec<Injected>) -> ChaosReport {
        let mut report = ChaosReport {
            faults,
            ..Default::default()
        };
        check(samples, &mut report);
        report
    }

    #[test]
    fn one_switch_for_a_failure_of_the_active_is_fine() {
        let t0 = Instant::now();
        let samples = timeline(t0, &[(0, 0), (1500, 1)], 6000);
        let r = checked(
            &samples,
            vec![fault(t0, Fault::AgentKilled, 0, true, (1000, 2500))],
        );
        assert_eq!(r.switches, 1);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn a_switch_without_a_failure_is_caught() {
        let t0 = Instant::now();
        let samples = timeline(t0, &[(0, 0), (1500, 1)], 6000);
        let r = checked(&samples, vec![]);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        // A fault on the standby, or on a daemon, causes none either.
        let r = checked(
            &samples,
            vec![fault(t0, Fault::LinkFlap, 1, false, (1000, 2000))],
        );
        assert!(!r.violations.is_empty());
    }

    #[test]
    fn a_second_switch_for_one_failure_is_caught() {
        let t0 = Instant::now();
        let samples = timeline(t0, &[(0, 0), (1500, 1), (2500, 0)], 6000);
        let r = checked(
            &samples,
            vec![fault(t0, Fault::AgentKilled, 0, true, (1000, 2800))],
        );
        assert_eq!(r.switches, 2);
        assert!(
            r.violations.iter().any(|v| v.contains("second switch")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_switch_to_a_failed_nva_is_caught() {
        let t0 = Instant::now();
        let samples = timeline(t0, &[(0, 0), (3000, 1)], 6000);
        let r = checked(
            &samples,
            vec![
                fault(t0, Fault::ProgramDetached, 1, false, (500, 4000)),
                fault(t0, Fault::AgentKilled, 0, true, (2800, 3500)),
            ],
        );
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("failed (ProgramDetached)")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn two_active_nvas_are_caught() {
        let t0 = Instant::now();
        let mut samples = timeline(t0, &[(0, 0)], 6000);
        samples[10].vip = 0b11;
        // Tables split for longer than a switch takes.
        for s in &mut samples[40..100] {
            s.table200 = Some(1);
        }
        let r = checked(&samples, vec![]);
        assert!(r
            .violations
            .iter()
            .any(|v| v.contains("both NVAs hold the VIP")));
        assert!(r.violations.iter().any(|v| v.contains("disagree")));
    }
}
