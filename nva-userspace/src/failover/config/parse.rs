//! The failover config file read into [`FailoverConfig`]: serde reads the
//! `Raw*` tables (with spans), then every value is validated and all
//! problems are reported at `FILE:LINE:COL`.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{
    AzureSettings, DaemonSettings, FailoverConfig, LinuxRoute, LinuxVip, NvaSettings,
    ProbeSettings, ProbeTarget, Provider, RouteTableSettings, SwitchSettings, TokenSource, Via,
    DEFAULT_ELECTION_PATH, DEFAULT_METRICS_LISTEN, MAIN_TABLE,
};
use crate::configfile::{self, parse_addr_with_len, Checker, ConfigError};
use crate::policy::model::Cidr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    daemon: Spanned<RawDaemon>,
    #[serde(default)]
    probe: Option<RawProbe>,
    switch: Option<RawSwitch>,
    #[serde(default)]
    nvas: Vec<Spanned<RawNva>>,
    linux: Option<RawLinux>,
    azure: Option<Spanned<RawAzure>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzure {
    #[serde(default)]
    route_tables: Vec<RawRouteTable>,
    public_ip_id: Option<Spanned<String>>,
    arm_endpoint: Option<String>,
    token: Option<Spanned<String>>,
    imds_endpoint: Option<String>,
    authority: Option<String>,
    tenant_id: Option<String>,
    client_id: Option<Spanned<String>>,
    secret_file: Option<String>,
    poll_interval_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteTable {
    id: String,
    routes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    id: Option<Spanned<String>>,
    zookeeper: Option<Spanned<String>>,
    election_path: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    session_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    interval_ms: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwitch {
    provider: Option<Spanned<String>>,
    min_dwell_s: Option<Spanned<i64>>,
    preempt: Option<bool>,
    max_failovers_per_hour: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNva {
    name: Spanned<String>,
    #[serde(default)]
    netns: String,
    health_url: Option<Spanned<String>>,
    tcp_probe: Option<Spanned<String>>,
    internal_ip: Spanned<String>,
    external_ip: Option<Spanned<String>>,
    nic_id: Option<String>,
    ip_config: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLinux {
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    vips: Vec<RawVip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    address: Spanned<String>,
    dev: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    netns: String,
    table: Option<Spanned<i64>>,
    prefix: Spanned<String>,
    via: Spanned<String>,
}

/// What `daemon.metrics_listen` and `tcp_probe` look like, for errors.
const ADDR_HINT: &str = "like \"10.0.0.1:9090\"";

/// `azure.token`.
#[derive(Clone, Copy)]
enum TokenKind {
    ManagedIdentity,
    ServicePrincipal,
}

/// Parses "http://HOST:PORT/PATH" (HOST an IP address: probes must not
/// depend on DNS).
fn parse_health_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("health_url {url:?} must start with http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = authority
        .parse::<SocketAddr>()
        .or_else(|_| format!("{authority}:80").parse::<SocketAddr>())
        .map_err(|_| {
            format!("health_url {url:?}: {authority:?} is not an IP address with an optional port")
        })?;
    Ok((addr, path))
}

/// An Entra ID client id: a GUID (8-4-4-4-12 hex digits).
fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn azure_settings(cx: &mut Checker, a: &Spanned<RawAzure>) -> Option<AzureSettings> {
    let r = a.get_ref();
    let client_id = match &r.client_id {
        Some(c) if is_guid(c.get_ref()) => Some(c.get_ref().clone()),
        Some(c) => {
            cx.err(
                c.span(),
                format!(
                    "azure.client_id = {:?} is not a client id (a GUID such as 00000000-0000-0000-0000-000000000000)",
                    c.get_ref()
                ),
            );
            None
        }
        None => None,
    };
    let client_id_bad = r.client_id.is_some() && client_id.is_none();
    let kind = match &r.token {
        None => Some(TokenKind::ManagedIdentity),
        Some(t) => cx.one_of(
            "azure.token",
            t,
            &[
                ("managed-identity", TokenKind::ManagedIdentity),
                ("service-principal", TokenKind::ServicePrincipal),
            ],
        ),
    };
    let token_span = r.token.as_ref().map_or(0..0, Spanned::span);
    let token = match kind {
        Some(TokenKind::ManagedIdentity) => Some(TokenSource::ManagedIdentity {
            endpoint: r
                .imds_endpoint
                .clone()
                .unwrap_or_else(|| "http://169.254.169.254".into()),
            client_id,
        })
        .filter(|_| !client_id_bad),
        Some(TokenKind::ServicePrincipal) => match (&r.tenant_id, client_id, &r.secret_file) {
            (Some(t), Some(c), Some(f)) => Some(TokenSource::ServicePrincipal {
                authority: r
                    .authority
                    .clone()
                    .unwrap_or_else(|| "https://login.microsoftonline.com".into()),
                tenant_id: t.clone(),
                client_id: c,
                secret_file: f.into(),
            }),
            _ if client_id_bad => None,
            _ => {
                cx.err(
                    token_span,
                    "azure.token = \"service-principal\" needs tenant_id, client_id and secret_file",
                );
                None
            }
        },
        None => None,
    };
    let public_ip_id =
        match cx.required(&r.public_ip_id, a.span(), "azure.public_ip_id is required") {
            Some(p) if p.get_ref().starts_with("/subscriptions/") => Some(p.get_ref().clone()),
            Some(p) => {
                cx.err(
                    p.span(),
                    "azure.public_ip_id must be an ARM resource id (/subscriptions/...)",
                );
                None
            }
            None => None,
        };
    let poll_interval_ms = cx.int_or(
        "azure.poll_interval_ms",
        r.poll_interval_ms.as_ref(),
        1000,
        10..=60_000,
    );
    Some(AzureSettings {
        route_tables: r
            .route_tables
            .iter()
            .map(|t| RouteTableSettings {
                id: t.id.clone(),
                routes: t.routes.clone(),
            })
            .collect(),
        public_ip_id: public_ip_id?,
        arm_endpoint: r
            .arm_endpoint
            .clone()
            .unwrap_or_else(|| "https://management.azure.com".into()),
        token: token?,
        poll_interval_ms,
    })
}

pub fn load_failover_config(path: &Path) -> Result<FailoverConfig, Vec<ConfigError>> {
    let text = configfile::read(path)?;
    parse_failover_config(&path.display().to_string(), &text)
}

pub fn parse_failover_config(file: &str, text: &str) -> Result<FailoverConfig, Vec<ConfigError>> {
    let raw: RawFile = configfile::parse(file, text)?;
    let mut cx = Checker::new(file, text);
    let d = raw.daemon.get_ref();
    let id = match cx.required(
        &d.id,
        raw.daemon.span(),
        "daemon.id is required (unique per daemon)",
    ) {
        Some(v) if !v.get_ref().trim().is_empty() => v.get_ref().clone(),
        Some(v) => {
            cx.err(v.span(), "daemon.id must not be empty");
            String::new()
        }
        None => String::new(),
    };
    let zookeeper = d.zookeeper.as_ref().map(|z| {
        let ok = z.get_ref().split(',').all(|h| {
            h.trim()
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        });
        if !ok || z.get_ref().trim().is_empty() {
            cx.err(
                z.span(),
                format!(
                    "daemon.zookeeper = {:?} must list host:port pairs separated by commas",
                    z.get_ref()
                ),
            );
        }
        z.get_ref().clone()
    });
    let election_path = match &d.election_path {
        Some(p) if p.get_ref().starts_with('/') && !p.get_ref().ends_with('/') => {
            p.get_ref().clone()
        }
        Some(p) => {
            cx.err(p.span(), format!("daemon.election_path = {:?} must be an absolute ZooKeeper path without a trailing /", p.get_ref()));
            DEFAULT_ELECTION_PATH.into()
        }
        None => DEFAULT_ELECTION_PATH.into(),
    };
    let metrics_listen = match &d.metrics_listen {
        Some(v) => cx.socket_addr("daemon.metrics_listen", v, ADDR_HINT),
        None => DEFAULT_METRICS_LISTEN.parse().ok(),
    };
    let session_timeout_ms = cx.int_or(
        "daemon.session_timeout_ms",
        d.session_timeout_ms.as_ref(),
        2000,
        400..=60_000,
    );

    let p = raw.probe.as_ref();
    let interval_ms = cx.int_or(
        "probe.interval_ms",
        p.and_then(|p| p.interval_ms.as_ref()),
        1000,
        10..=600_000,
    );
    let timeout_ms = cx.int_or(
        "probe.timeout_ms",
        p.and_then(|p| p.timeout_ms.as_ref()),
        interval_ms.saturating_mul(4) / 5,
        1..=600_000,
    );
    if let Some(t) = p.and_then(|p| p.timeout_ms.as_ref()) {
        if timeout_ms > interval_ms {
            cx.err(t.span(), format!("probe.timeout_ms = {timeout_ms} is longer than probe.interval_ms = {interval_ms}"));
        }
    }
    let fall = cx.int_or("probe.fall", p.and_then(|p| p.fall.as_ref()), 3, 1..=100);
    let rise = cx.int_or("probe.rise", p.and_then(|p| p.rise.as_ref()), 2, 1..=100);

    let s = raw.switch.as_ref();
    let provider = s
        .and_then(|s| s.provider.as_ref())
        .map_or(Provider::Linux, |v| {
            cx.one_of(
                "switch.provider",
                v,
                &[("linux", Provider::Linux), ("azure", Provider::Azure)],
            )
            .unwrap_or(Provider::Linux)
        });
    let min_dwell_s = cx.int_or(
        "switch.min_dwell_s",
        s.and_then(|s| s.min_dwell_s.as_ref()),
        30,
        0..=86_400,
    );
    let max_failovers_per_hour = cx.int_or(
        "switch.max_failovers_per_hour",
        s.and_then(|s| s.max_failovers_per_hour.as_ref()),
        6,
        1..=3600,
    );
    let preempt = s.and_then(|s| s.preempt).unwrap_or(false);
    let azure = match (&raw.azure, provider) {
        (Some(a), _) => azure_settings(&mut cx, a),
        (None, Provider::Azure) => {
            cx.err(0..0, "switch.provider = \"azure\" needs an [azure] table");
            None
        }
        (None, Provider::Linux) => None,
    };

    let mut nvas = Vec::new();
    for n in &raw.nvas {
        let r = n.get_ref();
        let name = r.name.get_ref().clone();
        if name.is_empty() || nvas.iter().any(|x: &NvaSettings| x.name == name) {
            cx.err(
                r.name.span(),
                format!("nvas: name {name:?} must be non-empty and unique"),
            );
        }
        let probe = match (&r.health_url, &r.tcp_probe) {
            (Some(u), None) => match parse_health_url(u.get_ref()) {
                Ok((addr, path)) => Some(ProbeTarget::Http { addr, path }),
                Err(m) => {
                    cx.err(u.span(), m);
                    None
                }
            },
            (None, Some(t)) => cx
                .socket_addr("tcp_probe", t, ADDR_HINT)
                .map(ProbeTarget::Tcp),
            _ => {
                cx.err(
                    n.span(),
                    format!("nva {name:?}: set exactly one of health_url and tcp_probe"),
                );
                None
            }
        };
        let internal_ip = cx.ip("internal_ip", &r.internal_ip);
        let external_ip = r.external_ip.as_ref().and_then(|e| cx.ip("external_ip", e));
        if provider == Provider::Azure && (r.nic_id.is_none() || r.ip_config.is_none()) {
            cx.err(
                n.span(),
                format!("nva {name:?}: switch.provider = \"azure\" needs nic_id and ip_config"),
            );
        }
        if let (Some(probe), Some(internal_ip)) = (probe, internal_ip) {
            nvas.push(NvaSettings {
                name,
                probe,
                internal_ip,
                external_ip,
                nic_id: r.nic_id.clone(),
                ip_config: r.ip_config.clone(),
                netns: r.netns.clone(),
            });
        }
    }
    if raw.nvas.len() < 2 {
        cx.err(
            0..0,
            "at least two [[nvas]] are needed: an active one and a standby",
        );
    }

    let mut linux_routes = Vec::new();
    for r in raw.linux.iter().flat_map(|l| &l.routes) {
        let table = cx.int_or(
            "linux.routes.table",
            r.table.as_ref(),
            MAIN_TABLE,
            1..=u32::MAX - 1,
        );
        let prefix = cx.check(r.prefix.span(), Cidr::parse(r.prefix.get_ref()));
        let via = cx.one_of(
            "via",
            &r.via,
            &[
                ("internal_ip", Via::InternalIp),
                ("external_ip", Via::ExternalIp),
            ],
        );
        if via == Some(Via::ExternalIp) {
            if let Some(n) = raw.nvas.iter().find(|n| n.get_ref().external_ip.is_none()) {
                cx.err(
                    r.via.span(),
                    format!(
                        "via = \"external_ip\" but nva {:?} has no external_ip",
                        n.get_ref().name.get_ref()
                    ),
                );
            }
        }
        if let (Some(prefix), Some(via)) = (prefix, via) {
            linux_routes.push(LinuxRoute {
                netns: r.netns.clone(),
                table,
                prefix,
                via,
            });
        }
    }
    let mut linux_vips = Vec::new();
    for v in raw.linux.iter().flat_map(|l| &l.vips) {
        // An address with its prefix length: host bits are the point here.
        let text = v.address.get_ref();
        match parse_addr_with_len(text) {
            Some((address, prefix_len)) => linux_vips.push(LinuxVip {
                address,
                prefix_len,
                dev: v.dev.clone(),
            }),
            None => cx.err(
                v.address.span(),
                format!("linux.vips address {text:?} must be an address with its prefix length, like \"10.10.0.100/24\""),
            ),
        }
    }
    if provider == Provider::Linux && linux_routes.is_empty() && cx.is_clean() {
        cx.err(
            0..0,
            "switch.provider = \"linux\" needs at least one [[linux.routes]]",
        );
    }

    cx.finish()?;
    Ok(FailoverConfig {
        daemon: DaemonSettings {
            id,
            zookeeper,
            election_path,
            metrics_listen: metrics_listen.expect("validated"),
            session_timeout_ms,
        },
        probe: ProbeSettings {
            interval_ms,
            timeout_ms,
            fall,
            rise,
        },
        switch: SwitchSettings {
            provider,
            min_dwell_s,
            preempt,
            max_failovers_per_hour,
        },
        nvas,
        linux_routes,
        linux_vips,
        azure,
    })
}
