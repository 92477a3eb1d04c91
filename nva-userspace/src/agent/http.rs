//! The agent's read-only HTTP endpoints (`agent.health_listen`): /health,
//! /status, /metrics; and the optional TCP probe port that accepts
//! connections only while healthy. Responses come from a snapshot refreshed
//! by the health checker and from the pinned counter maps, never from the
//! agent itself, so they stay fast while a reload runs.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use nva_common::{map_names as names, ForwardPath, NatCounters, PacketReason, RuleCounters};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::net::TcpListener;

use super::health::HealthReport;
use super::AgentState;
use crate::datapath::pin::PinLayout;
use crate::datapath::{
    open_pinned, read_counters, read_forward_counters, read_nat_counters, read_packet_counters,
};
use crate::http::exposition::{family, render, single, CONTENT_TYPE};
use crate::http::server::{reply, Limits};

/// What the endpoints serve. Published whole and never changed in place:
/// a request takes an `Arc` of it, not a copy of 131k rules.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub health: HealthReport,
    /// Shared between snapshots until a reload changes it.
    pub state: Arc<AgentState>,
    pub status: serde_json::Value,
    /// From the last conntrack sweep.
    pub conntrack: crate::conntrack::Summary,
    /// The sync service's counters (`[sync]` configured).
    pub sync: Option<Arc<crate::sync::service::SyncStats>>,
}

/// The current snapshot; writers publish a new `Arc`.
pub type Shared = Arc<RwLock<Arc<Snapshot>>>;

/// The snapshot in force now.
pub fn current(shared: &Shared) -> Arc<Snapshot> {
    shared.read().expect("snapshot lock").clone()
}

#[derive(Clone)]
struct Endpoints {
    shared: Shared,
    layout: PinLayout,
}

pub async fn serve(listener: TcpListener, shared: Shared, layout: PinLayout) {
    tracing::info!(listen = ?listener.local_addr().ok(), "HTTP endpoints /health /status /metrics");
    crate::http::server::serve(listener, router(shared, layout), Limits::default()).await;
}

fn router(shared: Shared, layout: PinLayout) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics_endpoint))
        .fallback(|| async { reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()) })
        .with_state(Endpoints { shared, layout })
}

/// Pretty JSON and a newline, as the CLI prints it.
fn json(code: StatusCode, value: &serde_json::Value) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(body) => reply(code, "application/json", body + "\n"),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{}\n", HttpError::from(e)),
        ),
    }
}

async fn health(State(e): State<Endpoints>) -> Response {
    let snap = current(&e.shared);
    let code = if snap.health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        code,
        &serde_json::json!({
            "healthy": snap.health.healthy,
            "failing": snap.health.failing(),
            "checks": snap.health.checks,
        }),
    )
}

async fn status(State(e): State<Endpoints>) -> Response {
    json(StatusCode::OK, &current(&e.shared).status)
}

async fn metrics_endpoint(State(e): State<Endpoints>) -> Response {
    let snap = current(&e.shared);
    // Reading 131k per-CPU counters is blocking syscalls: off the workers
    // that answer /health.
    let text = tokio::task::spawn_blocking(move || metrics(snap, &e.layout))
        .await
        .map_err(HttpError::from)
        .and_then(|r| r)
        .unwrap_or_else(|e| format!("# error: {e}\n"));
    reply(StatusCode::OK, CONTENT_TYPE, text)
}

/// Prometheus text exposition, read from the pinned maps.
pub fn metrics(snap: Arc<Snapshot>, layout: &PinLayout) -> Result<String, HttpError> {
    let packets = read_packet_counters(aya::maps::PerCpuArray::try_from(
        aya::maps::Map::PerCpuArray(open_pinned(layout, names::PACKET_COUNTERS)?),
    )?)?;
    let map = aya::maps::Map::ArrayOfMaps(open_pinned(layout, names::RULE_COUNTERS)?);
    let indices: Vec<u32> = snap.state.rules.iter().map(|r| r.counter).collect();
    let rules = read_counters(&map, &indices)?;
    let nat_map = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open_pinned(
        layout,
        names::NAT_COUNTERS,
    )?))?;
    let nat_indices: Vec<u32> = snap.state.nat.iter().map(|r| r.counter).collect();
    let nat = read_nat_counters(&nat_map, &nat_indices)?;
    let forwarded = read_forward_counters(aya::maps::PerCpuArray::try_from(
        aya::maps::Map::PerCpuArray(open_pinned(layout, names::FORWARD_COUNTERS)?),
    )?)?;
    Ok(render(AgentMetrics {
        snap,
        packets,
        rules,
        nat,
        forwarded,
    })?)
}

