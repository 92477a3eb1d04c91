//! Test fixtures for integration tests that push real traffic through
//! network namespaces.
//!
//! Everything here shells out to `ip` (iproute2) and needs root. Namespaces
//! and the veth pairs inside them are removed when the owning value is
//! dropped; no interface or address is ever created in the root namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

static NETNS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics with a clear message unless the test runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "this test needs root (XDP, network namespaces); run it through \
             `sudo -E cargo xtask test` or as root (euid is {euid})"
        );
    }
}

/// Runs `ip` with `args` in the root namespace; panics if it fails.
fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (is iproute2 installed?): {e}"));
    if !out.status.success() {
        panic!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out
}

/// Names of the network namespaces that exist now (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    let out = ip(&["netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// A named network namespace (`ip netns add`), deleted on drop together with
/// its interfaces; processes still running inside are killed first.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a namespace named `{prefix}-{pid}-{counter}` with loopback up.
    pub fn new(prefix: &str) -> Netns {
        let n = NETNS_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        if netns_list().contains(&name) {
            // Left over from an earlier run that had the same pid.
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "dev", "lo", "up"]);
        // Interfaces created from now on skip IPv6 duplicate address
        // detection, so their addresses are usable at once.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns
    }

    /// A `Command` that runs `cmd` inside this namespace, for full control
    /// over stdio and environment.
    pub fn command(&self, cmd: &[&str]) -> Command {
        assert!(!cmd.is_empty(), "empty command");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `cmd` inside the namespace and collects its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.command(cmd)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?} in netns {}: {e}", self.name))
    }

    /// Like [`Netns::exec`], but panics unless the command succeeds; returns
    /// its standard output.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        if !out.status.success() {
            panic!(
                "{cmd:?} in netns {} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd` inside the namespace (`ip netns exec` execs it, so the
    /// child's pid is the command's). Stdin is closed, stdout and stderr are
    /// inherited; use [`Netns::command`] to capture them instead. Wrap the
    /// child in a [`ChildGuard`] so that it is stopped when the test ends.
    pub fn spawn(&self, cmd: &[&str]) -> Child {
        self.command(cmd)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?} in netns {}: {e}", self.name))
    }

    /// Runs a shell script inside the namespace (`sh -c SCRIPT`).
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// Sets a sysctl of this namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self.sh(&format!("echo {value} > {path}"));
        if !out.status.success() {
            panic!(
                "setting {key}={value} in netns {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }

    /// Runs `ip ARGS` inside the namespace; panics if it fails.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A process left inside keeps the namespace (and its veths) alive.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: plain kill(2) on a pid read from the namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete netns {}", self.name);
        }
    }
}

/// Creates a veth pair with `a_if` in namespace `a` and `b_if` in `b` (both
/// ends are created directly inside their namespaces) and sets both up.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    for name in [a_if, b_if] {
        assert!(
            !name.is_empty() && name.len() <= MAX_IFNAME,
            "interface name {name:?} must be 1..={MAX_IFNAME} bytes"
        );
    }
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    a.ip(&["link", "set", "dev", a_if, "up"]);
    b.ip(&["link", "set", "dev", b_if, "up"]);
}

/// Interface names used by [`Topology`].
pub const CLIENT_IF: &str = "c0";
pub const NVA_IN_IF: &str = "n0";
pub const NVA_OUT_IF: &str = "n1";
pub const SERVER_IF: &str = "s0";

/// client ── nva ── server, each in its own namespace:
///
/// ```text
/// client c0 10.ID.1.2/24 fd00:ID:1::2/64
///        |
///    nva n0 10.ID.1.1/24 fd00:ID:1::1/64   (forwarding on)
///    nva n1 10.ID.2.1/24 fd00:ID:2::1/64
///        |
/// server s0 10.ID.2.2/24 fd00:ID:2::2/64
/// ```
///
/// Client and server route everything through the nva namespace. Different
/// `id`s give disjoint subnets, so topologies can coexist. Dropping it
/// removes the three namespaces and the veths inside.
#[derive(Debug)]
pub struct Topology {
    pub id: u8,
    pub client: Netns,
    pub nva: Netns,
    pub server: Netns,
}

impl Topology {
    pub fn new(id: u8) -> Topology {
        require_root();
        let client = Netns::new(&format!("nvat{id}-client"));
        let nva = Netns::new(&format!("nvat{id}-nva"));
        let server = Netns::new(&format!("nvat{id}-server"));
        let t = Topology {
            id,
            client,
            nva,
            server,
        };

        t.wire();
        t.nva.sysctl("net.ipv4.ip_forward", "1");
        t.nva.sysctl("net.ipv6.conf.all.forwarding", "1");
        t
    }

