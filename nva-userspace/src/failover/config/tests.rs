use super::*;

const EXAMPLE: &str = r#"
[daemon]
id = "fo-1"
zookeeper = "10.99.0.1:2181,10.99.0.2:2181,10.99.0.3:2181"
election_path = "/nva/failover"
metrics_listen = "127.0.0.1:9190"

[probe]
interval_ms = 100
timeout_ms = 80
fall = 3
rise = 2

[switch]
provider = "linux"
min_dwell_s = 30
preempt = false
max_failovers_per_hour = 6

[[nvas]]
name = "nva-a"
health_url = "http://10.99.1.11:9090/health"
internal_ip = "10.20.0.11"
external_ip = "10.10.0.11"

[[nvas]]
name = "nva-b"
tcp_probe = "10.99.1.12:9091"
internal_ip = "10.20.0.12"
external_ip = "10.10.0.12"

[[linux.routes]]
netns = "fabric"
table = 200
prefix = "198.51.100.0/24"
via = "internal_ip"

[[linux.routes]]
netns = "fabric"
table = 100
prefix = "10.30.0.0/24"
via = "external_ip"
"#;

#[test]
fn design_example_parses() {
    let c = parse_failover_config("f.toml", EXAMPLE).unwrap();
    assert_eq!(c.daemon.id, "fo-1");
    assert_eq!(c.probe.interval_ms, 100);
    assert_eq!(c.nvas.len(), 2);
    assert_eq!(
        c.nvas[0].probe,
        ProbeTarget::Http {
            addr: "10.99.1.11:9090".parse().unwrap(),
            path: "/health".into()
        }
    );
    assert_eq!(
        c.nvas[1].probe,
        ProbeTarget::Tcp("10.99.1.12:9091".parse().unwrap())
    );
    assert_eq!(c.linux_routes[1].via, Via::ExternalIp);
    assert_eq!(c.linux_routes[1].table, 100);
}

#[test]
fn shipped_example_parses() {
    let c = parse_failover_config(
        "failover-example.toml",
        include_str!("../../../../scripts/failover-example.toml"),
    )
    .unwrap();
    assert_eq!(c.nvas.len(), 2);
    assert_eq!(c.linux_routes.len(), 2);
}

#[test]
fn shipped_example_azure_section_parses() {
    // The commented [azure] section, uncommented, for an Azure pair.
    let example = include_str!("../../../../scripts/failover-example.toml");
    let (linux, azure) = example.split_once("# [azure]").unwrap();
    let azure: String = azure
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = "))
        .map(|l| format!("{}\n", l.replace('…', "s")))
        .collect();
    let text = linux
        .replace("provider = \"linux\"", "provider = \"azure\"")
        .replace(
            "internal_ip = \"10.20.0.11\"",
            "internal_ip = \"10.20.0.11\"\nnic_id = \"/subscriptions/s/networkInterfaces/a\"\nip_config = \"ipconfig1\"",
        )
        .replace(
            "internal_ip = \"10.20.0.12\"",
            "internal_ip = \"10.20.0.12\"\nnic_id = \"/subscriptions/s/networkInterfaces/b\"\nip_config = \"ipconfig1\"",
        )
        + "[azure]\n"
        + &azure;
    let c = parse_failover_config("failover-example.toml", &text).unwrap();
    let a = c.azure.unwrap();
    assert_eq!(
        a.token,
        TokenSource::ManagedIdentity {
            endpoint: "http://169.254.169.254".into(),
            client_id: Some("00000000-0000-0000-0000-000000000000".into()),
        }
    );
    assert_eq!(a.route_tables[0].routes, ["default"]);
}

