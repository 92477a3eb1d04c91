//! Real traffic between namespaces: bounded UDP flows counted at the
//! receiver, TCP connects.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{in_netns, Netns};

/// Sends `n` datagrams from `from` to `to_ip:port` in namespace `to`;
/// returns how many arrived.
pub fn udp_delivered(from: &Netns, to: &Netns, to_ip: &str, port: u16, n: usize) -> usize {
    let addr = SocketAddr::new(to_ip.parse().unwrap(), port);
    let rx = in_netns(to, || UdpSocket::bind(addr).unwrap());
    rx.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let unspecified = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let tx = in_netns(from, || UdpSocket::bind(unspecified).unwrap());
    for i in 0..n {
        tx.send_to(format!("datagram {i}").as_bytes(), addr)
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut got = 0;
    let mut buf = [0u8; 64];
    while rx.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    got
}

/// Sets a UDP socket's receive buffer past the system's limit (root).
pub fn force_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a valid int option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// A steady UDP flow (one datagram every `interval`) counted at both ends,
/// until stopped. Bounded: it stops by itself after `max` datagrams.
pub struct SteadyFlow {
    pub sent: Arc<AtomicU64>,
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SteadyFlow {
    /// Client to server (IPv4) on `port`, one datagram per millisecond, at
    /// most `max`: the flow the swap tests and the swap bench watch.
    pub fn client_to_server(t: &crate::Topology, port: u16, max: u64) -> SteadyFlow {
        SteadyFlow::start(
            &t.client,
            &t.server,
            &t.server_v4(),
            port,
            Duration::from_millis(1),
            max,
        )
    }

    pub fn start(
        from: &Netns,
        to: &Netns,
        to_ip: &str,
        port: u16,
        interval: Duration,
        max: u64,
    ) -> SteadyFlow {
        let addr = SocketAddr::new(to_ip.parse().unwrap(), port);
        let rx = in_netns(to, || UdpSocket::bind(addr).unwrap());
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // A large receive buffer: a receiver thread starved for a moment on
        // a busy 2-core machine must not drop what the filter let through.
        force_rcvbuf(&rx, 32 << 20);
        let tx = in_netns(from, || UdpSocket::bind("0.0.0.0:0").unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (sent.clone(), stop.clone());
        let sender = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) && s.load(Ordering::Relaxed) < max {
                if tx.send_to(b"steady", addr).is_ok() {
                    s.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(interval);
            }
        });
        let (r, st) = (received.clone(), stop.clone());
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                match rx.recv_from(&mut buf) {
                    Ok(_) => {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if st.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
        });
        SteadyFlow {
            sent,
            received,
            stop,
            threads: vec![sender, receiver],
        }
    }

    /// Stops sending, lets the last datagrams arrive, returns (sent, received).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop_threads();
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    fn stop_threads(&mut self) {
        if let Some(sender) = (!self.threads.is_empty()).then(|| self.threads.remove(0)) {
            self.stop.store(true, Ordering::Relaxed);
            let _ = sender.join();
            std::thread::sleep(Duration::from_millis(300));
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

impl Drop for SteadyFlow {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Whether a TCP connection from `from` to `ip:port` in `to` fails (a
/// listener exists, so only a filter can stop it).
pub fn tcp_refused(from: &Netns, to: &Netns, ip: &str, port: u16) -> bool {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    let _listener = in_netns(to, || TcpListener::bind(addr).unwrap());
    in_netns(from, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
    })
    .is_err()
}

/// A plain HTTP GET from inside `ns`: (status code, body).
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = in_netns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: nva\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((code, body))
}

/// Whether a TCP connect to `addr` from inside `ns` succeeds.
pub fn tcp_connects(ns: &Netns, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    in_netns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500))
    })
    .is_ok()
}

/// A multiple of the transfer pattern's period (251): every chunk is the
/// same.
const CHUNK: usize = 251 * 4096;
/// Just over 100 MiB.
pub const TRANSFER_100M: usize = CHUNK * 102;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Sends `TRANSFER_100M` bytes over TCP from `from` (connecting to
/// `connect`) to a listener at `listen` in `to`, and checks every byte
/// that arrives: true when all arrived intact.
pub fn transfer_100m_intact(
    from: &Netns,
    to: &Netns,
    listen: SocketAddr,
    connect: SocketAddr,
) -> bool {
    use std::io::{Read, Write};
    let listener = in_netns(to, || TcpListener::bind(listen).unwrap());
    let Ok(mut conn) = in_netns(from, || {
        TcpStream::connect_timeout(&connect, Duration::from_secs(3))
    }) else {
        return false;
    };
    let sender = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..CHUNK).map(pattern).collect();
        for _ in 0..TRANSFER_100M / CHUNK {
            if conn.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = conn.shutdown(std::net::Shutdown::Write);
    });
    let (mut accepted, _) = listener.accept().unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (mut received, mut intact) = (0usize, true);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match accepted.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                intact &= buf[..n]
                    .iter()
                    .enumerate()
                    .all(|(k, b)| *b == pattern(received + k));
                received += n;
            }
            Err(_) => {
                intact = false;
                break;
            }
        }
    }
    sender.join().unwrap();
    intact && received == TRANSFER_100M
}

/// `promtool check metrics` (Debian's `prometheus` package) on a
/// Prometheus text exposition: Err with promtool's complaints.
pub fn promtool_check(exposition: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(exposition.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}
