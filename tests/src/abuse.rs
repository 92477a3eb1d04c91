//! An HTTP endpoint under abuse, for the agent's and the failover daemon's
//! servers alike: hundreds of idle connections, slow request heads, 1 MiB
//! heads, garbage bytes. Asserts what an operator relies on: the probe
//! still answers within its time, abusers are cut off, memory stays
//! bounded, nothing crashes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::{in_netns, Netns};

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Whether the server closed `s` within `within` (EOF or reset, no answer).
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// What the abuse showed.
#[derive(Debug)]
pub struct AbuseFigures {
    /// The slowest probe answer while the abusers held their connections.
    pub slowest_probe: Duration,
    /// Resident memory growth of the server process, KiB.
    pub grown_kib: u64,
    /// Connections opened by the abusers.
    pub connections: usize,
}

/// Abuses the HTTP server at `addr` (reached from `ns`) of process `pid`
/// while `probe` (a request that must answer 200) is timed against
/// `within`.
pub fn abuse_http(
    ns: &Netns,
    addr: SocketAddr,
    pid: u64,
    probe: &dyn Fn() -> u16,
    within: Duration,
) -> AbuseFigures {
    // Sockets keep the namespace they were made in.
    let connect = |n: usize| -> Vec<TcpStream> {
        in_netns(ns, || {
            (0..n)
                .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap())
                .collect()
        })
    };
    let rss_before = rss_kib(pid);

    let mut idle = connect(300);
    // Slowloris: a request head that grows by a byte a second.
    let slow: Vec<_> = connect(5)
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: nva\r\nX-Slow: ");
                while started.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_secs(1));
                    if s.write_all(b"a").is_err() {
                        return Some(started.elapsed());
                    }
                }
                None
            })
        })
        .collect();
    // Garbage: 20 connections of 4 KiB of noise each (a fixed sequence).
    let garbage: Vec<_> = connect(20)
        .into_iter()
        .enumerate()
        .map(|(k, mut s)| {
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ k as u64;
                let noise: Vec<u8> = (0..4096)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let _ = s.write_all(&noise);
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Probes every 100 ms for 3 s: before and after the idle ones are cut.
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let start = Instant::now();
        assert_eq!(probe(), 200, "the probe answers under abuse");
        slowest = slowest.max(start.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(slowest < within, "slowest probe: {slowest:?}");
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(3)),
            "idle connections are closed after the header time"
        );
    }
    for handle in slow {
        let cut = handle.join().unwrap();
        assert!(
            cut.is_some_and(|d| d < Duration::from_secs(5)),
            "slowloris cut off: {cut:?}"
        );
    }
    for handle in garbage {
        let answer = handle.join().unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400 "),
            "garbage: {answer:?}"
        );
    }
    // Ten 1 MiB request heads at once: refused at 16 KiB each (431 or a
    // closed connection), not buffered.
    let big: Vec<_> = connect(10)
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut head = b"GET / HTTP/1.1\r\nHost: nva\r\nX-Big: ".to_vec();
                head.resize(head.len() + (1 << 20), b'a');
                head.extend_from_slice(b"\r\n\r\n");
                let _ = s.write_all(&head);
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    for handle in big {
        let answer = handle.join().unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "a 1 MiB head: {answer:?}"
        );
    }
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "the server grew by {grown} KiB");
    assert_eq!(probe(), 200, "the probe answers after the abuse");
    AbuseFigures {
        slowest_probe: slowest,
        grown_kib: grown,
        connections: 335,
    }
}
