//! A real three-node ZooKeeper ensemble (Debian's `zookeeper` package) on
//! the loopback of a network namespace, for the failover tests and the lab.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::{wait_until, ChildGuard, Netns};

pub const NODES: usize = 3;
const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/*";

pub struct Ensemble {
    pub dir: PathBuf,
    netns: String,
    nodes: Vec<Option<ChildGuard>>,
}

impl Ensemble {
    /// Starts three nodes in `ns` (client ports 2181-2183 on every address of
    /// the namespace, so that each client can be given a loopback address of
    /// its own, 127.0.0.N) and waits until they form a quorum.
    pub fn start(ns: &Netns, tag: &str) -> Ensemble {
        assert!(
            std::path::Path::new("/usr/share/java/zookeeper.jar").exists(),
            "ZooKeeper is not installed: run the tests through `cargo xtask test`, which installs Debian's zookeeper package"
        );
        let dir = std::env::temp_dir().join(format!("nva-zk-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for i in 1..=NODES {
            let data = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("myid"), format!("{i}\n")).unwrap();
            let mut cfg = format!(
                "tickTime=200\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={}\nadmin.enableServer=false\n4lw.commands.whitelist=srvr,ruok\n",
                data.display(),
                2180 + i
            );
            for j in 1..=NODES {
                cfg.push_str(&format!("server.{j}=127.0.0.1:{}:{}\n", 2880 + j, 3880 + j));
            }
            std::fs::write(dir.join(format!("zoo{i}.cfg")), cfg).unwrap();
        }
        let mut e = Ensemble {
            dir,
            netns: ns.name.clone(),
            nodes: (0..NODES).map(|_| None).collect(),
        };
        for i in 0..NODES {
            e.start_node(i);
        }
        e.wait_quorum(Duration::from_secs(60));
        e
    }

    pub fn connect_string(&self) -> String {
        self.connect_string_via("127.0.0.1")
    }

    /// The connect string through loopback address `ip`: a fault can cut
    /// one client off by its address.
    pub fn connect_string_via(&self, ip: &str) -> String {
        (1..=NODES)
            .map(|i| format!("{ip}:{}", 2180 + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node that leads the ensemble now (0-based), if any.
    pub fn leader(&self) -> Option<usize> {
        (0..NODES).find(|i| self.nodes[*i].is_some() && self.mode(*i).as_deref() == Some("leader"))
    }

    /// Starts node `i` (0-based) again.
    pub fn start_node(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.join(format!("node{}.log", i + 1))).unwrap();
        let cfg = self.dir.join(format!("zoo{}.cfg", i + 1));
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args([
                "--",
                "java",
                "-Xmx128m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.log.dir=/tmp",
                "-cp",
                CLASSPATH,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ZooKeeper (java)");
        self.nodes[i] = Some(ChildGuard::new(child));
    }

    /// Stops node `i` (SIGKILL: as abrupt as a crash).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }

    /// `srvr` of node `i`: "leader", "follower", or None if it does not serve.
    pub fn mode(&self, i: usize) -> Option<String> {
        let port = 2181 + i as u16;
        let reply = crate::in_netns_named(&self.netns, || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(500),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"srvr")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .ok()?;
        reply
            .lines()
            .find_map(|l| l.strip_prefix("Mode: ").map(|m| m.trim().to_string()))
    }

    /// Waits until every running node serves as leader or follower.
    pub fn wait_quorum(&self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            (0..NODES)
                .filter(|i| self.nodes[*i].is_some())
                .all(|i| matches!(self.mode(i).as_deref(), Some("leader" | "follower")))
        });
        assert!(
            ok,
            "ZooKeeper ensemble did not form (logs in {})",
            self.dir.display()
        );
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill_node(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
