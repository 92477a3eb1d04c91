//! `nva agent`: the agent's runtime: signals, the health tick, the HTTP
//! endpoints, packet events and the conntrack sweep around [`Agent`].

use std::path::Path;

use anyhow::Context as _;
use nva::agent::Agent;
use nva::datapath::pin::PinLayout;

use super::load_or_report;

pub(crate) fn run_agent(path: &Path, detach_on_exit: bool) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex, RwLock};
    let config = load_or_report(path).context("invalid config, not starting")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let settings = config.agent.clone();
    nva::agent::refuse_if_agent_running(&settings.bpffs)?;
    // Bind first: a health port in use is a start-up error, not a silent gap.
    let http_listener = std::net::TcpListener::bind(settings.health_listen)
        .with_context(|| format!("agent.health_listen = {}", settings.health_listen))?;
    http_listener.set_nonblocking(true)?;
    // Signal handlers first: the state file written by start() already names
    // this pid, and an early SIGHUP must queue a reload, not kill the agent.
    let (mut term, mut hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        )
    };
    // The sync key and port first: a bad key refuses the start.
    let sync = match &config.sync {
        None => None,
        Some(s) => {
            let key = nva::sync::service::load_key(&s.key_file)?;
            let listener = std::net::TcpListener::bind(s.listen)
                .with_context(|| format!("sync.listen = {}", s.listen))?;
            listener.set_nonblocking(true)?;
            Some((s.clone(), key, listener))
        }
    };
    let agent = Arc::new(Mutex::new(Agent::start(path, config)?));
    let sync_stats = sync
        .as_ref()
        .map(|_| Arc::new(nva::sync::service::SyncStats::default()));
    agent.lock().expect("agent lock").sync_stats = sync_stats.clone();
    let shared: nva::agent::http::Shared = Arc::new(RwLock::new(Default::default()));
    refresh(&agent, &shared);
    let interval = std::time::Duration::from_millis(settings.health_interval_ms as u64);
    tracing::info!("agent running; SIGHUP reloads, SIGINT/SIGTERM stops");
    runtime.block_on(async {
        let layout = agent.lock().expect("agent lock").layout.clone();
        let http_listener = tokio::net::TcpListener::from_std(http_listener)?;
        tokio::spawn(nva::agent::http::serve(
            http_listener,
            shared.clone(),
            layout.clone(),
        ));
        if let Some(events) = agent.lock().expect("agent lock").datapath.take_events() {
            tokio::spawn(log_events(events, shared.clone()));
        }
        // The program's rare diagnostics go through the `log` facade, which
        // the tracing subscriber receives.
        if let Some(diagnostics) = agent
            .lock()
            .expect("agent lock")
            .datapath
            .take_diagnostics(log::logger())
        {
            tokio::spawn(forward_diagnostics(diagnostics));
        }
        tokio::spawn(sweep_conntrack(layout.clone(), shared.clone()));
        if let (Some((settings, key, listener)), Some(stats)) = (sync, sync_stats) {
            start_sync(&agent, settings, key, listener, stats)?;
        }
        if let Some(addr) = settings.tcp_probe_listen {
            tokio::spawn(nva::agent::http::tcp_probe(addr, shared.clone(), interval));
        }
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    let (a, s) = (agent.clone(), shared.clone());
                    tokio::task::spawn_blocking(move || {
                        // Errors are logged and recorded by reload().
                        let _ = a.lock().expect("agent lock").reload();
                        refresh(&a, &s);
                    }).await?;
                }
                _ = tick.tick() => {
                    let (a, s) = (agent.clone(), shared.clone());
                    tokio::task::spawn_blocking(move || refresh(&a, &s)).await?;
                }
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopping");
    let agent = Arc::try_unwrap(agent)
        .map_err(|_| anyhow::anyhow!("agent still in use"))?
        .into_inner()
        .expect("agent lock");
    agent.stop(detach_on_exit);
    runtime.shutdown_background();
    Ok(())
}

/// Starts the sync sender and receiver (`[sync]`).
fn start_sync(
    agent: &std::sync::Arc<std::sync::Mutex<Agent>>,
    settings: nva::policy::model::SyncSettings,
    key: nva::sync::codec::Key,
    listener: std::net::TcpListener,
    stats: std::sync::Arc<nva::sync::service::SyncStats>,
) -> anyhow::Result<()> {
    use nva::conntrack::{now_ns, Table};
    let a = agent.clone();
    let export: nva::sync::service::Exporter = std::sync::Arc::new(move || {
        let agent = a.lock().expect("agent lock");
        let table = Table::open(&agent.layout)?;
        Ok(agent.with_sync_context(|cx| nva::sync::flows::export_all(&table, cx, now_ns()))?)
    });
    let a = agent.clone();
    let import: nva::sync::service::Importer = std::sync::Arc::new(move |records| {
        let agent = a.lock().expect("agent lock");
        let mut table = Table::open(&agent.layout)?;
        Ok(agent
            .with_sync_context(|cx| nva::sync::flows::import(&mut table, cx, records, now_ns()))?)
    });
    let interval = std::time::Duration::from_millis(settings.interval_ms as u64);
    tracing::info!(listen = %settings.listen, peer = %settings.peer, ?interval, "connection-state sync on");
    tokio::spawn(nva::sync::service::receive(
        tokio::net::TcpListener::from_std(listener)?,
        key.clone(),
        import,
        stats.clone(),
    ));
    tokio::spawn(nva::sync::service::send(
        settings.peer,
        key,
        interval,
        export,
        stats,
    ));
    Ok(())
}

