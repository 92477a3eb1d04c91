//! The netns fixture itself: a client reaches the server through the nva
//! namespace over IPv4 and IPv6, and nothing is left behind.

use nva_tests::{netns_list, require_root, Topology};

fn ping(t: &Topology, dst: &str) -> std::process::Output {
    t.client.exec(&["ping", "-c1", "-W1", dst])
}

#[test]
fn topology_forwards_and_cleans_up() {
    require_root();
    let names;
    {
        let t = Topology::new(201);
        names = t.netns_names();
        let listed = netns_list();
        for n in &names {
            assert!(listed.contains(n), "netns {n} missing: {listed:?}");
        }
        for dst in [t.server_v4(), t.server_v6()] {
            let out = ping(&t, &dst);
            assert!(
                out.status.success(),
                "ping {dst} from client failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let listed = netns_list();
    for n in &names {
        assert!(!listed.contains(n), "netns {n} left behind: {listed:?}");
    }
}
