//! Long-lived connections through the lab, for failovers with
//! connection-state sync: each exchanges a line every `EVERY` and records
//! when its answers came, so a failover's pause per connection can be
//! measured and a reset seen. Used by the failover sync test and the
//! failover benchmark.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lab::{self, Lab};
use crate::{in_netns, wait_until, Netns};

/// Connections straight to the backend, through DNAT on the VIP, and from
/// the backend out through SNAT.
pub const DIRECT: usize = 4;
pub const THROUGH_DNAT: usize = 8;
pub const THROUGH_SNAT: usize = 4;
pub const CONNECTIONS: usize = DIRECT + THROUGH_DNAT + THROUGH_SNAT;
/// The client's line echo service that the backend's SNAT'd connections
/// reach.
pub const SNAT_PORT: u16 = 7000;
pub const EVERY: Duration = Duration::from_millis(50);

/// One long-lived connection exchanging a line every `EVERY`, recording
/// when each answer came, and the error that ended it, if any.
pub struct LineTalker {
    answers: Arc<Mutex<Vec<Instant>>>,
    error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LineTalker {
    pub fn start(ns: &Netns, to: SocketAddr) -> LineTalker {
        LineTalker::start_every(ns, to, EVERY)
    }

    /// A connection exchanging a line every `every`.
    pub fn start_every(ns: &Netns, to: SocketAddr, every: Duration) -> LineTalker {
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
                std::thread::sleep(every);
            }
        });
        LineTalker {
            answers,
            error,
            stop,
            thread: Some(thread),
        }
    }

    /// The longest time without an answer since `from` (until now).
    pub fn longest_pause_since(&self, from: Instant) -> Duration {
        let answers = self.answers.lock().unwrap();
        let mut last = from;
        let mut longest = Duration::ZERO;
        for t in answers.iter().filter(|t| **t > from) {
            longest = longest.max(t.duration_since(last));
            last = *t;
        }
        longest.max(Instant::now().duration_since(last))
    }

    pub fn answered_since(&self, from: Instant) -> usize {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t > from)
            .count()
    }

    /// What ended the connection (a reset, a wrong answer), if it ended.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }
}

impl Drop for LineTalker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The lab's long-lived connections, named ("direct 0", "dnat 3",
/// "snat 1"): the backend's service must echo lines (see
/// [`lab::Service`] or [`lab::line_echo`]); the client's SNAT echo is
/// started here.
pub struct Established {
    pub talkers: Vec<(String, LineTalker)>,
    stop: Arc<AtomicBool>,
}

impl Established {
    pub fn start(lab: &Lab) -> Established {
        let stop = Arc::new(AtomicBool::new(false));
        let client = SocketAddr::new(lab::CLIENT.parse().unwrap(), SNAT_PORT);
        lab::line_echo(&lab.client, client, stop.clone());
        let backend = SocketAddr::new(lab::BACKEND.parse().unwrap(), lab::SERVICE_PORT);
        let public = SocketAddr::new(lab::VIP.parse().unwrap(), lab::PUBLIC_PORT);
        let mut talkers = Vec::new();
        for k in 0..DIRECT {
            talkers.push((
                format!("direct {k}"),
                LineTalker::start(&lab.client, backend),
            ));
        }
        for k in 0..THROUGH_DNAT {
            talkers.push((format!("dnat {k}"), LineTalker::start(&lab.client, public)));
        }
        for k in 0..THROUGH_SNAT {
            talkers.push((format!("snat {k}"), LineTalker::start(&lab.backend, client)));
        }
        Established { talkers, stop }
    }

    /// Waits until every connection has had `n` answers since `from` (or
    /// ended); returns the names of those that did not.
    pub fn wait_answers(&self, from: Instant, n: usize, within: Duration) -> Vec<String> {
        let done = |t: &LineTalker| t.answered_since(from) >= n || t.error().is_some();
        wait_until(within, || self.talkers.iter().all(|(_, t)| done(t)));
        self.talkers
            .iter()
            .filter(|(_, t)| !done(t))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Each connection's longest pause since `from`, or what ended it.
    pub fn pauses_since(&self, from: Instant) -> Vec<(String, Result<Duration, String>)> {
        self.talkers
            .iter()
            .map(|(name, t)| {
                let r = match t.error() {
                    Some(e) => Err(e),
                    None => Ok(t.longest_pause_since(from)),
                };
                (name.clone(), r)
            })
            .collect()
    }
}

impl Drop for Established {
    fn drop(&mut self) {
        self.talkers.clear();
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until the standby (`1 - active`) has caught up with the sync: the
/// active's connection to it is up, it has received at least every
/// connection's flow since it (re)started, and it heard from its peer in
/// the last second.
pub fn standby_caught_up(lab: &Lab, active: usize, within: Duration) -> bool {
    let standby = 1 - active;
    wait_until(within, || {
        lab.agent_metric(active, "nva_sync_peer_up") == Some(1.0)
            && lab
                .agent_metric(standby, "nva_sync_received_total")
                .is_some_and(|n| n >= CONNECTIONS as f64)
            && lab
                .agent_metric(standby, "nva_sync_last_received_age_seconds")
                .is_some_and(|age| age < 1.0)
    })
}
