//! The HA lab of DESIGN.md in network namespaces: a client (the internet), a
//! fabric router (the cloud's routing, with per-side route tables), two NVAs
//! running `nva agent`, a backend, and a management network for probes and
//! ZooKeeper that does not route through the NVAs.
//!
//! ```text
//!  client 10.30.0.2 ── fabric (f-cl 10.30.0.1)
//!                      fabric brx 10.10.0.1/24 ── nva-a ext0 .11, nva-b ext0 .12
//!                      fabric bri 10.20.0.1/24 ── nva-a int0 .11, nva-b int0 .12
//!  backend 10.40.0.2 ── fabric (f-be 10.40.0.1)
//!  mgmt brm 10.99.1.1/24 ── nva-a mgmt0 10.99.1.11, nva-b mgmt0 10.99.1.12
//! ```
//!
//! The fabric looks up table 100 for traffic from the client (the public-IP
//! analogue: 10.40.0.0/24 via the active NVA's external address) and table
//! 200 for traffic from the backend (the UDR analogue: 10.30.0.0/24 via its
//! internal address); the failover daemon rewrites only those two tables.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::RunningAgent;
use crate::{in_netns, nva_binary, veth_pair, wait_until, ChildGuard, Netns};

pub const CLIENT: &str = "10.30.0.2";
pub const BACKEND: &str = "10.40.0.2";
pub const SERVICE_PORT: u16 = 8080;
pub const NVA_NAMES: [&str; 2] = ["nva-a", "nva-b"];
/// The virtual IP the active NVA holds on its external interface (the
/// public IP's analogue).
pub const VIP: &str = "10.10.0.100";
/// The port of the VIP that DNAT sends to the backend's service.
pub const PUBLIC_PORT: u16 = 80;

pub struct Lab {
    pub client: Netns,
    pub fabric: Netns,
    pub nvas: [Netns; 2],
    pub backend: Netns,
    pub mgmt: Netns,
}

fn bridge(ns: &Netns, name: &str, addr: &str) {
    ns.ip(&["link", "add", name, "type", "bridge"]);
    ns.ip(&["addr", "add", addr, "dev", name]);
    ns.ip(&["link", "set", "dev", name, "up"]);
}