    /// The veths, addresses and routes of the topology.
    fn wire(&self) {
        veth_pair(&self.client, CLIENT_IF, &self.nva, NVA_IN_IF);
        veth_pair(&self.nva, NVA_OUT_IF, &self.server, SERVER_IF);

        let addr = |ns: &Netns, dev: &str, v4: String, v6: String| {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        };
        addr(&self.client, CLIENT_IF, self.client_v4(), self.client_v6());
        addr(&self.nva, NVA_IN_IF, self.nva_in_v4(), self.nva_in_v6());
        addr(&self.nva, NVA_OUT_IF, self.nva_out_v4(), self.nva_out_v6());
        addr(&self.server, SERVER_IF, self.server_v4(), self.server_v6());

        self.client
            .ip(&["route", "add", "default", "via", &self.nva_in_v4()]);
        self.client
            .ip(&["-6", "route", "add", "default", "via", &self.nva_in_v6()]);
        self.server
            .ip(&["route", "add", "default", "via", &self.nva_out_v4()]);
        self.server
            .ip(&["-6", "route", "add", "default", "via", &self.nva_out_v6()]);
    }

    /// Deletes the nva's interfaces and creates them again with the same
    /// names and addresses, as when a namespace is rebuilt or a NIC
    /// replaced: XDP links on the old interfaces become defunct.
    pub fn rewire(&self) {
        self.nva.ip(&["link", "del", NVA_IN_IF]);
        self.nva.ip(&["link", "del", NVA_OUT_IF]);
        self.wire();
    }

    pub fn client_v4(&self) -> String {
        format!("10.{}.1.2", self.id)
    }
    pub fn client_v6(&self) -> String {
        format!("fd00:{}:1::2", self.id)
    }
    /// The nva's address on the client side (`n0`).
    pub fn nva_in_v4(&self) -> String {
        format!("10.{}.1.1", self.id)
    }
    pub fn nva_in_v6(&self) -> String {
        format!("fd00:{}:1::1", self.id)
    }
    /// The nva's address on the server side (`n1`).
    pub fn nva_out_v4(&self) -> String {
        format!("10.{}.2.1", self.id)
    }
    pub fn nva_out_v6(&self) -> String {
        format!("fd00:{}:2::1", self.id)
    }
    pub fn server_v4(&self) -> String {
        format!("10.{}.2.2", self.id)
    }
    pub fn server_v6(&self) -> String {
        format!("fd00:{}:2::2", self.id)
    }

    /// Names of the three namespaces.
    pub fn netns_names(&self) -> [String; 3] {
        [
            self.client.name.clone(),
            self.nva.name.clone(),
            self.server.name.clone(),
        ]
    }
}

/// A child process that is stopped when the guard is dropped: SIGTERM, then
/// SIGKILL if it has not exited within 3 s, then reaped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Stops the child now (as on drop).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.0.try_wait() {
            return Some(status);
        }
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            match self.0.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = self.0.kill();
        self.0.wait().ok()
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The workspace's target directory: `CARGO_TARGET_DIR` (at run time, else
/// at build time) or `<workspace>/target`. Relative paths are taken from the
/// workspace root.
pub fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf();
    let configured = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from));
    match configured {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Path of the built `nva` binary (`NVA_BIN` overrides it). Panics with a
/// hint when it has not been built: `cargo test -p nva-tests` alone does not
/// build other packages' binaries.
pub fn nva_binary() -> PathBuf {
    let path = match std::env::var_os("NVA_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => target_dir().join("debug").join("nva"),
    };
    if !path.is_file() {
        panic!(
            "nva binary not found at {}; build it first (`cargo build -p nva-userspace`, \
             or run the tests through `cargo xtask test`)",
            path.display()
        );
    }
    path
}

pub mod frames;
pub mod test_run;

/// Runs `f` on a fresh thread that has its own, new network namespace
/// holding veth interfaces with the given names (peers are named NAME+"p").
/// Nothing is created in the caller's namespace; the namespace disappears
/// with the thread. `f` receives name -> ifindex.
pub fn in_private_netns<T: Send + 'static>(
    ifaces: &'static [&'static str],
    f: impl FnOnce(std::collections::HashMap<String, u32>) -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        let mut table = std::collections::HashMap::new();
        for name in ifaces {
            let peer = format!("{name}p");
            let out = Command::new("ip")
                .args(["link", "add", name, "type", "veth", "peer", "name", &peer])
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "ip link add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let c = std::ffi::CString::new(*name).unwrap();
            // SAFETY: `c` is a NUL-terminated string that outlives the call.
            let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert_ne!(idx, 0);
            table.insert(name.to_string(), idx);
        }
        table.insert("lo".to_string(), 1);
        f(table)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs `f` on a thread that has joined the network namespace `ns`; sockets
/// created there belong to that namespace and can be used from anywhere.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    in_netns_named(&ns.name, f)
}

/// Like [`in_netns`], for a namespace known by name.
pub fn in_netns_named<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

impl Netns {
    /// A command run in this namespace with `nsenter --net` only: unlike
    /// `ip netns exec`, it keeps the host's mounts (and so the shared bpffs).
    pub fn nsenter(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .args(args);
        c
    }
}
pub mod abuse;
pub mod agent;
pub mod arm;
pub mod chaos;
pub mod lab;
pub mod long_lived;
pub mod raw;
pub mod traffic;
pub mod zookeeper;
