//! The failover daemon's read-only endpoints (`daemon.metrics_listen`):
//! /status (JSON) and /metrics, on the HTTP stack the agent uses.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::daemon::{SharedStatus, Status};
use crate::http::exposition::{family, render, single, CONTENT_TYPE};
use crate::http::server::{reply, Limits};

/// Serves /status (JSON) and /metrics.
pub async fn serve(listener: tokio::net::TcpListener, status: SharedStatus) {
    let router = Router::new()
        .route("/status", get(status_endpoint))
        .route("/metrics", get(metrics_endpoint))
        .fallback(|| async {
            reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /status or /metrics\n".into(),
            )
        })
        .with_state(status);
    crate::http::server::serve(listener, router, Limits::default()).await;
}

/// The status is a few hundred bytes: a copy per request is cheap.
fn snapshot(status: &SharedStatus) -> Status {
    status.read().expect("status lock").clone()
}

async fn status_endpoint(State(status): State<SharedStatus>) -> Response {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_string(&snapshot(&status)).unwrap_or_default(),
    )
}

async fn metrics_endpoint(State(status): State<SharedStatus>) -> Response {
    reply(
        StatusCode::OK,
        CONTENT_TYPE,
        metrics_text(snapshot(&status)),
    )
}

/// Prometheus text of the daemon's metrics.
pub fn metrics_text(status: Status) -> String {
    render(DaemonMetrics(status)).unwrap_or_else(|e| format!("# error: {e}\n"))
}

#[derive(Debug)]
struct DaemonMetrics(Status);

impl Collector for DaemonMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let m = &s.metrics;
        let by_nva = || s.nvas.iter().map(|n| [("nva", n.name.as_str())]);
        single(
            &mut enc,
            "nva_failover_leader",
            "1 when this daemon leads.",
            ConstGauge::new(s.leader as u64),
        )?;
        family(
            &mut enc,
            "nva_failover_nva_healthy",
            "1 when probes say the NVA is up.",
            MetricType::Gauge,
            by_nva().zip(s.nvas.iter().map(|n| ConstGauge::new(n.healthy as u64))),
        )?;
        family(
            &mut enc,
            "nva_failover_nva_active",
            "1 for the NVA that should be active.",
            MetricType::Gauge,
            by_nva().zip(
                s.nvas.iter().map(|n| {
                    ConstGauge::new((s.active.as_deref() == Some(n.name.as_str())) as u64)
                }),
            ),
        )?;
        family(
            &mut enc,
            "nva_failover_probe_latency_seconds",
            "Latency of the last successful probe.",
            MetricType::Gauge,
            by_nva().zip(m.probe_latency_s.iter().map(|l| ConstGauge::new(*l))),
        )?;
        family(
            &mut enc,
            "nva_failover_probe_failures",
            "Failed probes.",
            MetricType::Counter,
            by_nva().zip(m.probe_failures.iter().map(|f| ConstCounter::new(*f))),
        )?;
        single(
            &mut enc,
            "nva_failover_switches",
            "Failovers this daemon made (the first activation is not one).",
            ConstCounter::new(m.switches),
        )?;
        single(
            &mut enc,
            "nva_failover_repairs",
            "Times the routes were repaired to match the desired state.",
            ConstCounter::new(m.repairs),
        )?;
        family(
            &mut enc,
            "nva_failover_switch_phase_seconds",
            "Duration of each phase of the last switch.",
            MetricType::Gauge,
            [
                ([("phase", "state")], ConstGauge::new(m.phase_state_s)),
                ([("phase", "routes")], ConstGauge::new(m.phase_routes_s)),
            ],
        )?;
        single(
            &mut enc,
            "nva_failover_detect_to_switch_seconds",
            "From the active NVA declared down to the routes switched (last switch).",
            ConstGauge::new(m.detect_to_switch_s),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::daemon::{Metrics, NvaStatus};
    use crate::failover::probe::Health;
    use crate::http::exposition::parse;

    fn status(names: &[&str]) -> Status {
        Status {
            id: "fo-1".into(),
            leader: true,
            active: Some(names[0].into()),
            frozen: false,
            nvas: names
                .iter()
                .map(|n| NvaStatus {
                    name: n.to_string(),
                    healthy: true,
                    health: Health::Up,
                })
                .collect(),
            metrics: Metrics {
                probe_latency_s: vec![0.001; names.len()],
                probe_failures: vec![2; names.len()],
                switches: 1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn metrics_name_every_nva() {
        let text = metrics_text(status(&["nva-a"]));
        assert!(text.contains("nva_failover_leader 1\n"), "{text}");
        assert!(text.contains("nva_failover_nva_active{nva=\"nva-a\"} 1\n"));
        assert!(text.contains("nva_failover_probe_failures_total{nva=\"nva-a\"} 2\n"));
        assert!(text.contains("nva_failover_switches_total 1\n"));
        assert!(text.contains(
            "# HELP nva_failover_switches_total Failovers this daemon made (the first activation is not one).\n# TYPE nva_failover_switches_total counter\n"
        ), "{text}");
        assert!(text.contains(
            "# TYPE nva_failover_switch_phase_seconds gauge\nnva_failover_switch_phase_seconds{phase=\"state\"} 0"
        ), "{text}");
    }

    #[test]
    fn nva_names_with_quotes_backslashes_and_newlines_are_escaped() {
        let odd = "nva \"a\"\\b\nc";
        let text = metrics_text(status(&[odd, "nva-b"]));
        let samples = parse(&text);
        let nva = |name: &str| {
            samples
                .iter()
                .filter(|(n, _, _)| n == name)
                .map(|(_, l, v)| (l[0].1.clone(), *v))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            nva("nva_failover_nva_active"),
            [(odd.to_string(), 1.0), ("nva-b".to_string(), 0.0)],
            "{text}"
        );
        assert_eq!(
            nva("nva_failover_probe_failures_total"),
            [(odd.to_string(), 2.0), ("nva-b".to_string(), 2.0)]
        );
    }
}