fn enslave(ns: &Netns, port: &str, bridge: &str) {
    ns.ip(&["link", "set", "dev", port, "master", bridge]);
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        crate::require_root();
        let lab = Lab {
            client: Netns::new(&format!("lab{tag}-client")),
            fabric: Netns::new(&format!("lab{tag}-fabric")),
            nvas: [
                Netns::new(&format!("lab{tag}-nva-a")),
                Netns::new(&format!("lab{tag}-nva-b")),
            ],
            backend: Netns::new(&format!("lab{tag}-backend")),
            mgmt: Netns::new(&format!("lab{tag}-mgmt")),
        };
        let f = &lab.fabric;
        veth_pair(&lab.client, "c0", f, "f-cl");
        veth_pair(&lab.backend, "b0", f, "f-be");
        lab.client.ip(&["addr", "add", "10.30.0.2/24", "dev", "c0"]);
        lab.client
            .ip(&["route", "add", "default", "via", "10.30.0.1"]);
        lab.backend
            .ip(&["addr", "add", "10.40.0.2/24", "dev", "b0"]);
        lab.backend
            .ip(&["route", "add", "default", "via", "10.40.0.1"]);
        f.ip(&["addr", "add", "10.30.0.1/24", "dev", "f-cl"]);
        f.ip(&["addr", "add", "10.40.0.1/24", "dev", "f-be"]);
        bridge(f, "brx", "10.10.0.1/24");
        bridge(f, "bri", "10.20.0.1/24");
        bridge(&lab.mgmt, "brm", "10.99.1.1/24");
        for (i, nva) in lab.nvas.iter().enumerate() {
            let host = 11 + i;
            let side = ["a", "b"][i];
            veth_pair(nva, "ext0", f, &format!("fx{side}"));
            veth_pair(nva, "int0", f, &format!("fi{side}"));
            veth_pair(nva, "mgmt0", &lab.mgmt, &format!("m{side}"));
            enslave(f, &format!("fx{side}"), "brx");
            enslave(f, &format!("fi{side}"), "bri");
            enslave(&lab.mgmt, &format!("m{side}"), "brm");
            nva.ip(&["addr", "add", &format!("10.10.0.{host}/24"), "dev", "ext0"]);
            nva.ip(&["addr", "add", &format!("10.20.0.{host}/24"), "dev", "int0"]);
            nva.ip(&["addr", "add", &format!("10.99.1.{host}/24"), "dev", "mgmt0"]);
            nva.ip(&["route", "add", "10.40.0.0/24", "via", "10.20.0.1"]);
            nva.ip(&["route", "add", "10.30.0.0/24", "via", "10.10.0.1"]);
            nva.sysctl("net.ipv4.ip_forward", "1");
        }
        for ns in [f, &lab.nvas[0], &lab.nvas[1]] {
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0");
        }
        f.sysctl("net.ipv4.ip_forward", "1");
        // Per-side route tables: filled by the failover daemon.
        f.ip(&["rule", "add", "iif", "f-cl", "lookup", "100"]);
        f.ip(&["rule", "add", "iif", "f-be", "lookup", "200"]);
        lab
    }

    /// The agent config of an NVA: stateful, client -> backend tcp/8080
    /// (directly, and through the VIP's port 80 with DNAT), the backend's
    /// own connections out to the client side with SNAT to the VIP.
    pub fn agent_config(health_interval_ms: u32) -> String {
        format!(
            r#"
[agent]
interfaces = ["ext0", "int0"]
health_listen = "0.0.0.0:9090"
health_interval_ms = {health_interval_ms}
bpffs = "{{bpffs}}"

[policy]
default = "drop"
stateful = true

[[rules]]
name = "client-to-service"
action = "allow"
proto = "tcp"
src = ["10.30.0.0/24"]
dst = ["10.40.0.0/24"]
dport = ["{SERVICE_PORT}"]

[[rules]]
name = "backend-out"
action = "allow"
src = ["10.40.0.0/24"]
dst = ["10.30.0.0/24"]

# The Azure shape: the public address (the VIP here) is translated to the
# backend's service, and the backend's own connections out leave with it.
[[nat]]
name = "public-in"
kind = "dnat"
proto = "tcp"
dst = ["{VIP}/32"]
dport = ["{PUBLIC_PORT}"]
to = "{BACKEND}:{SERVICE_PORT}"

[[nat]]
name = "backend-out"
kind = "snat"
src = ["10.40.0.0/24"]
dst = ["10.30.0.0/24"]
to = "{VIP}"
to_ports = "20000-29999"
"#
        )
    }

    /// The agent config of NVA `i` with connection-state sync to the
    /// other over the management network, keyed by the file `key`.
    pub fn agent_config_with_sync(i: usize, key: &std::path::Path) -> String {
        let (me, peer) = if i == 0 { (11, 12) } else { (12, 11) };
        format!(
            "{}\n[sync]\nlisten = \"10.99.1.{me}:7800\"\npeer = \"10.99.1.{peer}:7800\"\nkey_file = \"{}\"\ninterval_ms = 100\n",
            Lab::agent_config(100),
            key.display()
        )
    }

    /// A metric of NVA `i`'s agent (None while it is unreachable).
    pub fn agent_metric(&self, i: usize, name: &str) -> Option<f64> {
        let body = self.agent_metrics(i)?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    /// NVA `i`'s agent's `/metrics` text (None while it is unreachable).
    pub fn agent_metrics(&self, i: usize) -> Option<String> {
        let at = format!("10.99.1.{}:9090", 11 + i);
        let (code, body) = crate::traffic::http_get(&self.mgmt, &at, "/metrics").ok()?;
        (code == 200).then_some(body)
    }

    /// Starts `nva agent` on both NVAs with connection-state sync between
    /// them, keyed by the file `key` (see [`sync_key`]).
    pub fn start_agents_with_sync(&self, tag: &str, key: &std::path::Path) -> [RunningAgent; 2] {
        [0, 1].map(|i| {
            RunningAgent::start_in(
                &self.nvas[i],
                &format!("{tag}-{i}"),
                &Lab::agent_config_with_sync(i, key),
                true,
            )
        })
    }

    /// Starts `nva agent` on both NVAs.
    pub fn start_agents(&self, tag: &str) -> [RunningAgent; 2] {
        let config = Lab::agent_config(100);
        [
            RunningAgent::start_in(&self.nvas[0], &format!("{tag}-a"), &config, true),
            RunningAgent::start_in(&self.nvas[1], &format!("{tag}-b"), &config, true),
        ]
    }

    /// A failover daemon config for this lab.
    pub fn failover_config(
        &self,
        id: &str,
        zookeeper: Option<&str>,
        metrics_port: u16,
        min_dwell_s: u32,
    ) -> String {
        let zk = zookeeper.map_or(String::new(), |z| {
            format!("zookeeper = \"{z}\"\nsession_timeout_ms = 2000\n")
        });
        let fabric = &self.fabric.name;
        let (ns_a, ns_b) = (&self.nvas[0].name, &self.nvas[1].name);
        format!(
            r#"
[daemon]
id = "{id}"
{zk}election_path = "/nva/lab"
metrics_listen = "127.0.0.1:{metrics_port}"

[probe]
interval_ms = 100
timeout_ms = 80
fall = 3
rise = 2

[switch]
provider = "linux"
min_dwell_s = {min_dwell_s}
preempt = false
max_failovers_per_hour = 6

[[nvas]]
name = "nva-a"
health_url = "http://10.99.1.11:9090/health"
internal_ip = "10.20.0.11"
external_ip = "10.10.0.11"
netns = "{ns_a}"

[[nvas]]
name = "nva-b"
health_url = "http://10.99.1.12:9090/health"
internal_ip = "10.20.0.12"
external_ip = "10.10.0.12"
netns = "{ns_b}"

[[linux.routes]]
netns = "{fabric}"
table = 100
prefix = "10.40.0.0/24"
via = "external_ip"

[[linux.routes]]
netns = "{fabric}"
table = 200
prefix = "10.30.0.0/24"
via = "internal_ip"

[[linux.vips]]
address = "{VIP}/24"
dev = "ext0"
"#
        )
    }

    /// Brings NVA `i`'s external link back up, with the route the kernel
    /// removed when it went down.
    pub fn nva_link_up(&self, i: usize) {
        self.nvas[i].ip(&["link", "set", "dev", "ext0", "up"]);
        let _ = self.nvas[i].exec(&["ip", "route", "replace", "10.30.0.0/24", "via", "10.10.0.1"]);
    }

    /// Which NVAs hold the VIP.
    pub fn vip_holders(&self) -> Vec<usize> {
        (0..2)
            .filter(|i| {
                String::from_utf8_lossy(
                    &self.nvas[*i]
                        .exec(&["ip", "-4", "addr", "show", "dev", "ext0"])
                        .stdout,
                )
                .contains(&format!("{VIP}/24"))
            })
            .collect()
    }

    /// The MAC address the fabric has for the VIP.
    pub fn fabric_vip_mac(&self) -> Option<String> {
        let out = self.fabric.exec(&["ip", "neigh", "show", VIP]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(String::from)
    }

    /// MAC address of NVA `i`'s external interface.
    pub fn ext_mac(&self, i: usize) -> String {
        let out = self.nvas[i].exec_ok(&["cat", "/sys/class/net/ext0/address"]);
        out.trim().to_string()
    }

    /// Which NVA the fabric's tables point at: 0, 1, or None (missing or
    /// split).
    pub fn routed_to(&self) -> Option<usize> {
        // A table that does not exist yet has no routes.
        let table = |t: &str| {
            String::from_utf8_lossy(
                &self
                    .fabric
                    .exec(&["ip", "route", "show", "table", t])
                    .stdout,
            )
            .into_owned()
        };
        let (t100, t200) = (table("100"), table("200"));
        (0..2).find(|i| {
            t100.contains(&format!("via 10.10.0.{}", 11 + i))
                && t200.contains(&format!("via 10.20.0.{}", 11 + i))
        })
    }
}

/// The ways the tests and the benchmark make the active NVA fail.
pub const FAILURE_KINDS: [&str; 3] = [
    "agent killed (SIGKILL)",
    "XDP program detached",
    "link down",
];

/// Makes NVA `i` fail in the way `FAILURE_KINDS[kind]` names.
pub fn fail_nva(lab: &Lab, agents: &mut [RunningAgent; 2], i: usize, kind: usize) {
    match kind {
        0 => agents[i].kill9(),
        1 => agents[i].detach_link("ext0"),
        _ => {
            lab.nvas[i].ip(&["link", "set", "dev", "ext0", "down"]);
        }
    }
}

/// Undoes [`fail_nva`]: restarts the agent, re-attaches the program
/// (`nva reload`), or brings the link back.
pub fn repair_nva(lab: &Lab, agents: &mut [RunningAgent; 2], i: usize, kind: usize) {
    match kind {
        0 => agents[i].spawn(&lab.nvas[i]),
        1 => {
            let out = agents[i].nva(&["reload"]);
            assert!(
                out.status.success(),
                "nva reload: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        _ => lab.nva_link_up(i),
    }
}

/// A running failover daemon (in the lab's management namespace).
pub struct FailoverDaemon {
    pub child: Option<ChildGuard>,
    pub config: std::path::PathBuf,
    pub log: std::path::PathBuf,
    pub metrics: SocketAddr,
    netns: String,
}

impl FailoverDaemon {
    pub fn start(lab: &Lab, id: &str, config_text: &str, metrics_port: u16) -> FailoverDaemon {
        let dir = std::env::temp_dir().join(format!("nva-failover-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("failover.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = dir.join("daemon.log");
        let mut d = FailoverDaemon {
            child: None,
            config,
            log,
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            netns: lab.mgmt.name.clone(),
        };
        d.spawn(&lab.mgmt);
        d
    }

    pub fn spawn(&mut self, mgmt: &Netns) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let nva = nva_binary().display().to_string();
        let config = self.config.display().to_string();
        let child = mgmt
            .nsenter(&[
                &nva,
                "--log-format",
                "json",
                "failover",
                "--config",
                &config,
            ])
            .stderr(log)
            .spawn()
            .expect("spawn nva failover");
        self.child = Some(ChildGuard::new(child));
        let up = wait_until(Duration::from_secs(20), || self.status().is_some());
        assert!(up, "failover daemon did not come up: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<String> {
        let addr = self.metrics;
        crate::in_netns_named(&self.netns, || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            // One write: a request split over several segments may be
            // answered before it is complete.
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out
                .split_once("\r\n\r\n")
                .map_or(String::new(), |(_, b)| b.to_string()))
        })
        .ok()
    }

    /// The daemon's /status.
    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.get("/status")?).ok()
    }

    /// The whole /metrics text.
    pub fn metrics_text(&self) -> String {
        self.get("/metrics").unwrap_or_default()
    }

    /// One value of /metrics.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.get("/metrics")?
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    pub fn is_leader(&self) -> bool {
        self.status().is_some_and(|s| s["leader"] == true)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }
}

impl Drop for FailoverDaemon {
    /// Its directory (config and log) goes with it (the process is stopped
    /// by its guard), unless a test is failing, when the log explains it.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            if let Some(dir) = self.config.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// One request to the service at `ip:port` from the client: true when
/// "pong" comes back.
pub fn request(lab: &Lab, ip: &str, port: u16) -> bool {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    let Ok(mut c) = in_netns(&lab.client, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    }) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut b).is_ok() && &b == b"pong"
}

