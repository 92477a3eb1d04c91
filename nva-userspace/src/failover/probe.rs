//! Health probes of the NVAs (HTTP GET of /health, or a TCP connect) and
//! the rise/fall counting that turns probe results into up or down.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::config::ProbeTarget;

/// Why a probe failed (logged when an NVA's health changes).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("HTTP {0}")]
    Status(u16),
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Probes NVAs: one HTTP client for all of them, built once.
pub struct Prober {
    http: reqwest::Client,
    timeout: Duration,
}

impl Prober {
    pub fn new(timeout: Duration) -> Result<Prober, ProbeError> {
        let http = reqwest::Client::builder()
            // NVAs are probed directly: an HTTP(S)_PROXY in the daemon's
            // environment is for the ARM endpoint, never for probes.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Healthy is 200, not wherever a redirect leads.
            .redirect(reqwest::redirect::Policy::none())
            // A fresh connection per probe: accepting connections is part
            // of being healthy (and the agent closes after each response).
            .pool_max_idle_per_host(0)
            .http1_only()
            .user_agent(concat!("nva-failover/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Prober { http, timeout })
    }

    /// One probe: Ok(latency) when healthy.
    pub async fn probe(&self, target: &ProbeTarget) -> Result<Duration, ProbeError> {
        let started = Instant::now();
        let work = async {
            match target {
                ProbeTarget::Tcp(addr) => {
                    TcpStream::connect(addr)
                        .await
                        .map_err(|source| ProbeError::Connect {
                            addr: *addr,
                            source,
                        })?;
                    Ok(())
                }
                ProbeTarget::Http { addr, path } => self.get(&format!("http://{addr}{path}")).await,
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProbeError::Timeout(self.timeout.as_millis())),
        }
    }

    /// GET `url`: healthy on 200 (the body is not read).
    async fn get(&self, url: &str) -> Result<(), ProbeError> {
        let response = self.http.get(url).send().await.map_err(|e| {
            if e.is_timeout() {
                return ProbeError::Timeout(self.timeout.as_millis());
            }
            // reqwest's own message names only the URL; the cause is below.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            ProbeError::Http {
                url: url.to_string(),
                message,
            }
        })?;
        match response.status().as_u16() {
            200 => Ok(()),
            code => Err(ProbeError::Status(code)),
        }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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

    /// A server that answers each connection with `response` after `delay`.
    async fn server(response: &'static str, delay: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let _ = s.write_all(response.as_bytes()).await;
                });
            }
        });
        addr
    }

    fn http(addr: SocketAddr) -> ProbeTarget {
        ProbeTarget::Http {
            addr,
            path: "/health".into(),
        }
    }

    #[tokio::test]
    async fn status_codes_timeouts_and_refusals() {
        let prober = Prober::new(Duration::from_millis(300)).unwrap();
        let ok = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{}\n",
            Duration::ZERO,
        )
        .await;
        assert!(prober.probe(&http(ok)).await.is_ok());
        assert!(prober.probe(&ProbeTarget::Tcp(ok)).await.is_ok());
        let down = server(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let e = prober.probe(&http(down)).await.unwrap_err();
        assert!(matches!(e, ProbeError::Status(503)), "{e}");
        let moved = server(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let e = prober.probe(&http(moved)).await.unwrap_err();
        assert!(
            matches!(e, ProbeError::Status(302)),
            "redirects are not followed: {e}"
        );
        let slow = server("HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(2)).await;
        let started = Instant::now();
        let e = prober.probe(&http(slow)).await.unwrap_err();
        assert!(matches!(e, ProbeError::Timeout(300)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // Nothing listens on a port just freed.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = prober.probe(&http(closed)).await.unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }
}