/// One scrape's values: the snapshot and the counters read for it.
struct AgentMetrics {
    snap: Arc<Snapshot>,
    /// Indexed by `PacketReason`.
    packets: Vec<u64>,
    /// In the order of `snap.state.rules`.
    rules: Vec<RuleCounters>,
    /// In the order of `snap.state.nat`.
    nat: Vec<NatCounters>,
    /// Indexed by `ForwardPath`.
    forwarded: Vec<u64>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl Collector for AgentMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let snap = &self.snap;
        family(
            &mut enc,
            "nva_packets",
            "Packets seen by the XDP program, by verdict and reason.",
            MetricType::Counter,
            PacketReason::ALL.iter().map(|r| {
                (
                    [("verdict", r.verdict()), ("reason", r.name())],
                    ConstCounter::new(self.packets.get(*r as usize).copied().unwrap_or(0)),
                )
            }),
        )?;
        family(
            &mut enc,
            "nva_forwarded",
            "Allowed packets of flows through the NVA, by who forwarded them (path: xdp, the program itself; kernel, passed to Linux) and why (reason).",
            MetricType::Counter,
            ForwardPath::ALL.iter().map(|p| {
                (
                    [("path", p.path()), ("reason", p.reason())],
                    ConstCounter::new(self.forwarded.get(*p as usize).copied().unwrap_or(0)),
                )
            }),
        )?;
        let rule_names = || snap.state.rules.iter().map(|r| [("rule", r.name.as_str())]);
        family(
            &mut enc,
            "nva_rule_packets",
            "Packets matched by each rule.",
            MetricType::Counter,
            rule_names().zip(self.rules.iter().map(|c| ConstCounter::new(c.packets))),
        )?;
        family(
            &mut enc,
            "nva_rule_bytes",
            "Bytes matched by each rule.",
            MetricType::Counter,
            rule_names().zip(self.rules.iter().map(|c| ConstCounter::new(c.bytes))),
        )?;
        let nat_names = || snap.state.nat.iter().map(|r| [("rule", r.name.as_str())]);
        family(
            &mut enc,
            "nva_nat_translations",
            "Flows translated by each [[nat]] entry.",
            MetricType::Counter,
            nat_names().zip(self.nat.iter().map(|c| ConstCounter::new(c.translations))),
        )?;
        family(
            &mut enc,
            "nva_nat_port_exhausted",
            "New flows of each SNAT entry dropped because no port of to_ports was free.",
            MetricType::Counter,
            nat_names().zip(
                self.nat
                    .iter()
                    .map(|c| ConstCounter::new(c.ports_exhausted)),
            ),
        )?;
        let ct = &snap.conntrack;
        single(
            &mut enc,
            "nva_conntrack_entries",
            "Tracked connections (at the last sweep).",
            ConstGauge::new(ct.entries),
        )?;
        for (name, help, value) in [
            (
                "nva_conntrack_created",
                "Flows the data path started tracking.",
                ct.created,
            ),
            (
                "nva_conntrack_evictions",
                "Flows evicted because their table was full (answered flows: policy.conntrack_max; flows not answered yet: a quarter of it, at least 1,024).",
                ct.evictions,
            ),
            (
                "nva_conntrack_revoked",
                "Flows dropped because a new rule set no longer allows them.",
                ct.revoked,
            ),
            (
                "nva_conntrack_expired",
                "Expired flows removed by the agent's sweeps.",
                ct.expired_removed,
            ),
        ] {
            single(&mut enc, name, help, ConstCounter::new(value))?;
        }
        let sync = snap.sync.as_deref();
        let load = |f: fn(&crate::sync::service::SyncStats) -> u64| sync.map_or(0, f);
        use std::sync::atomic::Ordering::Relaxed;
        for (name, help, value) in [
            ("nva_sync_sent", "Flow records sent to the peer.", load(|s| s.sent.load(Relaxed))),
            ("nva_sync_received", "Flow records received from the peer in authenticated frames.", load(|s| s.received.load(Relaxed))),
            ("nva_sync_rejected", "Sync frames rejected (bad authenticator, replay, oversized, malformed); never imported.", load(|s| s.rejected.load(Relaxed))),
            ("nva_sync_refused", "Received flows not imported: the local rules refuse them or a NAT entry they name is missing.", load(|s| s.refused.load(Relaxed))),
        ] {
            single(&mut enc, name, help, ConstCounter::new(value))?;
        }
        single(
            &mut enc,
            "nva_sync_peer_up",
            "1 while the connection to the sync peer is up.",
            ConstGauge::new(load(|s| s.peer_up.load(Relaxed) as u64)),
        )?;
        let last = load(|s| s.last_received_unix_ms.load(Relaxed));
        if last > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            single(
                &mut enc,
                "nva_sync_last_received_age_seconds",
                "Seconds since the newest authenticated frame from the peer.",
                ConstGauge::new(now.saturating_sub(last) as f64 / 1000.0),
            )?;
        }
        single(
            &mut enc,
            "nva_ruleset_generation",
            "Generation of the active rule set.",
            ConstGauge::new(snap.state.generation),
        )?;
        family(
            &mut enc,
            "nva_reloads",
            "Rule-set reloads by result.",
            MetricType::Counter,
            [
                ([("result", "ok")], ConstCounter::new(snap.state.reloads_ok)),
                (
                    [("result", "error")],
                    ConstCounter::new(snap.state.reloads_error),
                ),
            ],
        )?;
        single(
            &mut enc,
            "nva_healthy",
            "1 when every health check passes.",
            ConstGauge::new(snap.health.healthy as u64),
        )
    }
}

