//! The agent's read-only HTTP endpoints (`agent.health_listen`): /health,
//! /status, /metrics; and the optional TCP probe port that accepts
//! connections only while healthy. Responses come from a snapshot refreshed
//! by the health checker and from the pinned counter maps, never from the
//! agent itself, so they stay fast while a reload runs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use nva_common::{map_names as names, PacketReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::agent::health::HealthReport;
use crate::agent::AgentState;
use crate::datapath::pin::PinLayout;
use crate::datapath::{open_pinned, read_counters, read_packet_counters};

/// What the endpoints serve.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub health: HealthReport,
    pub state: AgentState,
    pub status: serde_json::Value,
    /// From the last conntrack sweep.
    pub conntrack: crate::conntrack::Summary,
}

pub type Shared = Arc<RwLock<Snapshot>>;

pub async fn serve(listener: TcpListener, shared: Shared, layout: PinLayout) -> anyhow::Result<()> {
    tracing::info!(listen = ?listener.local_addr().ok(), "HTTP endpoints /health /status /metrics");
    loop {
        let (stream, _) = listener.accept().await?;
        let shared = shared.clone();
        let layout = layout.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, shared, layout).await {
                tracing::debug!(error = %e, "HTTP connection");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, shared: Shared, layout: PinLayout) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read the request head (bounded: 4 KiB, 2 s).
    let read = async {
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), read).await??;
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, content_type, body) = if method != "GET" {
        (405, "text/plain", "only GET\n".to_string())
    } else {
        let snap = shared.read().expect("snapshot lock").clone();
        match path {
            "/health" => {
                let body = serde_json::to_string_pretty(&serde_json::json!({
                    "healthy": snap.health.healthy,
                    "failing": snap.health.failing(),
                    "checks": snap.health.checks,
                }))? + "\n";
                let code = if snap.health.healthy { 200 } else { 503 };
                (code, "application/json", body)
            }
            "/status" => (
                200,
                "application/json",
                serde_json::to_string_pretty(&snap.status)? + "\n",
            ),
            "/metrics" => (
                200,
                "text/plain; version=0.0.4",
                metrics(&snap, &layout).unwrap_or_else(|e| format!("# error: {e}\n")),
            ),
            _ => (404, "text/plain", "not found\n".to_string()),
        }
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition, read from the pinned maps.
pub fn metrics(snap: &Snapshot, layout: &PinLayout) -> anyhow::Result<String> {
    let mut out = String::new();
    let packets = read_packet_counters(aya::maps::PerCpuArray::try_from(
        aya::maps::Map::PerCpuArray(open_pinned(layout, names::PACKET_COUNTERS)?),
    )?)?;
    out.push_str("# HELP nva_packets_total Packets seen by the XDP program, by verdict and reason.\n# TYPE nva_packets_total counter\n");
    for reason in PacketReason::ALL {
        let _ = writeln!(
            out,
            "nva_packets_total{{verdict=\"{}\",reason=\"{}\"}} {}",
            reason.verdict(),
            reason.name(),
            packets[reason as usize]
        );
    }
    let map = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open_pinned(
        layout,
        names::RULE_COUNTERS,
    )?))?;
    let indices: Vec<u32> = snap.state.rules.iter().map(|r| r.counter).collect();
    let counters = read_counters(&map, &indices)?;
    out.push_str("# HELP nva_rule_packets_total Packets matched by each rule.\n# TYPE nva_rule_packets_total counter\n");
    for (r, c) in snap.state.rules.iter().zip(&counters) {
        let _ = writeln!(
            out,
            "nva_rule_packets_total{{rule=\"{}\"}} {}",
            escape(&r.name),
            c.packets
        );
    }
    out.push_str("# HELP nva_rule_bytes_total Bytes matched by each rule.\n# TYPE nva_rule_bytes_total counter\n");
    for (r, c) in snap.state.rules.iter().zip(&counters) {
        let _ = writeln!(
            out,
            "nva_rule_bytes_total{{rule=\"{}\"}} {}",
            escape(&r.name),
            c.bytes
        );
    }
    let ct = &snap.conntrack;
    let _ = writeln!(
        out,
        "# HELP nva_conntrack_entries Tracked connections (at the last sweep).\n# TYPE nva_conntrack_entries gauge\nnva_conntrack_entries {}",
        ct.entries
    );
    let _ = writeln!(
        out,
        "# HELP nva_conntrack_created_total Flows the data path started tracking.\n# TYPE nva_conntrack_created_total counter\nnva_conntrack_created_total {}",
        ct.created
    );
    let _ = writeln!(
        out,
        "# HELP nva_conntrack_evictions_total Flows evicted because the table was full (policy.conntrack_max).\n# TYPE nva_conntrack_evictions_total counter\nnva_conntrack_evictions_total {}",
        ct.evictions
    );
    let _ = writeln!(
        out,
        "# HELP nva_conntrack_revoked_total Flows dropped because a new rule set no longer allows them.\n# TYPE nva_conntrack_revoked_total counter\nnva_conntrack_revoked_total {}",
        ct.revoked
    );
    let _ = writeln!(
        out,
        "# HELP nva_conntrack_expired_total Expired flows removed by the agent's sweeps.\n# TYPE nva_conntrack_expired_total counter\nnva_conntrack_expired_total {}",
        ct.expired_removed
    );
    let _ = writeln!(
        out,
        "# HELP nva_ruleset_generation Generation of the active rule set.\n# TYPE nva_ruleset_generation gauge\nnva_ruleset_generation {}",
        snap.state.generation
    );
    let _ = writeln!(
        out,
        "# HELP nva_reloads_total Rule-set reloads by result.\n# TYPE nva_reloads_total counter\nnva_reloads_total{{result=\"ok\"}} {}\nnva_reloads_total{{result=\"error\"}} {}",
        snap.state.reloads_ok, snap.state.reloads_error
    );
    let _ = writeln!(
        out,
        "# HELP nva_healthy 1 when every health check passes.\n# TYPE nva_healthy gauge\nnva_healthy {}",
        snap.health.healthy as u8
    );
    Ok(out)
}

/// Keeps a listener on `addr` open exactly while the snapshot is healthy,
/// accepting and closing connections (for TCP-connect probes).
pub async fn tcp_probe(addr: SocketAddr, shared: Shared, interval: std::time::Duration) {
    let mut listener: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let healthy = shared.read().expect("snapshot lock").health.healthy;
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
