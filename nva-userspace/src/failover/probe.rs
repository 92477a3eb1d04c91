//! Health probes of the NVAs (HTTP GET of /health, or a TCP connect) and
//! the rise/fall counting that turns probe results into up or down.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::ProbeTarget;

/// One probe: Ok(latency) when healthy, Err(why) otherwise.
pub async fn probe(target: &ProbeTarget, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let work = async {
        match target {
            ProbeTarget::Tcp(addr) => {
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                Ok(())
            }
            ProbeTarget::Http { addr, path } => {
                let mut s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                let req =
                    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes())
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                // The status line is all we need.
                let mut buf = [0u8; 64];
                let mut n = 0;
                while n < 12 {
                    let got = s
                        .read(&mut buf[n..])
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if got == 0 {
                        break;
                    }
                    n += got;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                match head.split_whitespace().nth(1) {
                    Some("200") => Ok(()),
                    Some(code) => Err(format!("HTTP {code}")),
                    None => Err("no HTTP status line".into()),
                }
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// What the probes say about an NVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not enough probes yet.
    Unknown,
    Up,
    Down,
}

/// Turns probe results into up/down with hysteresis: `fall` consecutive
/// failures declare an NVA down, `rise` consecutive successes up.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    fall: u32,
    rise: u32,
    successes: u32,
    failures: u32,
    pub health: Health,
}

impl HealthTracker {
    pub fn new(fall: u32, rise: u32) -> HealthTracker {
        HealthTracker {
            fall,
            rise,
            successes: 0,
            failures: 0,
            health: Health::Unknown,
        }
    }

    /// Records a probe; returns the new health when it changed.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let next = if self.failures >= self.fall {
            Health::Down
        } else if self.successes >= self.rise {
            Health::Up
        } else {
            self.health
        };
        (next != self.health).then(|| {
            self.health = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut t = HealthTracker::new(3, 2);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Up));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failures");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Health::Down));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Up));
    }
}
