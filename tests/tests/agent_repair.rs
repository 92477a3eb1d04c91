//! Repairs an operator relies on: a restart (or reload) after the program
//! was detached behind the agent's back or its interfaces were recreated,
//! an agent started where its pins could not survive it, client commands
//! that cannot see the pins, and a reload that names another file.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nva_tests::agent::RunningAgent;
use nva_tests::traffic::{http_get, udp_delivered};
use nva_tests::{nva_binary, require_root, wait_until, Topology, NVA_IN_IF, NVA_OUT_IF};

const HEALTH: &str = "127.0.0.1:9090";
const ALLOWED_PORT: u16 = 7000;
const DENIED_PORT: u16 = 7001;

fn config(health: &str, bpffs: &str, allow_denied_port: bool) -> String {
    let mut text = format!(
        r#"
[agent]
interfaces = ["{NVA_IN_IF}", "{NVA_OUT_IF}"]
health_listen = "{health}"
health_interval_ms = 200
bpffs = "{bpffs}"

[policy]
default = "drop"

[[rules]]
name = "allowed"
action = "allow"
proto = "udp"
dport = ["{ALLOWED_PORT}"]
"#
    );
    if allow_denied_port {
        text.push_str(&format!(
            "\n[[rules]]\nname = \"denied\"\naction = \"allow\"\nproto = \"udp\"\ndport = [\"{DENIED_PORT}\"]\n"
        ));
    }
    text
}

fn health(t: &Topology) -> u16 {
    http_get(&t.nva, HEALTH, "/health").map_or(0, |(code, _)| code)
}

fn until_health(t: &Topology, code: u16, what: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || health(t) == code),
        "{what}: /health is {}, not {code}",
        health(t)
    );
}

/// The rules are enforced on the client's side: the allowed port passes,
/// the other is dropped (without XDP on n0 the kernel would forward it).
fn assert_filters(t: &Topology, what: &str) {
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), ALLOWED_PORT, 10),
        10,
        "{what}: the allowed flow passes"
    );
    assert_eq!(
        udp_delivered(&t.client, &t.server, &t.server_v4(), DENIED_PORT, 10),
        0,
        "{what}: the other flow is dropped"
    );
}

/// A restart (the agent was killed) repairs what `what` broke: healthy,
/// filtering, the repair logged, the rule set and its counters (`counted`
/// packets of "allowed" before) kept.
fn restart_repairs(t: &Topology, agent: &mut RunningAgent, counted: u64, what: &str) {
    agent.spawn(&t.nva);
    until_health(t, 200, &format!("restarted after {what}"));
    assert_filters(t, &format!("restarted after {what}"));
    assert!(
        agent.log().contains("repaired"),
        "the agent logs what it repaired: {}",
        agent.log()
    );
    assert!(
        agent.packets_of("allowed") >= counted + 10,
        "the rule set and its counters were kept"
    );
}