/// Keeps a listener on `addr` open exactly while the snapshot is healthy,
/// accepting and closing connections (for TCP-connect probes).
pub async fn tcp_probe(addr: SocketAddr, shared: Shared, interval: std::time::Duration) {
    let mut listener: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let healthy = current(&shared).health.healthy;
        match (healthy, listener.is_some()) {
            (true, false) => match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "TCP probe port open");
                    listener = Some(tokio::spawn(async move {
                        while let Ok((s, _)) = l.accept().await {
                            drop(s);
                        }
                    }));
                }
                Err(e) => tracing::warn!(%addr, error = %e, "TCP probe port"),
            },
            (false, true) => {
                if let Some(task) = listener.take() {
                    task.abort();
                    let _ = task.await;
                }
                tracing::warn!(%addr, "TCP probe port closed: unhealthy");
            }
            _ => {}
        }
        tokio::time::sleep(interval / 4).await;
    }
}

/// What can go wrong serving one of the agent's endpoints.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    DataPath(#[from] crate::datapath::DataPathError),
    #[error("BPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("encoding the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("request task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RuleState;
    use crate::http::exposition::parse;

    fn rule(name: &str, counter: u32) -> RuleState {
        RuleState {
            name: name.into(),
            action: "allow".into(),
            counter,
        }
    }

    #[test]
    fn names_with_quotes_backslashes_and_newlines_are_escaped() {
        let odd = "say \"hi\"\\now\nand then";
        let state = AgentState {
            generation: 3,
            rules: std::sync::Arc::new(vec![rule(odd, 0), rule("plain", 1)]),
            reloads_ok: 2,
            ..Default::default()
        };
        let snap = Arc::new(Snapshot {
            state: Arc::new(state),
            health: HealthReport {
                healthy: true,
                checks: Vec::new(),
            },
            ..Default::default()
        });
        let mut packets = vec![0; PacketReason::ALL.len()];
        packets[PacketReason::ALL[0] as usize] = 9;
        let text = render(AgentMetrics {
            snap,
            packets,
            rules: vec![
                RuleCounters {
                    packets: 5,
                    bytes: 500,
                },
                RuleCounters {
                    packets: 7,
                    bytes: 700,
                },
            ],
            nat: Vec::new(),
            forwarded: vec![0; nva_common::FORWARD_PATHS as usize],
        })
        .unwrap();
        let samples = parse(&text);
        let of = |name: &str, rule: &str| {
            samples
                .iter()
                .find(|(n, l, _)| n == name && l == &[("rule".to_string(), rule.to_string())])
                .map(|s| s.2)
        };
        assert_eq!(of("nva_rule_packets_total", odd), Some(5.0), "{text}");
        assert_eq!(of("nva_rule_bytes_total", odd), Some(500.0), "{text}");
        assert_eq!(of("nva_rule_packets_total", "plain"), Some(7.0), "{text}");
        // The names, types and HELP texts as documented (DESIGN.md, README).
        for line in [
            "# HELP nva_packets_total Packets seen by the XDP program, by verdict and reason.\n# TYPE nva_packets_total counter\n",
            "# HELP nva_rule_packets_total Packets matched by each rule.\n# TYPE nva_rule_packets_total counter\n",
            "# HELP nva_conntrack_entries Tracked connections (at the last sweep).\n# TYPE nva_conntrack_entries gauge\nnva_conntrack_entries 0\n",
            "# TYPE nva_conntrack_expired_total counter\nnva_conntrack_expired_total 0\n",
            "# TYPE nva_ruleset_generation gauge\nnva_ruleset_generation 3\n",
            "# TYPE nva_reloads_total counter\nnva_reloads_total{result=\"ok\"} 2\nnva_reloads_total{result=\"error\"} 0\n",
            "# HELP nva_healthy 1 when every health check passes.\n# TYPE nva_healthy gauge\nnva_healthy 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let first = PacketReason::ALL[0];
        assert!(text.contains(&format!(
            "nva_packets_total{{verdict=\"{}\",reason=\"{}\"}} 9\n",
            first.verdict(),
            first.name()
        )));
    }
}