#[test]
fn azure_settings() {
    let text = EXAMPLE
        .replace("provider = \"linux\"", "provider = \"azure\"")
        .replace(
            "external_ip = \"10.10.0.11\"",
            "external_ip = \"10.10.0.11\"\nnic_id = \"/subscriptions/s/networkInterfaces/a\"\nip_config = \"ipconfig1\"",
        )
        + "\n[azure]\nroute_tables = [{ id = \"/subscriptions/s/routeTables/rt\", routes = [\"default\"] }]\npublic_ip_id = \"/subscriptions/s/publicIPAddresses/pip\"\n";
    // nva-b lacks nic_id: refused with its position.
    let e = parse_failover_config("f.toml", &text).unwrap_err();
    assert!(
        e[0].to_string()
            .contains("nva \"nva-b\": switch.provider = \"azure\" needs nic_id and ip_config"),
        "{e:?}"
    );
    let text = text.replace(
        "external_ip = \"10.10.0.12\"",
        "external_ip = \"10.10.0.12\"\nnic_id = \"/subscriptions/s/networkInterfaces/b\"\nip_config = \"ipconfig1\"",
    );
    let c = parse_failover_config("f.toml", &text).unwrap();
    let a = c.azure.unwrap();
    assert_eq!(a.arm_endpoint, "https://management.azure.com");
    assert_eq!(
        a.token,
        TokenSource::ManagedIdentity {
            endpoint: "http://169.254.169.254".into(),
            client_id: None,
        }
    );
    // A user-assigned identity is named by its client id.
    let uami = text.replace(
        "[azure]\n",
        "[azure]\nclient_id = \"6b8e1f0a-3c1d-4b7e-9a4f-2d5c8e7f1a20\"\n",
    );
    let c = parse_failover_config("f.toml", &uami).unwrap();
    assert_eq!(
        c.azure.unwrap().token,
        TokenSource::ManagedIdentity {
            endpoint: "http://169.254.169.254".into(),
            client_id: Some("6b8e1f0a-3c1d-4b7e-9a4f-2d5c8e7f1a20".into()),
        }
    );
    let bad = text.replace("[azure]\n", "[azure]\nclient_id = \"my-identity\"\n");
    let e = parse_failover_config("f.toml", &bad).unwrap_err();
    let line = bad
        .lines()
        .position(|l| l.starts_with("client_id"))
        .unwrap()
        + 1;
    assert!(
        e[0].to_string().starts_with(&format!(
            "f.toml:{line}:13: azure.client_id = \"my-identity\" is not a client id"
        )),
        "{e:?}"
    );
    assert_eq!(a.route_tables[0].routes, ["default"]);
    let bad = text.replace("[azure]\n", "[azure]\ntoken = \"password\"\n");
    let e = parse_failover_config("f.toml", &bad).unwrap_err();
    assert!(
        e[0].message
            .contains("azure.token = \"password\" is not valid"),
        "{e:?}"
    );
}

#[test]
fn missing_keys_point_at_their_table() {
    let e = parse_failover_config("f.toml", &EXAMPLE.replace("id = \"fo-1\"\n", "")).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "f.toml:2:1: daemon.id is required (unique per daemon)"
    );
    let e = parse_failover_config("f.toml", &EXAMPLE.replace("id = \"fo-1\"", "id = \" \""))
        .unwrap_err();
    assert_eq!(e[0].to_string(), "f.toml:3:6: daemon.id must not be empty");
}

#[test]
fn errors_have_positions() {
    let bad = EXAMPLE
        .replace("fall = 3", "fall = 0")
        .replace(
            "prefix = \"198.51.100.0/24\"",
            "prefix = \"198.51.100.1/24\"",
        )
        .replace("provider = \"linux\"", "provider = \"gcp\"");
    let e: Vec<String> = parse_failover_config("f.toml", &bad)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("f.toml:11:8: probe.fall = 0 is out of range"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("f.toml:15:12: switch.provider = \"gcp\""),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("f.toml:35:10: 198.51.100.1/24 has host bits set"),
        "{e:?}"
    );
    let e = parse_failover_config("f.toml", "[daemon]\nid = \"x\"\ncolour = 1\n").unwrap_err();
    assert!(
        e[0].to_string()
            .starts_with("f.toml:3:1: unknown field `colour`"),
        "{e:?}"
    );
}