/// `nva reload` repairs what `what` broke: healthy again, and filtering.
fn reload_repairs(t: &Topology, agent: &RunningAgent, what: &str) {
    until_health(t, 503, what);
    let out = agent.nva(&["reload"]);
    assert!(out.status.success(), "nva reload: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("repaired: "),
        "nva reload says what it repaired: {}",
        text(&out)
    );
    until_health(t, 200, &format!("reloaded after {what}"));
    assert_filters(t, &format!("reloaded after {what}"));
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to completion within `limit` (killed and reported otherwise).
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("still running after {limit:?}: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn restart_and_reload_repair_an_external_detach() {
    require_root();
    let t = Topology::new(219);
    let mut agent = RunningAgent::start(&t, &config(HEALTH, "{bpffs}", false), false);
    until_health(&t, 200, "started");
    assert_filters(&t, "started");
    let counted = agent.packets_of("allowed");

    // Detached behind the agent's back, then the agent restarts: it used to
    // exit with "Link has been severed" and leave the NVA down.
    agent.detach_link(NVA_IN_IF);
    until_health(&t, 503, "detached");
    agent.kill9();
    restart_repairs(&t, &mut agent, counted, "an external detach");
    // Only the severed link was replaced; the good one was adopted (no gap).
    assert_eq!(
        attachments(&agent),
        [
            (NVA_IN_IF.to_string(), "Reattached".to_string()),
            (NVA_OUT_IF.to_string(), "Adopted".to_string())
        ]
    );

    // The same fault while the agent runs: `nva reload` repairs it.
    agent.detach_link(NVA_OUT_IF);
    agent.detach_link(NVA_IN_IF);
    reload_repairs(&t, &agent, "an external detach");
}

#[test]
fn restart_and_reload_repair_recreated_interfaces() {
    require_root();
    let t = Topology::new(220);
    let mut agent = RunningAgent::start(&t, &config(HEALTH, "{bpffs}", false), false);
    until_health(&t, 200, "started");

    // The namespace's interfaces deleted and created again while no agent
    // runs: the pinned links are defunct.
    assert_filters(&t, "started");
    let counted = agent.packets_of("allowed");
    agent.kill9();
    t.rewire();
    restart_repairs(&t, &mut agent, counted, "the interfaces were recreated");

    // And while it runs: unhealthy until a reload.
    t.rewire();
    reload_repairs(&t, &agent, "interfaces recreated under the agent");
}

#[test]
fn private_mount_namespaces_and_foreign_reload_files_are_refused() {
    require_root();
    let t = Topology::new(221);
    let agent = RunningAgent::start(&t, &config(HEALTH, "{bpffs}", false), true);
    until_health(&t, 200, "started");
    let dir = agent.config.parent().unwrap().to_path_buf();
    let nva = nva_binary().display().to_string();

    // An agent started with `ip netns exec` (a private mount namespace with
    // its own /sys) would pin into a bpffs that dies with it: refused.
    let private_bpffs = format!("/sys/fs/bpf/nva-test-private-{}", std::process::id());
    let private_config = dir.join("private.toml");
    std::fs::write(
        &private_config,
        config("127.0.0.1:9092", &private_bpffs, false),
    )
    .unwrap();
    let out = run_bounded(
        t.nva.command(&[
            &nva,
            "agent",
            "--config",
            &private_config.display().to_string(),
        ]),
        Duration::from_secs(30),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("ip netns exec") && said.contains("nsenter --net=/run/netns/"),
        "the refusal says why and what to do: {said}"
    );

    // The pin-reading commands under `ip netns exec` say they find no
    // agent, and `detach` removes nothing.
    let config_arg = agent.config.display().to_string();
    for args in [vec!["rules"], vec!["conntrack", "count"], vec!["detach"]] {
        let mut cmd = vec![nva.as_str()];
        cmd.extend(&args);
        cmd.extend(["--config", config_arg.as_str()]);
        let out = run_bounded(t.nva.command(&cmd), Duration::from_secs(30));
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(
            said.contains("no agent found") && said.contains("nsenter"),
            "{args:?}: {said}"
        );
    }
    assert!(agent.state().is_some(), "the agent's state is still there");
    until_health(&t, 200, "after the refused commands");
    assert_filters(&t, "after the refused commands");

    // `nva reload --config OTHER` does not report the old rules as new.
    let other = dir.join("new.toml");
    std::fs::write(&other, config(HEALTH, &agent.bpffs, true)).unwrap();
    let generation = agent.state().unwrap()["generation"].clone();
    let out = agent.nva_with_config(&["reload"], &other);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&agent.config.canonicalize().unwrap().display().to_string()),
        "the refusal names the file the agent reads: {said}"
    );
    assert_eq!(agent.state().unwrap()["generation"], generation);
    assert_filters(&t, "after the refused reload");

    // The same file under another name is the agent's file.
    let alias = dir.join("alias.toml");
    std::os::unix::fs::symlink(&agent.config, &alias).unwrap();
    let out = agent.nva_with_config(&["reload"], &alias);
    assert!(
        out.status.success(),
        "reload through a symlink: {}",
        text(&out)
    );
}

/// (interface, how the program got there) from `nva status --json`.
fn attachments(agent: &RunningAgent) -> Vec<(String, String)> {
    let mut found = Vec::new();
    // The status is published every health interval.
    wait_until(Duration::from_secs(5), || {
        let out = agent.nva(&["status", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if doc["status"]["pid"].as_u64() != agent.child.as_ref().map(|c| c.pid() as u64) {
            return false;
        }
        found = doc["status"]["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                let how = i["attached"].as_str().unwrap_or("");
                (
                    i["name"].as_str().unwrap_or("").to_string(),
                    how.split('(').next().unwrap_or("").to_string(),
                )
            })
            .collect();
        true
    });
    found
}

/// Removes a directory when dropped (also when the test fails).
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pins_of_another_layout_version_are_refused_until_detached() {
    require_root();
    let t = Topology::new(222);
    // The bpffs RunningAgent::start_in will use for this tag, holding an
    // older nva's layout (directories can be made on a bpffs).
    let tag = "layout";
    let bpffs = format!("/sys/fs/bpf/nva-test-{}-{tag}", std::process::id());
    let _cleanup = RemoveOnDrop(bpffs.clone());
    let old = format!("{bpffs}/v1/maps");
    if std::fs::create_dir_all(&old).is_err() {
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .expect("run mount");
        assert!(mounted.success(), "mounting bpffs at /sys/fs/bpf");
        std::fs::create_dir_all(&old).expect("a directory on the bpffs");
    }
    let dir = std::env::temp_dir().join(format!("nva-layout-test-{}", std::process::id()));
    let _dir_cleanup = RemoveOnDrop(dir.display().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("nva.toml");
    std::fs::write(&config_path, config(HEALTH, &bpffs, false)).unwrap();
    let config_arg = config_path.display().to_string();
    let nva = nva_binary().display().to_string();

    let out = run_bounded(
        t.nva.nsenter(&[&nva, "agent", "--config", &config_arg]),
        Duration::from_secs(30),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("layout v1")
            && said.contains(&format!("layout {}", nva::datapath::pin::LAYOUT_VERSION))
            && said.contains("nva detach"),
        "the refusal names both layouts and the fix: {said}"
    );

    // `nva detach` removes every layout version; then the agent starts.
    let out = run_bounded(
        {
            let mut c = Command::new(&nva);
            c.args(["detach", "--config", &config_arg]);
            c
        },
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "nva detach: {}", text(&out));
    assert!(
        !std::path::Path::new(&old).exists(),
        "the old layout is gone"
    );
    let agent = RunningAgent::start_in(&t.nva, tag, &config(HEALTH, "{bpffs}", false), true);
    assert_eq!(agent.bpffs, bpffs);
    until_health(&t, 200, "started after nva detach");
    assert_filters(&t, "started after nva detach");
}
