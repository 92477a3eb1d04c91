//! `nva-lab`: the HA lab of DESIGN.md, for people (`cargo xtask run`).
//!
//!     nva-lab up     bring the lab up, show it live; Ctrl-C tears it down
//!     nva-lab down   remove what a lab that was killed left behind

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nva_tests::lab::{FailoverDaemon, Lab, RequestStream, Service, NVA_NAMES};
use nva_tests::zookeeper::Ensemble;

/// Name prefix of everything a lab run creates.
const TAG: &str = "run";

fn main() {
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "up".into());
    match cmd.as_str() {
        "up" => up(),
        "down" => down(),
        _ => {
            eprintln!("usage: nva-lab up|down");
            std::process::exit(2);
        }
    }
}

fn down() {
    let mut removed = 0;
    for ns in nva_tests::netns_list() {
        if ns.starts_with(&format!("lab{TAG}-")) {
            if let Ok(out) = std::process::Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", pid])
                        .status();
                }
            }
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns])
                .status();
            removed += 1;
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("nva-test-") && name.contains(&format!("-{TAG}-")) {
                let _ = std::fs::remove_dir_all(e.path());
                removed += 1;
            }
        }
    }
    println!("nva-lab down: removed {removed} leftovers");
}

fn up() {
    nva_tests::require_root();
    down();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            stop.store(true, Ordering::Relaxed);
        });
    }
    println!("nva-lab: creating namespaces (client, fabric, nva-a, nva-b, backend, mgmt)...");
    let lab = Lab::new(TAG);
    println!("nva-lab: starting a three-node ZooKeeper ensemble in the management namespace...");
    let zk = Ensemble::start(&lab.mgmt, TAG);
    println!("nva-lab: starting nva agent on nva-a and nva-b...");
    let agents = lab.start_agents(TAG);
    let _service = Service::start(&lab);
    println!("nva-lab: starting two failover daemons (ZooKeeper election)...");
    let daemons = [
        FailoverDaemon::start(
            &lab,
            &format!("{TAG}-fo-1"),
            &lab.failover_config("fo-1", Some(&zk.connect_string()), 9190, 5),
            9190,
        ),
        FailoverDaemon::start(
            &lab,
            &format!("{TAG}-fo-2"),
            &lab.failover_config("fo-2", Some(&zk.connect_string()), 9191, 5),
            9191,
        ),
    ];
    let requests = RequestStream::start(&lab, Duration::from_millis(20));
    let [a, b] = &lab.nvas;
    println!(
        "\nThe lab is up. Where to look (run these as root in another terminal):\n\
         \x20 health of an NVA:   ip netns exec {mgmt} curl -s 10.99.1.11:9090/health   (nva-b: 10.99.1.12)\n\
         \x20 agent metrics:      ip netns exec {mgmt} curl -s 10.99.1.11:9090/metrics\n\
         \x20 daemon status:      ip netns exec {mgmt} curl -s 127.0.0.1:9190/status    (second daemon: 9191)\n\
         \x20 daemon metrics:     ip netns exec {mgmt} curl -s 127.0.0.1:9190/metrics\n\
         \x20 the fabric's routes: ip netns exec {fabric} ip route show table 100; ip netns exec {fabric} ip route show table 200\n\
         NAT in the Azure shape (the VIP {vip} stands for the public IP):\n\
         \x20 DNAT, client to the backend's service through the VIP:\n\
         \x20   ip netns exec {client} bash -c 'exec 3<>/dev/tcp/{vip}/{public_port}; echo -n ping >&3; head -c4 <&3; echo'   (prints pong)\n\
         \x20 SNAT, the backend out (the client side sees the VIP):\n\
         \x20   ip netns exec {client} tcpdump -ni c0 icmp &  ip netns exec {backend} ping -c1 {client_ip}\n\
         \x20 both translations, on the active NVA (nva-a first):\n\
         \x20   nsenter --net=/run/netns/{a} {nva} conntrack list --config {cfg_a}\n\
         How to make the active NVA fail (nva-a first):\n\
         \x20 link down:          ip netns exec {a} ip link set ext0 down      (up again: ... ext0 up; then re-add its routes)\n\
         \x20 kill its agent:     kill -9 {pid_a}\n\
         \x20 detach its program: bpftool link detach pinned {bpffs_a}/{layout}/links/ext0\n\
         \x20 kill the leading daemon: kill -9 <pid of `nva failover` in {mgmt}> (ip netns pids {mgmt})\n\
         Config files: {cfg_a} (agent), {fo_cfg} (daemon). Ctrl-C tears everything down.\n",
        mgmt = lab.mgmt.name,
        fabric = lab.fabric.name,
        client = lab.client.name,
        backend = lab.backend.name,
        client_ip = nva_tests::lab::CLIENT,
        vip = nva_tests::lab::VIP,
        public_port = nva_tests::lab::PUBLIC_PORT,
        nva = nva_tests::nva_binary().display(),
        a = a.name,
        pid_a = agents[0].child.as_ref().map_or(0, |c| c.pid()),
        bpffs_a = agents[0].bpffs,
        layout = nva::datapath::pin::LAYOUT_VERSION,
        cfg_a = agents[0].config.display(),
        fo_cfg = daemons[0].config.display(),
    );
    let _ = b;
    let started = Instant::now();
    let mut last_answered = 0;
    let mut last_active = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let answered = requests.answered();
        let per_second = answered - last_answered;
        last_answered = answered;
        let active = lab.routed_to();
        let leader = daemons
            .iter()
            .position(|d| d.is_leader())
            .map_or("none".to_string(), |i| format!("fo-{}", i + 1));
        let failovers: u64 = daemons
            .iter()
            .filter_map(|d| d.metric("nva_failover_switches_total"))
            .map(|f| f as u64)
            .sum();
        let health: Vec<String> = daemons
            .iter()
            .find_map(|d| d.status())
            .map(|s| {
                s["nvas"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| {
                        format!(
                            "{} {}",
                            n["name"].as_str().unwrap_or(""),
                            n["health"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let active_name = active.map_or("(none)", |i| NVA_NAMES[i]);
        if active != last_active && last_active.is_some() {
            println!(">>> traffic moved to {active_name}");
        }
        last_active = active;
        println!(
            "[{:>5.0} s] active: {active_name:<7} leader: {leader:<4} requests answered/s: {per_second:>3}  failovers: {failovers}  health: {}",
            started.elapsed().as_secs_f64(),
            health.join(", ")
        );
    }
    println!("\nnva-lab: tearing down...");
    drop(requests);
    drop(daemons);
    drop(agents);
    drop(zk);
    drop(lab);
    println!("nva-lab: done");
}
