//! Running `nva agent` inside a topology's nva namespace, with cleanup of
//! its pins and state whatever happens.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::{nva_binary, wait_until, ChildGuard, Netns, Topology};

/// An agent process plus everything it leaves on the machine.
pub struct RunningAgent {
    pub child: Option<ChildGuard>,
    pub config: PathBuf,
    pub bpffs: String,
    nsenter_ns: String,
    detach_on_exit: bool,
    dir: PathBuf,
    /// A command the agent runs under (e.g. `setpriv` with a capability
    /// set), empty for none.
    wrapper: Vec<String>,
}

impl RunningAgent {
    /// Writes `config_text` (with `{bpffs}` replaced) and starts the agent in
    /// the topology's nva namespace; waits until it reports its rule set.
    pub fn start(t: &Topology, config_text: &str, detach_on_exit: bool) -> RunningAgent {
        RunningAgent::start_in(&t.nva, &t.id.to_string(), config_text, detach_on_exit)
    }

    /// Like [`RunningAgent::start`], in namespace `ns`; `tag` tells its
    /// files apart from other agents'.
    pub fn start_in(
        ns: &Netns,
        tag: &str,
        config_text: &str,
        detach_on_exit: bool,
    ) -> RunningAgent {
        RunningAgent::start_wrapped(ns, tag, config_text, detach_on_exit, &[])
    }

    /// Like [`RunningAgent::start_in`], with the agent's command run by
    /// `wrapper` (its arguments first, then the agent's command line).
    pub fn start_wrapped(
        ns: &Netns,
        tag: &str,
        config_text: &str,
        detach_on_exit: bool,
        wrapper: &[&str],
    ) -> RunningAgent {
        let tag = format!("{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("nva-agent-test-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bpffs = format!("/sys/fs/bpf/nva-test-{tag}");
        let config = dir.join("nva.toml");
        std::fs::write(&config, config_text.replace("{bpffs}", &bpffs)).unwrap();
        let mut agent = RunningAgent {
            child: None,
            config,
            bpffs,
            nsenter_ns: ns.name.clone(),
            detach_on_exit,
            dir,
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        agent.spawn(ns);
        agent
    }

    /// Starts (again) the agent process and waits until it is up.
    pub fn spawn(&mut self, ns: &Netns) {
        let before = self.state().map(|s| s["pid"].as_u64());
        let mut args = self.wrapper.clone();
        args.extend([
            nva_binary().display().to_string(),
            "--log-format".into(),
            "json".into(),
            "agent".into(),
        ]);
        if self.detach_on_exit {
            args.push("--detach-on-exit".into());
        }
        args.push("--config".into());
        args.push(self.config.display().to_string());
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        // The agent's log (JSON lines) goes to a file the test can read.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log");
        let child = ns
            .nsenter(&args)
            .stderr(log)
            .spawn()
            .expect("spawn nva agent");
        let pid = child.id() as u64;
        self.child = Some(ChildGuard::new(child));
        let up = wait_until(Duration::from_secs(60), || {
            self.state().is_some_and(|s| s["pid"].as_u64() == Some(pid))
        });
        assert!(up, "agent did not come up (state before: {before:?})");
    }

    /// The agent's log so far (JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The agent's state directory (as `nva::datapath::pin::state_dir` names it).
    fn state_dir(&self) -> PathBuf {
        nva::datapath::pin::state_dir(std::path::Path::new(&self.bpffs))
    }

    /// The agent's state file, parsed.
    pub fn state(&self) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.state_dir().join("state.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Runs an `nva` client command against this agent's config.
    pub fn nva(&self, args: &[&str]) -> Output {
        let mut c = Command::new(nva_binary());
        c.args(args).arg("--config").arg(&self.config);
        c.output().expect("run nva")
    }

    /// Runs an `nva` client command naming another config file.
    pub fn nva_with_config(&self, args: &[&str], config: &std::path::Path) -> Output {
        let mut c = Command::new(nva_binary());
        c.args(args).arg("--config").arg(config);
        c.output().expect("run nva")
    }

    /// `nva rules --json` as (name, packets).
    pub fn rule_packets(&self) -> Vec<(String, u64)> {
        let out = self.nva(&["rules", "--json"]);
        assert!(
            out.status.success(),
            "nva rules: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["packets"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    pub fn packets_of(&self, rule: &str) -> u64 {
        self.rule_packets()
            .into_iter()
            .find(|(n, _)| n == rule)
            .unwrap_or_else(|| panic!("rule {rule} missing"))
            .1
    }

    /// Replaces the config file (with `{bpffs}` filled in).
    pub fn write_config(&self, text: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text.replace("{bpffs}", &self.bpffs)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// Detaches the program from `iface` behind the agent's back, as an
    /// operator or another tool could (`bpftool link detach`).
    pub fn detach_link(&self, iface: &str) {
        let link =
            nva::datapath::pin::PinLayout::new(std::path::Path::new(&self.bpffs)).link(iface);
        let out = Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(&link)
            .output()
            .expect("run bpftool");
        assert!(
            out.status.success(),
            "bpftool link detach: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL: the process dies without any cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }

    pub fn netns(&self) -> &str {
        &self.nsenter_ns
    }
}

impl Drop for RunningAgent {
    /// Leaves no pins or state behind (the namespaces, and so the links, go
    /// with the topology).
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir_all(self.state_dir());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
