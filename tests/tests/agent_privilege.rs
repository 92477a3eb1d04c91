//! Least privilege: the agent runs with exactly CAP_BPF, CAP_NET_ADMIN and
//! CAP_PERFMON (the systemd unit's set; bpffs is mounted beforehand), and
//! still loads, filters real traffic and reports healthy.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nva_tests::agent::RunningAgent;
use nva_tests::traffic::http_get;
use nva_tests::{in_netns, require_root, Topology, NVA_IN_IF, NVA_OUT_IF};

/// CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
const CAPS: u64 = (1 << 12) | (1 << 38) | (1 << 39);

fn connects(t: &Topology, port: u16) -> bool {
    let addr = SocketAddr::new(t.server_v4().parse().unwrap(), port);
    let _listener = in_netns(&t.server, || TcpListener::bind(addr).unwrap());
    in_netns(&t.client, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(1000))
    })
    .is_ok()
}

#[test]
fn the_agent_runs_with_only_bpf_net_admin_and_perfmon() {
    require_root();
    let t = Topology::new(229);
    let config = format!(
        r#"
[agent]
interfaces = ["{NVA_IN_IF}", "{NVA_OUT_IF}"]
health_listen = "0.0.0.0:9090"
bpffs = "{{bpffs}}"

[policy]
default = "drop"
stateful = true

[[rules]]
name = "web"
action = "allow"
proto = "tcp"
dport = ["80"]
"#
    );
    // Root keeps only what the bounding set holds across exec.
    let agent = RunningAgent::start_wrapped(
        &t.nva,
        "caps",
        &config,
        true,
        &[
            "setpriv",
            "--bounding-set=-all,+bpf,+net_admin,+perfmon",
            "--inh-caps=-all",
            "--no-new-privs",
            "--",
        ],
    );
    let pid = agent.state().expect("state")["pid"].as_u64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    assert_eq!(cap("CapEff:"), CAPS, "effective capabilities");
    assert_eq!(cap("CapBnd:"), CAPS, "bounding set");

    // Healthy: the program attached, the rules loaded, the synthetic packet
    // run through it.
    let (code, body) = http_get(&t.client, &format!("{}:9090", t.nva_in_v4()), "/health").unwrap();
    assert_eq!(code, 200, "{body}");
    // Filtering real traffic.
    assert!(connects(&t, 80), "allowed port");
    assert!(!connects(&t, 81), "dropped port");
    // A reload works with the same privileges.
    let out = agent.nva(&["reload"]);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(agent);
}
