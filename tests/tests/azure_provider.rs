//! The Azure provider's real client against a local ARM-like server
//! (tests/src/arm.rs): the exact requests of a switch and their order;
//! throttling (429 + Retry-After), a concurrent change (412), server errors;
//! polls refused (403/404) fail at once; Failed and Canceled operations;
//! 409 AnotherOperationInProgress; a resource still `Updating`; a public IP
//! in use; token retries, the user-assigned identity, the token audience and
//! IMDS without the proxy; and the duration of a switch done one action at a
//! time against one done in parallel.
//!
//! ARM answers a NIC write with `Retry-After: 10`; the server here sends
//! `Retry-After: 1`, so the durations printed are a tenth of Azure's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nva::failover::azure::{Action, AzureClient, AzureError};
use nva::failover::config::{
    AzureSettings, NvaSettings, ProbeTarget, RouteTableSettings, TokenSource,
};
use nva_tests::arm::{ArmServer, Fault, Outcome};
use serde_json::json;

const SUB: &str = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Network";
const UAMI: &str = "6b8e1f0a-3c1d-4b7e-9a4f-2d5c8e7f1a20";

fn rt(table: &str) -> String {
    format!("{SUB}/routeTables/{table}")
}
fn route_in(table: &str, name: &str) -> String {
    format!("{}/routes/{name}", rt(table))
}
fn route(name: &str) -> String {
    route_in("rt-backend", name)
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

/// A NIC as ARM returns it, read-only fields included.
fn nic_body(name: &str, with_pip: bool) -> serde_json::Value {
    let mut cfg = json!({
        "name": "ipconfig1",
        "id": format!("{}/ipConfigurations/ipconfig1", nic(name)),
        "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
        "properties": {
            "provisioningState": "Succeeded",
            "privateIPAddress": "10.10.0.4",
            "privateIPAllocationMethod": "Static",
            "privateIPAddressVersion": "IPv4",
            "subnet": {"id": format!("{SUB}/virtualNetworks/vnet/subnets/ext")},
            "primary": true
        }
    });
    if with_pip {
        cfg["properties"]["publicIPAddress"] = json!({"id": pip()});
    }
    json!({
        "name": name,
        "id": nic(name),
        "type": "Microsoft.Network/networkInterfaces",
        "location": "westeurope",
        "properties": {
            "provisioningState": "Succeeded",
            "resourceGuid": "7c1e2f3a-0000-4000-8000-000000000001",
            "ipConfigurations": [cfg],
            "dnsSettings": {"dnsServers": [], "appliedDnsServers": []},
            "macAddress": "00-0D-3A-2B-4C-5D",
            "enableAcceleratedNetworking": true,
            "enableIPForwarding": true,
            "primary": true,
            "virtualMachine": {"id": format!("/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}-vm")},
            "nicType": "Standard"
        }
    })
}

fn route_body(id: &str, prefix: &str, hop: &str) -> serde_json::Value {
    json!({
        "name": id.rsplit('/').next().unwrap(),
        "id": id,
        "type": "Microsoft.Network/routeTables/routes",
        "properties": {
            "provisioningState": "Succeeded",
            "addressPrefix": prefix,
            "nextHopType": "VirtualAppliance",
            "nextHopIpAddress": hop,
            "hasBgpOverride": false
        }
    })
}

fn settings(arm: &ArmServer, tables: Vec<RouteTableSettings>) -> AzureSettings {
    AzureSettings {
        route_tables: tables,
        public_ip_id: pip(),
        arm_endpoint: arm.base.clone(),
        token: TokenSource::ManagedIdentity {
            endpoint: arm.base.clone(),
            client_id: None,
        },
        poll_interval_ms: 100,
    }
}

/// nva-a active: both routes of rt-backend point at it, its NIC holds the
/// public IP.
fn setup() -> (ArmServer, AzureClient, NvaSettings, NvaSettings) {
    let arm = ArmServer::start();
    arm.put_resource(
        &route("default"),
        route_body(&route("default"), "0.0.0.0/0", "10.20.0.11"),
    );
    arm.put_resource(
        &route("onprem"),
        route_body(&route("onprem"), "192.168.0.0/16", "10.20.0.11"),
    );
    arm.put_resource(&nic("nva-a-ext"), nic_body("nva-a-ext", true));
    arm.put_resource(&nic("nva-b-ext"), nic_body("nva-b-ext", false));
    let s = settings(
        &arm,
        vec![RouteTableSettings {
            id: rt("rt-backend"),
            routes: vec!["default".into(), "onprem".into()],
        }],
    );
    let client = AzureClient::new(s)
        .unwrap()
        .with_backoff(Duration::from_millis(50));
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

/// (method, path, status) of the requests other than token fetches and
/// polls.
fn writes_and_reads(arm: &ArmServer) -> Vec<(String, String, u16)> {
    arm.log()
        .into_iter()
        .filter(|r| !r.path.contains("/operations/") && !r.path.starts_with("/metadata/"))
        .map(|r| (r.method, r.path, r.status))
        .collect()
}

fn expect(v: Vec<(&str, String, u16)>) -> Vec<(String, String, u16)> {
    v.into_iter()
        .map(|(m, p, s)| (m.to_string(), p, s))
        .collect()
}

fn set_route(name: &str) -> Action {
    Action::SetRoute {
        route_id: route(name),
    }
}
fn detach(name: &str) -> Action {
    Action::DetachPublicIp {
        nic_id: nic(name),
        ip_config: "ipconfig1".into(),
    }
}
fn attach(name: &str) -> Action {
    Action::AttachPublicIp {
        nic_id: nic(name),
        ip_config: "ipconfig1".into(),
    }
}

fn pip_of(arm: &ArmServer, nic_name: &str) -> serde_json::Value {
    arm.resource(&nic(nic_name))["properties"]["ipConfigurations"][0]["properties"]
        ["publicIPAddress"]["id"]
        .clone()
}

#[test]
fn switch_moves_routes_then_the_public_ip_in_order() {
    let (arm, client, a, b) = setup();
    let plan = client.plan(Some(&a), &b);
    assert_eq!(
        plan,
        vec![
            set_route("default"),
            set_route("onprem"),
            detach("nva-a-ext"),
            attach("nva-b-ext")
        ],
        "routes first, then the public IP"
    );
    let rt_ = runtime();
    rt_.block_on(async {
        for action in &plan {
            client.execute(action, &b).await.unwrap();
        }
    });
    // ARM answers an update with 200 (201 is for a creation).
    assert_eq!(
        writes_and_reads(&arm),
        expect(vec![
            ("GET", route("default"), 200),
            ("PUT", route("default"), 200),
            ("GET", route("onprem"), 200),
            ("PUT", route("onprem"), 200),
            ("GET", nic("nva-a-ext"), 200),
            ("PUT", nic("nva-a-ext"), 200),
            ("GET", nic("nva-b-ext"), 200),
            ("PUT", nic("nva-b-ext"), 200),
        ])
    );

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
    // Each write waited for its operation, first after the PUT's
    // Retry-After (1 s here).
    for put in log.iter().filter(|r| r.method == "PUT") {
        let poll = log
            .iter()
            .find(|r| r.path.contains("/operations/") && r.at > put.at)
            .expect("a poll");
        assert!(
            poll.at.duration_since(put.at) >= Duration::from_millis(950),
            "Retry-After of the PUT honoured"
        );
    }
    assert_eq!(
        log.iter()
            .filter(|r| r.path.contains("/operations/"))
            .count(),
        4
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
    // The read-only fields went back as read; ARM keeps its own.
    let stored = arm.resource(&nic("nva-b-ext"));
    assert_eq!(stored["properties"]["provisioningState"], "Succeeded");
    assert_eq!(stored["properties"]["macAddress"], "00-0D-3A-2B-4C-5D");
    assert_eq!(
        stored["properties"]["virtualMachine"]["id"],
        "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/nva-b-ext-vm"
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
    // changed it meanwhile), 500 on the new NIC's read, 503 on a poll.
    arm.inject(Fault::new("PUT", "routes/default", 429).retry_after(1));
    arm.inject(Fault::new("PUT", "nva-a-ext", 412));
    arm.inject(Fault::new("GET", "nva-b-ext", 500));
    arm.inject(Fault::new("GET", "/operations/", 503));
    let started = Instant::now();
    runtime().block_on(async {
        for action in client.plan(Some(&a), &b) {
            client.execute(&action, &b).await.unwrap();
        }
    });
    assert_eq!(
        writes_and_reads(&arm),
        expect(vec![
            ("GET", route("default"), 200),
            ("PUT", route("default"), 429),
            ("PUT", route("default"), 200),
            ("GET", route("onprem"), 200),
            ("PUT", route("onprem"), 200),
            ("GET", nic("nva-a-ext"), 200),
            ("PUT", nic("nva-a-ext"), 412),
            ("GET", nic("nva-a-ext"), 200),
            ("PUT", nic("nva-a-ext"), 200),
            ("GET", nic("nva-b-ext"), 500),
            ("GET", nic("nva-b-ext"), 200),
            ("PUT", nic("nva-b-ext"), 200),
        ])
    );
    let log = arm.log();
    let writes: Vec<_> = log
        .iter()
        .filter(|r| r.path == route("default") && r.method == "PUT")
        .collect();
    assert!(
        writes[1].at.duration_since(writes[0].at) >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    let polls: Vec<u16> = log
        .iter()
        .filter(|r| r.path.contains("/operations/"))
        .map(|r| r.status)
        .collect();
    assert_eq!(polls[..2], [503, 200], "a poll's 5xx is retried");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(pip_of(&arm, "nva-b-ext"), pip());
    let state = arm.resource(&route("default"));
    assert_eq!(state["properties"]["nextHopIpAddress"], "10.20.0.12");
}

/// An identity allowed to write the routes and NICs but not to read the
/// operations: the poll answers 403 (no `status`); waiting cannot help.
#[test]
fn a_refused_poll_fails_at_once() {
    let (arm, client, _, b) = setup();
    arm.inject(Fault::new("GET", "/operations/", 403).error(
        "AuthorizationFailed",
        "The client 'fo-1' does not have authorization to perform action 'Microsoft.Network/locations/operations/read'.",
    ));
    arm.inject(Fault::new("GET", "/operations/", 404).error("NotFound", "no such operation"));
    let rt_ = runtime();
    for (code, name) in [("403", "default"), ("404", "onprem")] {
        let started = Instant::now();
        let e = rt_
            .block_on(client.execute(&set_route(name), &b))
            .unwrap_err()
            .to_string();
        let took = started.elapsed();
        println!("poll {code}: failed after {:.2} s: {e}", took.as_secs_f64());
        assert!(e.contains(code), "{e}");
        assert!(e.contains("/operations/"), "names the operation URL: {e}");
        assert!(e.contains(&route(name)), "names the resource: {e}");
        // The PUT's Retry-After (1 s) and one poll, not the 600 s timeout.
        assert!(took < Duration::from_secs(60), "{took:?}");
    }
    let log = arm.log();
    assert!(log[log.len() - 1].path.contains("/operations/"));
    let e403 = log.iter().filter(|r| r.status == 403).count();
    assert_eq!(e403, 1, "polled once, not again");
}

#[test]
fn failed_and_canceled_operations_are_errors() {
    let (arm, client, a, b) = setup();
    let rt_ = runtime();
    arm.end_next_write("routes/default", Outcome::Failed);
    let e = rt_
        .block_on(client.execute(&set_route("default"), &b))
        .unwrap_err();
    let e = e.to_string();
    println!("Failed: {e}");
    assert!(
        e.contains("ended Failed") && e.contains("InternalServerError"),
        "{e}"
    );
    assert_eq!(
        arm.resource(&route("default"))["properties"]["provisioningState"],
        "Failed"
    );
    // Run again: the values are right, the state Failed: put back as it
    // is, which repairs it.
    arm.clear_log();
    rt_.block_on(client.execute(&set_route("default"), &b))
        .unwrap();
    assert_eq!(
        writes_and_reads(&arm),
        expect(vec![
            ("GET", route("default"), 200),
            ("PUT", route("default"), 200)
        ])
    );
    assert_eq!(
        arm.resource(&route("default"))["properties"]["provisioningState"],
        "Succeeded"
    );

    // A canceled write is rolled back and reported.
    arm.end_next_write("nva-a-ext", Outcome::Canceled);
    let e = rt_
        .block_on(client.execute(&detach("nva-a-ext"), &a))
        .unwrap_err()
        .to_string();
    println!("Canceled: {e}");
    assert!(e.contains("ended Canceled"), "{e}");
    assert_eq!(pip_of(&arm, "nva-a-ext"), pip(), "rolled back");

    // The same through Location polls: 202 while running, the error when
    // failed, 200 when done.
    arm.use_location(true);
    arm.end_next_write("nva-a-ext", Outcome::Failed);
    let e = rt_
        .block_on(client.execute(&detach("nva-a-ext"), &a))
        .unwrap_err()
        .to_string();
    println!("Failed (Location): {e}");
    assert!(e.contains("400") && e.contains("/operationResults/"), "{e}");
    arm.set_timing(1, Duration::from_millis(1500));
    arm.clear_log();
    rt_.block_on(client.execute(&set_route("onprem"), &b))
        .unwrap();
    let polls: Vec<u16> = arm
        .log()
        .iter()
        .filter(|r| r.path.contains("/operationResults/"))
        .map(|r| r.status)
        .collect();
    assert_eq!(polls, [202, 200]);
}

/// A re-read that finds the write already done but the resource still
/// `Updating` (a leader that died mid-switch, someone else's write) waits
/// until it settles before calling it done.
#[test]
fn a_resource_still_updating_is_waited_for() {
    let (arm, client, _, b) = setup();
    arm.put_resource(
        &route("default"),
        route_body(&route("default"), "0.0.0.0/0", "10.20.0.12"),
    );
    arm.begin_foreign_write(&route("default"), Duration::from_millis(1500));
    let started = Instant::now();
    runtime()
        .block_on(client.execute(&set_route("default"), &b))
        .unwrap();
    let took = started.elapsed();
    println!("waited {:.2} s for Updating", took.as_secs_f64());
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    let log = arm.log();
    assert!(
        log.iter().all(|r| r.method == "GET"),
        "already done: no PUT"
    );
    assert!(log.iter().filter(|r| r.path == route("default")).count() >= 2);
    assert_eq!(
        arm.resource(&route("default"))["properties"]["provisioningState"],
        "Succeeded"
    );
}

/// A route of a table on which another operation runs: ARM answers 409
/// AnotherOperationInProgress; the provider waits and writes again.
#[test]
fn another_operation_in_progress_is_waited_for() {
    let (arm, client, _, b) = setup();
    arm.begin_foreign_write(&route("onprem"), Duration::from_millis(800));
    let started = Instant::now();
    runtime()
        .block_on(client.execute(&set_route("default"), &b))
        .unwrap();
    println!(
        "409 then done after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let seen = writes_and_reads(&arm);
    assert_eq!(
        seen[..2],
        expect(vec![
            ("GET", route("default"), 200),
            ("PUT", route("default"), 409),
        ])[..]
    );
    assert_eq!(
        seen.last().unwrap(),
        &("PUT".to_string(), route("default"), 200)
    );
    assert_eq!(
        arm.resource(&route("default"))["properties"]["nextHopIpAddress"],
        "10.20.0.12"
    );
    // An injected 409 with Retry-After, too.
    arm.inject(
        Fault::new("PUT", "routes/onprem", 409)
            .retry_after(1)
            .error(
                "AnotherOperationInProgress",
                "Another operation on this or dependent resource is in progress.",
            ),
    );
    runtime()
        .block_on(client.execute(&set_route("onprem"), &b))
        .unwrap();
    // Any other 409 is an error.
    arm.inject(Fault::new("PUT", "nva-a-ext", 409).error("InUseSubnetCannotBeDeleted", "no"));
    let e = runtime()
        .block_on(client.execute(&detach("nva-a-ext"), &b))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("409") && e.contains("InUseSubnetCannotBeDeleted"),
        "{e}"
    );
}

#[test]
fn a_public_ip_in_use_is_reported() {
    let (arm, client, _, b) = setup();
    // Attach to nva-b while nva-a still holds the public IP.
    let e = runtime()
        .block_on(client.execute(&attach("nva-b-ext"), &b))
        .unwrap_err()
        .to_string();
    println!("{e}");
    assert!(
        e.contains("400") && e.contains("PublicIPAddressInUse"),
        "{e}"
    );
    assert!(pip_of(&arm, "nva-b-ext").is_null());
}

/// IMDS answers 410 while it is updated, 429 when throttled, 404 while an
/// identity is assigned, 5xx: the token fetch retries with backoff.
#[test]
fn the_token_fetch_is_retried() {
    let (arm, client, _, b) = setup();
    for status in [410, 429, 500, 404] {
        arm.inject(Fault::new("GET", "/metadata/identity", status));
    }
    runtime()
        .block_on(client.execute(&set_route("default"), &b))
        .unwrap();
    let tokens: Vec<u16> = arm
        .log()
        .iter()
        .filter(|r| r.path.starts_with("/metadata/"))
        .map(|r| r.status)
        .collect();
    assert_eq!(tokens, [410, 429, 500, 404, 200]);
    // Backoff: 50, 100, 200, 400 ms (scaled down from 1 s).
    let log = arm.log();
    let t: Vec<Instant> = log
        .iter()
        .filter(|r| r.path.starts_with("/metadata/"))
        .map(|r| r.at)
        .collect();
    assert!(t[4].duration_since(t[0]) >= Duration::from_millis(700));

    // A refusal that waiting does not cure (400: no such identity) is an
    // error at once.
    let (arm, client, _, b) = setup();
    arm.inject(
        Fault::new("GET", "/metadata/identity", 400).error("invalid_request", "Identity not found"),
    );
    let e = runtime()
        .block_on(client.execute(&set_route("default"), &b))
        .unwrap_err();
    assert!(matches!(e, AzureError::Token(_)), "{e}");
    let e = e.to_string();
    assert!(e.contains("400") && e.contains("Identity not found"), "{e}");
    assert_eq!(arm.log().len(), 1);
}

/// A user-assigned identity is named by its client id; the token is for
/// the configured ARM endpoint (sovereign clouds), from IMDS and from
/// Entra ID.
#[test]
fn the_identity_and_the_audience_follow_the_settings() {
    let (arm, _, _, b) = setup();
    let mut s = settings(
        &arm,
        vec![RouteTableSettings {
            id: rt("rt-backend"),
            routes: vec!["default".into()],
        }],
    );
    s.token = TokenSource::ManagedIdentity {
        endpoint: arm.base.clone(),
        client_id: Some(UAMI.into()),
    };
    let client = AzureClient::new(s.clone()).unwrap();
    runtime()
        .block_on(client.execute(&set_route("default"), &b))
        .unwrap();
    let q = arm
        .log()
        .into_iter()
        .find(|r| r.path.starts_with("/metadata/"))
        .unwrap()
        .query;
    println!("IMDS query: {q}");
    assert!(q.contains("api-version=2018-02-01"), "{q}");
    assert!(q.contains(&format!("client_id={UAMI}")), "{q}");
    let resource = format!("{}/", arm.base)
        .replace(':', "%3A")
        .replace('/', "%2F");
    assert!(q.contains(&format!("resource={resource}")), "{q}");

    // A service principal asks Entra ID for the endpoint's .default scope.
    let secret = std::env::temp_dir().join(format!("nva-azure-secret-{}", std::process::id()));
    std::fs::write(&secret, "s3cret\n").unwrap();
    s.token = TokenSource::ServicePrincipal {
        authority: arm.base.clone(),
        tenant_id: "tenant-1".into(),
        client_id: UAMI.into(),
        secret_file: secret.clone(),
    };
    arm.clear_log();
    let client = AzureClient::new(s).unwrap();
    runtime()
        .block_on(client.execute(&set_route("default"), &b))
        .unwrap();
    std::fs::remove_file(&secret).unwrap();
    let form = arm
        .log()
        .into_iter()
        .find(|r| r.path == "/tenant-1/oauth2/v2.0/token")
        .unwrap()
        .raw_body;
    println!("token form: {form}");
    let scope = format!("{}/.default", arm.base)
        .replace(':', "%3A")
        .replace('/', "%2F");
    assert!(form.contains(&format!("scope={scope}")), "{form}");
    assert!(form.contains("client_secret=s3cret&") || form.ends_with("client_secret=s3cret"));
}

/// An HTTP proxy that forwards requests (absolute-form targets) and records
/// their request lines.
struct RecordingProxy {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RecordingProxy {
    fn start() -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = forward(conn, &s);
                });
            }
        });
        RecordingProxy { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn forward(mut client: TcpStream, seen: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or_default().to_string();
    seen.lock().unwrap().push(line.clone());
    let target = line.split_whitespace().nth(1).unwrap_or_default();
    let authority = target
        .strip_prefix("http://")
        .and_then(|t| t.split('/').next())
        .unwrap_or_default()
        .to_string();
    let mut upstream = TcpStream::connect(authority)?;
    upstream.write_all(&head)?;
    let (mut c, mut u) = (client.try_clone()?, upstream.try_clone()?);
    std::thread::spawn(move || std::io::copy(&mut c, &mut u));
    std::io::copy(&mut upstream, &mut client)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// Set in the child process of `imds_is_not_reached_through_the_proxy`.
const IMDS_CHILD: &str = "NVA_TEST_IMDS_CHILD";

/// IMDS is reached directly, whatever HTTP_PROXY says (ARM requests do go
/// through the proxy). The client runs in a child process (this same test,
/// re-run with IMDS_CHILD set) whose environment names a proxy, so that no
/// other test sees it.
#[test]
fn imds_is_not_reached_through_the_proxy() {
    if std::env::var_os(IMDS_CHILD).is_some() {
        return imds_client_behind_a_proxy();
    }
    let proxy = RecordingProxy::start();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "imds_is_not_reached_through_the_proxy",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.env(IMDS_CHILD, "1");
    for v in [
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
        "REQUEST_METHOD",
    ] {
        cmd.env_remove(v);
    }
    let out = cmd
        .env("HTTP_PROXY", &proxy.url)
        .env("http_proxy", &proxy.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child: {stdout}\n{stderr}"
    );
    let seen = proxy.seen();
    println!("through the proxy: {seen:#?}");
    assert!(
        seen.iter().any(|l| l.contains("/routeTables/")),
        "ARM requests use the proxy (so the child saw it): {seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("/metadata/")),
        "IMDS must not: {seen:?}"
    );
}

/// The child's part: one switch step through a client built while
/// HTTP_PROXY names the recording proxy; IMDS answered once, directly.
fn imds_client_behind_a_proxy() {
    assert!(std::env::var("HTTP_PROXY").is_ok());
    let (arm, client, _, b) = setup();
    runtime()
        .block_on(client.execute(&set_route("default"), &b))
        .unwrap();
    let log = arm.log();
    assert_eq!(
        log.iter()
            .filter(|r| r.path.starts_with("/metadata/") && r.status == 200)
            .count(),
        1
    );
}

/// A switch of 2 routes and 2 NICs, one action after the other (as before)
/// and in parallel ([`AzureClient::switch`]): each write waits for the
/// PUT's Retry-After before its first poll (1 s here, 10 s in Azure).
#[test]
fn the_switch_runs_in_parallel_and_its_duration_is_reported() {
    for two_tables in [true, false] {
        let (arm, _, a, b) = setup();
        let tables = if two_tables {
            // The case: routes in different tables go at once.
            arm.put_resource(
                &route_in("rt-gateway", "onprem"),
                route_body(
                    &route_in("rt-gateway", "onprem"),
                    "192.168.0.0/16",
                    "10.20.0.11",
                ),
            );
            vec![
                RouteTableSettings {
                    id: rt("rt-backend"),
                    routes: vec!["default".into()],
                },
                RouteTableSettings {
                    id: rt("rt-gateway"),
                    routes: vec!["onprem".into()],
                },
            ]
        } else {
            vec![RouteTableSettings {
                id: rt("rt-backend"),
                routes: vec!["default".into(), "onprem".into()],
            }]
        };
        let client = AzureClient::new(settings(&arm, tables))
            .unwrap()
            .with_backoff(Duration::from_millis(50));
        let rt_ = runtime();

        // One action after the other: a -> b.
        let started = Instant::now();
        rt_.block_on(async {
            for action in client.plan(Some(&a), &b) {
                client.execute(&action, &b).await.unwrap();
            }
        });
        let serial = started.elapsed();

        // In parallel: b -> a, with a fence before every action.
        arm.clear_log();
        let fences = std::sync::atomic::AtomicU32::new(0);
        let plan = client.plan(Some(&b), &a);
        let started = Instant::now();
        rt_.block_on(client.switch(&plan, &a, || async {
            fences.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), AzureError>(())
        }))
        .unwrap();
        let parallel = started.elapsed();
        let label = if two_tables {
            "2 routes in 2 tables + 2 NICs"
        } else {
            "2 routes in 1 table + 2 NICs"
        };
        println!(
            "switch of {label}, Retry-After: 1 s: one by one {:.2} s, in parallel {:.2} s",
            serial.as_secs_f64(),
            parallel.as_secs_f64()
        );
        assert_eq!(fences.into_inner(), 4, "a fence before every action");

        let log = arm.log();
        let first = |method: &str, path: &str| {
            log.iter()
                .find(|r| r.method == method && r.path == path)
                .unwrap_or_else(|| panic!("no {method} {path}"))
                .at
        };
        let first_poll = log
            .iter()
            .find(|r| r.path.contains("/operations/"))
            .unwrap()
            .at;
        // Issued together: the first route and the detach before any
        // operation was polled (a poll comes 1 s after its PUT).
        assert!(first("PUT", &route("default")) < first_poll);
        assert!(first("PUT", &nic("nva-b-ext")) < first_poll);
        if two_tables {
            assert!(first("PUT", &route_in("rt-gateway", "onprem")) < first_poll);
        }
        // Never two operations on one table, never the public IP on two
        // NICs (the server answers 409 / 400).
        assert!(
            log.iter().all(|r| r.status < 400),
            "{:?}",
            log.iter()
                .map(|r| (&r.method, &r.path, r.status))
                .collect::<Vec<_>>()
        );
        // Each write waits >= 1 s: 4 one after the other, 2 in a row at
        // most in parallel.
        assert!(serial >= Duration::from_secs(4), "{serial:?}");
        assert!(parallel >= Duration::from_secs(2), "{parallel:?}");
        assert_eq!(pip_of(&arm, "nva-a-ext"), pip());
        assert!(pip_of(&arm, "nva-b-ext").is_null());
        rt_.block_on(async {
            assert_eq!(
                client.active_nva(&[a.clone(), b.clone()]).await.unwrap(),
                Some(0)
            );
        });
    }
}

/// A fence that fails (leadership lost) stops the switch before any write.
#[test]
fn a_failed_fence_stops_the_switch() {
    let (arm, client, a, b) = setup();
    let plan = client.plan(Some(&a), &b);
    let e = runtime()
        .block_on(client.switch(&plan, &b, || async {
            Err::<(), AzureError>(AzureError::Resource("fenced".into()))
        }))
        .unwrap_err();
    assert_eq!(e.to_string(), "fenced");
    assert!(arm.log().iter().all(|r| r.method != "PUT"));
}