/// The backend connects out to a listener on the client: the address the
/// client sees it come from (the VIP, through SNAT), if it connects.
pub fn backend_out_seen_as(lab: &Lab) -> Option<SocketAddr> {
    let addr = SocketAddr::new(CLIENT.parse().unwrap(), 7000);
    let listener = in_netns(&lab.client, || TcpListener::bind(addr).unwrap());
    let out = in_netns(&lab.backend, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    });
    out.ok()?;
    listener.set_nonblocking(false).ok()?;
    listener.accept().ok().map(|(_, peer)| peer)
}

/// A sync key file (mode 600) in a fresh directory named after `tag`;
/// returns the directory (the caller removes it) and the file.
pub fn sync_key(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("nva-sync-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("sync.key");
    std::fs::write(&key, "the lab pair's shared secret, long enough\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, key)
}

/// A line echo service at `addr` in `ns` for long-lived connections, until
/// `stop`.
pub fn line_echo(ns: &Netns, addr: SocketAddr, stop: Arc<AtomicBool>) {
    use std::io::{BufRead, BufReader};
    let listener = in_netns(ns, || TcpListener::bind(addr).unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || {
                        let mut w = conn.try_clone().unwrap();
                        for line in BufReader::new(conn).lines() {
                            let Ok(line) = line else { return };
                            if writeln!(w, "{line}").is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
}

/// The backend service on SERVICE_PORT: answers "ping" with "pong", and
/// echoes any other connection's bytes (see [`serve`]).
pub struct Service {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    pub fn start(lab: &Lab) -> Service {
        let addr = SocketAddr::new(BACKEND.parse().unwrap(), SERVICE_PORT);
        let listener = in_netns(&lab.backend, || TcpListener::bind(addr).unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        std::thread::spawn(move || serve(c));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Service {
            stop,
            thread: Some(thread),
        }
    }
}

/// One connection to the service: "ping" is answered with "pong" (a
/// request); anything else is echoed until the peer closes (a long-lived
/// connection of [`crate::long_lived`]).
fn serve(mut c: TcpStream) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let mut b = [0u8; 4];
    if c.read_exact(&mut b).is_err() {
        return;
    }
    if &b == b"ping" {
        let _ = c.write_all(b"pong");
        return;
    }
    let mut buf = [0u8; 4096];
    let mut rest = b.to_vec();
    loop {
        if c.write_all(&rest).is_err() {
            return;
        }
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => rest = buf[..n].to_vec(),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The client's continuous stream of requests: one TCP request every
/// `every`, with the time each one was answered.
pub struct RequestStream {
    stop: Arc<AtomicBool>,
    answered: Arc<Mutex<Vec<Instant>>>,
    sent: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RequestStream {
    pub fn start(lab: &Lab, every: Duration) -> RequestStream {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(0));
        let (s, a, n) = (stop.clone(), answered.clone(), sent.clone());
        let client = lab.client.name.clone();
        let thread = std::thread::spawn(move || {
            crate::in_netns_named(&client, || {
                let addr = SocketAddr::new(BACKEND.parse().unwrap(), SERVICE_PORT);
                // Bounded: at most 10 minutes of requests.
                let deadline = Instant::now() + Duration::from_secs(600);
                while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let started = Instant::now();
                    *n.lock().unwrap() += 1;
                    let ok = (|| -> std::io::Result<()> {
                        let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(150))?;
                        c.set_read_timeout(Some(Duration::from_millis(150)))?;
                        c.write_all(b"ping")?;
                        let mut b = [0u8; 4];
                        c.read_exact(&mut b)?;
                        if &b == b"pong" {
                            Ok(())
                        } else {
                            Err(std::io::Error::other("bad answer"))
                        }
                    })();
                    if ok.is_ok() {
                        a.lock().unwrap().push(Instant::now());
                    }
                    if let Some(rest) = every.checked_sub(started.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
            })
        });
        RequestStream {
            stop,
            answered,
            sent,
            thread: Some(thread),
        }
    }

    pub fn answered(&self) -> usize {
        self.answered.lock().unwrap().len()
    }

    /// Answered requests since `t`.
    pub fn answered_since(&self, t: Instant) -> usize {
        self.answered
            .lock()
            .unwrap()
            .iter()
            .filter(|a| **a >= t)
            .count()
    }

    /// The longest time without an answer between `from` and now.
    pub fn longest_gap_since(&self, from: Instant) -> Duration {
        let a = self.answered.lock().unwrap();
        let mut last = a.iter().rev().find(|t| **t < from).copied().unwrap_or(from);
        let mut gap = Duration::ZERO;
        for t in a.iter().filter(|t| **t >= from) {
            gap = gap.max(t.duration_since(last));
            last = *t;
        }
        gap
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let n = *self.sent.lock().unwrap();
        n
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