/// Forwards the program's aya-log records into the agent's log.
async fn forward_diagnostics(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's map fd for as long as the
    // AsyncFd holds it, and as_raw_fd() always returns that same fd.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "data path diagnostics unavailable");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Writes the data path's sampled packet events as log lines.
async fn log_events(
    events: aya::maps::RingBuf<aya::maps::MapData>,
    shared: nva::agent::http::Shared,
) {
    use nva_common::{PacketEvent, PacketReason};
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd
    // holds it, and as_raw_fd() always returns that same fd.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "packet events unavailable");
            return;
        }
    };
    let mut names: (Option<u64>, std::collections::HashMap<u32, String>) = Default::default();
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<PacketEvent>() {
                continue;
            }
            // SAFETY: the program writes whole PacketEvents (repr(C), Pod).
            let ev: PacketEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let rule = if ev.counter == nva_common::NO_RULE {
                "(default)".to_string()
            } else {
                // Rule names by counter, rebuilt only when the rules change.
                let snap = nva::agent::http::current(&shared);
                if names.0 != Some(snap.state.reload_seq) {
                    names = (
                        Some(snap.state.reload_seq),
                        snap.state
                            .rules
                            .iter()
                            .map(|r| (r.counter, r.name.clone()))
                            .collect(),
                    );
                }
                names
                    .1
                    .get(&ev.counter)
                    .cloned()
                    .unwrap_or_else(|| format!("counter {}", ev.counter))
            };
            let addr = |b: [u8; 16]| -> std::net::IpAddr {
                if ev.is_v6 != 0 {
                    std::net::Ipv6Addr::from(b).into()
                } else {
                    std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
                }
            };
            let reason = PacketReason::ALL
                .iter()
                .find(|r| **r as u8 == ev.reason)
                .copied()
                .unwrap_or(PacketReason::DropRule);
            tracing::info!(
                target: "nva::event",
                rule,
                verdict = reason.verdict(),
                reason = reason.name(),
                proto = ev.proto,
                src = %addr(ev.src),
                dst = %addr(ev.dst),
                sport = ev.sport,
                dport = ev.dport,
                ifindex = ev.ifindex,
                bytes = ev.bytes,
                "packet"
            );
        }
        guard.clear_ready();
    }
}

/// Runs the health checks and publishes a fresh snapshot.
fn refresh(agent: &std::sync::Mutex<Agent>, shared: &nva::agent::http::Shared) {
    let mut agent = agent.lock().expect("agent lock");
    // Addresses come and go (DHCP, operators): management follows them.
    if let Err(e) = agent
        .datapath
        .set_local_addrs(&nva::datapath::local_addrs())
    {
        tracing::warn!(error = %e, "updating local addresses");
    }
    let health = agent.health();
    let previous = nva::agent::http::current(shared);
    if previous.health.healthy != health.healthy {
        if health.healthy {
            tracing::info!("data path healthy");
        } else {
            let failing: Vec<String> = health
                .failing()
                .iter()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            tracing::error!(failing = ?failing, "data path unhealthy");
        }
    }
    let mut status = agent.status();
    let conntrack = previous.conntrack;
    status["conntrack_entries"] = conntrack.entries.into();
    if let (Some(s), Some(settings)) = (&agent.sync_stats, &agent.config.sync) {
        use std::sync::atomic::Ordering::Relaxed;
        status["sync"] = serde_json::json!({
            "peer": settings.peer.to_string(),
            "peer_up": s.peer_up.load(Relaxed),
            "sent": s.sent.load(Relaxed),
            "received": s.received.load(Relaxed),
            "rejected": s.rejected.load(Relaxed),
            "refused": s.refused.load(Relaxed),
        });
    }
    let _ = nva::agent::write_status(&agent.config.agent.bpffs, &status, &health);
    // A new snapshot each tick; requests keep the one they took. The state
    // is cheap to copy: its rule list is shared.
    *shared.write().expect("snapshot lock") = std::sync::Arc::new(nva::agent::http::Snapshot {
        health,
        state: std::sync::Arc::new(agent.state.clone()),
        status,
        conntrack,
        sync: agent.sync_stats.clone(),
    });
}

/// Sweeps expired conntrack entries in the background, on its own map
/// handles: neither the data path nor the agent waits for it.
async fn sweep_conntrack(layout: PinLayout, shared: nva::agent::http::Shared) {
    let mut summary = nva::conntrack::Summary::default();
    loop {
        let l = layout.clone();
        let prev = summary;
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || nva::conntrack::sweep_once(&l, &prev)).await {
            Ok(Ok(next)) => {
                if next.expired_removed > summary.expired_removed {
                    tracing::debug!(removed = next.expired_removed - summary.expired_removed, entries = next.entries, elapsed = ?started.elapsed(), "conntrack sweep");
                }
                summary = next;
                // Copy-on-write: requests keep the snapshot they took.
                std::sync::Arc::make_mut(&mut shared.write().expect("snapshot lock")).conntrack =
                    summary;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "conntrack sweep"),
            Err(e) => tracing::warn!(error = %e, "conntrack sweep task"),
        }
        let timeouts = nva::conntrack::active_timeouts(&layout).unwrap_or_default();
        tokio::time::sleep(nva::conntrack::sweep_interval(&timeouts)).await;
    }
}
