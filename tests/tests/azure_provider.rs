//! The Azure provider's real client against a local ARM-like server: the
//! exact requests of a switch and their order, with throttling (429 +
//! Retry-After), a concurrent change (412), a server error (500) and
//! long-running operations.

use std::time::Duration;

use nva::failover::azure::{Action, AzureClient};
use nva::failover::config::{
    AzureSettings, NvaSettings, ProbeTarget, RouteTableSettings, TokenSource,
};
use nva_tests::arm::{ArmServer, Fault};
use serde_json::json;

const SUB: &str = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Network";

fn rt() -> String {
    format!("{SUB}/routeTables/rt-backend")
}
fn route(name: &str) -> String {
    format!("{}/routes/{name}", rt())
}
fn nic(name: &str) -> String {
    format!("{SUB}/networkInterfaces/{name}")
}
fn pip() -> String {
    format!("{SUB}/publicIPAddresses/nva-pip")
}

fn nva(name: &str, ip: &str, nic_name: &str) -> NvaSettings {
    NvaSettings {
        name: name.into(),
        probe: ProbeTarget::Tcp("127.0.0.1:9".parse().unwrap()),
        internal_ip: ip.parse().unwrap(),
        external_ip: None,
        nic_id: Some(nic(nic_name)),
        ip_config: Some("ipconfig1".into()),
        netns: String::new(),
    }
}

fn nic_body(name: &str, with_pip: bool) -> serde_json::Value {
    let mut cfg = json!({
        "name": "ipconfig1",
        "properties": {
            "privateIPAddress": "10.10.0.4",
            "subnet": {"id": format!("{SUB}/virtualNetworks/vnet/subnets/ext")}
        }
    });
    if with_pip {
        cfg["properties"]["publicIPAddress"] = json!({"id": pip()});
    }
    json!({
        "name": name,
        "id": nic(name),
        "location": "westeurope",
        "properties": {
            "enableIPForwarding": true,
            "ipConfigurations": [cfg]
        }
    })
}

fn route_body(name: &str, prefix: &str, hop: &str) -> serde_json::Value {
    json!({
        "name": name,
        "id": route(name),
        "properties": {"addressPrefix": prefix, "nextHopType": "VirtualAppliance", "nextHopIpAddress": hop}
    })
}

fn setup() -> (ArmServer, AzureClient, NvaSettings, NvaSettings) {
    let arm = ArmServer::start();
    arm.put_resource(
        &route("default"),
        route_body("default", "0.0.0.0/0", "10.20.0.11"),
    );
    arm.put_resource(
        &route("onprem"),
        route_body("onprem", "192.168.0.0/16", "10.20.0.11"),
    );
    arm.put_resource(&nic("nva-a-ext"), nic_body("nva-a-ext", true));
    arm.put_resource(&nic("nva-b-ext"), nic_body("nva-b-ext", false));
    let client = AzureClient::new(AzureSettings {
        route_tables: vec![RouteTableSettings {
            id: rt(),
            routes: vec!["default".into(), "onprem".into()],
        }],
        public_ip_id: pip(),
        arm_endpoint: arm.base.clone(),
        token: TokenSource::ManagedIdentity {
            endpoint: arm.base.clone(),
        },
        poll_interval_ms: 50,
    })
    .unwrap();
    (
        arm,
        client,
        nva("nva-a", "10.20.0.11", "nva-a-ext"),
        nva("nva-b", "10.20.0.12", "nva-b-ext"),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// (method, path) of the requests other than token fetches and polls.
fn writes_and_reads(arm: &ArmServer) -> Vec<(String, String, u16)> {
    arm.log()
        .into_iter()
        .filter(|r| !r.path.starts_with("/operations/") && !r.path.starts_with("/metadata/"))
        .map(|r| (r.method, r.path, r.status))
        .collect()
}

#[test]
fn switch_moves_routes_then_the_public_ip_in_order() {
    let (arm, client, a, b) = setup();
    let plan = client.plan(Some(&a), &b);
    assert_eq!(
        plan,
        vec![
            Action::SetRoute {
                route_id: route("default")
            },
            Action::SetRoute {
                route_id: route("onprem")
            },
            Action::DetachPublicIp {
                nic_id: nic("nva-a-ext"),
                ip_config: "ipconfig1".into()
            },
            Action::AttachPublicIp {
                nic_id: nic("nva-b-ext"),
                ip_config: "ipconfig1".into()
            },
        ],
        "routes first, then the public IP"
    );
    let rt_ = runtime();
    rt_.block_on(async {
        for action in &plan {
            client.execute(action, &b).await.unwrap();
        }
    });
    let seen = writes_and_reads(&arm);
    let expect = vec![
        ("GET", route("default"), 200),
        ("PUT", route("default"), 201),
        ("GET", route("onprem"), 200),
        ("PUT", route("onprem"), 201),
        ("GET", nic("nva-a-ext"), 200),
        ("PUT", nic("nva-a-ext"), 201),
        ("GET", nic("nva-b-ext"), 200),
        ("PUT", nic("nva-b-ext"), 201),
    ];
    let expect: Vec<(String, String, u16)> = expect
        .into_iter()
        .map(|(m, p, s)| (m.to_string(), p, s))
        .collect();
    assert_eq!(seen, expect);

    let log = arm.log();
    // Every write carries the ETag it read, and the api-version.
    for r in log.iter().filter(|r| r.method == "PUT") {
        assert_eq!(r.if_match.as_deref(), Some("W/\"1\""), "{}", r.path);
        assert_eq!(r.query, "api-version=2024-05-01");
    }
    // The token came from the instance metadata service, once.
    assert_eq!(
        log.iter()
            .filter(|r| r.path.starts_with("/metadata/"))
            .count(),
        1
    );
    // Each write waited for its operation: two polls in progress, one done.
    assert_eq!(
        log.iter()
            .filter(|r| r.path.starts_with("/operations/"))
            .count(),
        4 * 3
    );
    // Bodies: the route keeps its prefix, the NICs are put back whole.
    let put = |path: &str| {
        log.iter()
            .find(|r| r.method == "PUT" && r.path == path)
            .unwrap()
            .body
            .clone()
            .unwrap()
    };
    let r = put(&route("onprem"));
    assert_eq!(r["properties"]["nextHopIpAddress"], "10.20.0.12");
    assert_eq!(r["properties"]["nextHopType"], "VirtualAppliance");
    assert_eq!(r["properties"]["addressPrefix"], "192.168.0.0/16");
    let old = put(&nic("nva-a-ext"));
    assert!(old["properties"]["ipConfigurations"][0]["properties"]
        .get("publicIPAddress")
        .is_none());
    assert_eq!(
        old["properties"]["enableIPForwarding"], true,
        "the NIC is put back whole"
    );
    assert_eq!(old["location"], "westeurope");
    let new = put(&nic("nva-b-ext"));
    assert_eq!(
        new["properties"]["ipConfigurations"][0]["properties"]["publicIPAddress"]["id"],
        pip()
    );
    assert_eq!(
        new["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"],
        format!("{SUB}/virtualNetworks/vnet/subnets/ext")
    );

    // The world now says nva-b; running the switch again changes nothing.
    rt_.block_on(async {
        assert_eq!(
            client.active_nva(&[a.clone(), b.clone()]).await.unwrap(),
            Some(1)
        );
        arm.clear_log();
        for action in &plan {
            client.execute(action, &b).await.unwrap();
        }
    });
    assert!(
        arm.log().iter().all(|r| r.method == "GET"),
        "idempotent: no writes the second time"
    );
}

#[test]
fn throttling_conflicts_and_server_errors_are_retried() {
    let (arm, client, a, b) = setup();
    // 429 on the first route write, 412 on the old NIC's write (someone
    // changed it meanwhile), 500 on the new NIC's read.
    arm.inject(Fault {
        method: "PUT",
        path_contains: "routes/default".into(),
        status: 429,
        retry_after_s: Some(1),
    });
    arm.inject(Fault {
        method: "PUT",
        path_contains: "nva-a-ext".into(),
        status: 412,
        retry_after_s: None,
    });
    arm.inject(Fault {
        method: "GET",
        path_contains: "nva-b-ext".into(),
        status: 500,
        retry_after_s: None,
    });
    let started = std::time::Instant::now();
    runtime().block_on(async {
        for action in client.plan(Some(&a), &b) {
            client.execute(&action, &b).await.unwrap();
        }
    });
    let seen: Vec<(String, String, u16)> = writes_and_reads(&arm);
    let expect: Vec<(String, String, u16)> = vec![
        ("GET", route("default"), 200),
        ("PUT", route("default"), 429),
        ("PUT", route("default"), 201),
        ("GET", route("onprem"), 200),
        ("PUT", route("onprem"), 201),
        ("GET", nic("nva-a-ext"), 200),
        ("PUT", nic("nva-a-ext"), 412),
        ("GET", nic("nva-a-ext"), 200),
        ("PUT", nic("nva-a-ext"), 201),
        ("GET", nic("nva-b-ext"), 500),
        ("GET", nic("nva-b-ext"), 200),
        ("PUT", nic("nva-b-ext"), 201),
    ]
    .into_iter()
    .map(|(m, p, s)| (m.to_string(), p, s))
    .collect();
    assert_eq!(seen, expect);
    let log = arm.log();
    let writes: Vec<_> = log
        .iter()
        .filter(|r| r.path == route("default") && r.method == "PUT")
        .collect();
    assert!(
        writes[1].at.duration_since(writes[0].at) >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    let state = arm.resource(&nic("nva-b-ext"));
    assert_eq!(
        state["properties"]["ipConfigurations"][0]["properties"]["publicIPAddress"]["id"],
        pip()
    );
    let state = arm.resource(&route("default"));
    assert_eq!(state["properties"]["nextHopIpAddress"], "10.20.0.12");
}
