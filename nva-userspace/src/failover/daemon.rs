//! The failover daemon's loop: probe every NVA, and, on the leader only,
//! carry out operator requests, decide, switch (checking leadership right
//! before each action) and reconcile the world with the desired state.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::azure::AzureClient;
use super::config::{FailoverConfig, NvaSettings, Provider};
use super::coord::{Coordinator, Request, SharedState, ZkCoordinator};
use super::decide::{decide, Decision, Situation};
use super::linux;
use super::probe::{Health, HealthTracker, Prober};
// main.rs starts the endpoints from here.
pub use super::http::serve;

/// What /status and /metrics serve.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub id: String,
    pub leader: bool,
    pub active: Option<String>,
    pub frozen: bool,
    pub nvas: Vec<NvaStatus>,
    #[serde(skip)]
    pub metrics: Metrics,
}

#[derive(Clone, Debug, Serialize)]
pub struct NvaStatus {
    pub name: String,
    pub healthy: bool,
    pub health: Health,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub probe_latency_s: Vec<f64>,
    pub probe_failures: Vec<u64>,
    pub switches: u64,
    pub repairs: u64,
    /// Last switch: seconds from decision to state written, and to routes
    /// applied.
    pub phase_state_s: f64,
    pub phase_routes_s: f64,
    /// Seconds from the probe failure that declared the active NVA down to
    /// the routes pointing at the new one.
    pub detect_to_switch_s: f64,
}

pub type SharedStatus = Arc<RwLock<Status>>;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct Daemon {
    config: FailoverConfig,
    trackers: Vec<HealthTracker>,
    coord: Coordinator,
    status: SharedStatus,
    last_message: String,
    /// When the active NVA was declared down (for detect-to-switch).
    down_since: Option<Instant>,
    was_leader: bool,
    last_reconcile: Option<Instant>,
    azure: Option<AzureClient>,
    prober: Prober,
}

impl Daemon {
    pub async fn new(config: FailoverConfig, status: SharedStatus) -> anyhow::Result<Daemon> {
        let coord = match &config.daemon.zookeeper {
            None => Coordinator::Standalone {
                state: SharedState::default(),
            },
            Some(zk) => Coordinator::ZooKeeper(
                ZkCoordinator::join(
                    zk,
                    &config.daemon.election_path,
                    &config.daemon.id,
                    Duration::from_millis(config.daemon.session_timeout_ms as u64),
                )
                .await?,
            ),
        };
        let trackers = config
            .nvas
            .iter()
            .map(|_| HealthTracker::new(config.probe.fall, config.probe.rise))
            .collect();
        {
            let mut s = status.write().expect("status lock");
            s.id = config.daemon.id.clone();
            s.metrics.probe_latency_s = vec![0.0; config.nvas.len()];
            s.metrics.probe_failures = vec![0; config.nvas.len()];
        }
        let azure = match (&config.switch.provider, &config.azure) {
            (Provider::Azure, Some(a)) => Some(AzureClient::new(a.clone())?),
            _ => None,
        };
        let prober = Prober::new(Duration::from_millis(config.probe.timeout_ms as u64))?;
        Ok(Daemon {
            azure,
            prober,
            config,
            trackers,
            coord,
            status,
            last_message: String::new(),
            down_since: None,
            was_leader: false,
            last_reconcile: None,
        })
    }

    /// Runs until the process is stopped.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.config.probe.interval_ms as u64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.probe_all().await;
            if let Err(e) = self.lead().await {
                self.say_once(&format!("leader step failed: {e:#}"), true);
            }
        }
    }

    async fn probe_all(&mut self) {
        let prober = &self.prober;
        let results =
            futures::future::join_all(self.config.nvas.iter().map(|n| prober.probe(&n.probe)))
                .await;
        let mut status = self.status.write().expect("status lock");
        for (i, r) in results.iter().enumerate() {
            let name = &self.config.nvas[i].name;
            match r {
                Ok(latency) => status.metrics.probe_latency_s[i] = latency.as_secs_f64(),
                Err(_) => status.metrics.probe_failures[i] += 1,
            }
            if let Some(h) = self.trackers[i].record(r.is_ok()) {
                match r {
                    Ok(_) => tracing::info!(nva = %name, health = ?h, "NVA health changed"),
                    Err(e) => {
                        tracing::warn!(nva = %name, health = ?h, error = %e, "NVA health changed")
                    }
                }
            }
        }
        status.nvas = self
            .config
            .nvas
            .iter()
            .zip(&self.trackers)
            .map(|(n, t)| NvaStatus {
                name: n.name.clone(),
                healthy: t.health == Health::Up,
                health: t.health,
            })
            .collect();
    }

    /// Logs `message` when it differs from the last one (decisions repeat
    /// every interval; the log shows each change once).
    fn say_once(&mut self, message: &str, error: bool) {
        if message != self.last_message {
            if error {
                tracing::error!(decision = message, "failover");
            } else {
                tracing::info!(decision = message, "failover");
            }
            self.last_message = message.to_string();
        }
    }

    /// Whether this daemon leads, asked of the ensemble now (fencing).
    async fn leading(&mut self) -> anyhow::Result<bool> {
        match &mut self.coord {
            Coordinator::Standalone { .. } => Ok(true),
            Coordinator::ZooKeeper(zk) => {
                if zk.expired() {
                    tracing::error!("ZooKeeper session expired; joining the election again");
                    let c = &self.config.daemon;
                    *zk = ZkCoordinator::join(
                        c.zookeeper.as_deref().unwrap_or_default(),
                        &c.election_path,
                        &c.id,
                        Duration::from_millis(c.session_timeout_ms as u64),
                    )
                    .await?;
                }
                if !zk.connected() {
                    return Ok(false);
                }
                Ok(zk.leader().await?.is_some_and(|(_, me)| me))
            }
        }
    }

    async fn read_state(&mut self) -> anyhow::Result<SharedState> {
        Ok(match &mut self.coord {
            Coordinator::Standalone { state } => state.clone(),
            Coordinator::ZooKeeper(zk) => zk.read_state().await?,
        })
    }

    async fn write_state(&mut self, state: &SharedState) -> anyhow::Result<()> {
        match &mut self.coord {
            Coordinator::Standalone { state: s } => *s = state.clone(),
            Coordinator::ZooKeeper(zk) => zk.write_state(state).await?,
        }
        Ok(())
    }

    async fn lead(&mut self) -> anyhow::Result<()> {
        let leader = self.leading().await?;
        if leader != self.was_leader {
            tracing::info!(leader, id = %self.config.daemon.id, "leadership changed");
            self.was_leader = leader;
            self.last_reconcile = None;
        }
        self.status.write().expect("status lock").leader = leader;
        if !leader {
            // Followers report the desired state they read too, so that a
            // dashboard pointed at any daemon tells the truth.
            let state = self.read_state().await?;
            let mut s = self.status.write().expect("status lock");
            s.active = state.active;
            s.frozen = state.frozen;
            return Ok(());
        }
        let mut state = self.read_state().await?;
        if let Coordinator::ZooKeeper(zk) = &self.coord {
            if let Some(req) = zk.take_request().await? {
                tracing::info!(request = ?req, "operator request");
                match req {
                    Request::Freeze => state.frozen = true,
                    Request::Unfreeze => state.frozen = false,
                    Request::Promote(name) => {
                        if let Some(i) = self.config.nvas.iter().position(|n| n.name == name) {
                            if self.trackers[i].health == Health::Down {
                                self.say_once(&format!("promote {name} refused: it is down"), true);
                            } else {
                                return self.switch(state, i, "promoted by an operator").await;
                            }
                        } else {
                            self.say_once(&format!("promote {name:?} refused: no such NVA"), true);
                        }
                    }
                }
                self.write_state(&state).await?;
            }
        }
        let now = unix_now();
        state.switches.retain(|t| now - t < 3600.0);
        let active = state
            .active
            .as_ref()
            .and_then(|a| self.config.nvas.iter().position(|n| &n.name == a));
        // The world first: a new leader (or a restarted one) adopts what the
        // routes say when nothing was decided yet.
        if active.is_none() && state.active.is_none() {
            if let Ok(Some(i)) = self.world().await {
                tracing::info!(nva = %self.config.nvas[i].name, "adopting the NVA the routes point at");
                state.active = Some(self.config.nvas[i].name.clone());
                self.write_state(&state).await?;
                return Ok(());
            }
        }
        if let Some(a) = active {
            if self.trackers[a].health == Health::Down {
                self.down_since.get_or_insert_with(Instant::now);
            } else {
                self.down_since = None;
            }
        }
        let health: Vec<Health> = self.trackers.iter().map(|t| t.health).collect();
        let decision = decide(&Situation {
            health: &health,
            active,
            frozen: state.frozen,
            now_s: now,
            last_switch_s: state.switches.last().copied(),
            switches_last_hour: state.switches.len() as u32,
            min_dwell_s: self.config.switch.min_dwell_s,
            preempt: self.config.switch.preempt,
            max_failovers_per_hour: self.config.switch.max_failovers_per_hour,
        });
        {
            let mut s = self.status.write().expect("status lock");
            s.active = state.active.clone();
            s.frozen = state.frozen;
        }
        match decision {
            Decision::Switch { to, reason } => self.switch(state, to, &reason).await,
            Decision::Alert { reason } => {
                self.say_once(&reason, true);
                self.reconcile(active).await
            }
            Decision::Keep { reason } => {
                self.say_once(&reason, false);
                self.reconcile(active).await
            }
        }
    }

    /// Which NVA the routes (and, in Azure, the public IP) point at now.
    async fn world(&self) -> anyhow::Result<Option<usize>> {
        match &self.azure {
            Some(az) => Ok(az.active_nva(&self.config.nvas).await?),
            None => Ok(linux::active_nva(
                &self.config.linux_routes,
                &self.config.nvas,
            )?),
        }
    }

    /// Repairs a world that does not match the desired state (a partial
    /// switch, a restart mid-switch, a manual edit): every second for
    /// routes, every 30 s in Azure (ARM reads are rate-limited).
    async fn reconcile(&mut self, active: Option<usize>) -> anyhow::Result<()> {
        let Some(a) = active else { return Ok(()) };
        let every = if self.azure.is_some() {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(1)
        };
        if self.last_reconcile.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        self.last_reconcile = Some(Instant::now());
        if self.world().await? == Some(a) {
            return Ok(());
        }
        if self.azure.is_some() {
            tracing::warn!(nva = %self.config.nvas[a].name, "Azure does not match the desired state; repairing");
            self.apply_routes(None, a).await?;
            self.status.write().expect("status lock").metrics.repairs += 1;
            return Ok(());
        }
        let found: Vec<String> = linux::current(&self.config.linux_routes)?
            .iter()
            .zip(&self.config.linux_routes)
            .map(|(gw, r)| {
                format!(
                    "{} table {} via {}",
                    r.prefix,
                    r.table,
                    gw.map_or("(none)".into(), |g| g.to_string())
                )
            })
            .collect();
        tracing::warn!(nva = %self.config.nvas[a].name, ?found, "routes do not match the desired state; repairing");
        self.apply_routes(None, a).await?;
        self.status.write().expect("status lock").metrics.repairs += 1;
        Ok(())
    }

    /// Points the routes (and the public IP) at NVA `to`, one action at a
    /// time, checking the leadership right before each.
    async fn apply_routes(&mut self, from: Option<usize>, to: usize) -> anyhow::Result<()> {
        if let Some(az) = self.azure.take() {
            let result = self.apply_azure(&az, from, to).await;
            self.azure = Some(az);
            return result;
        }
        for route in self.config.linux_routes.clone() {
            if !self.leading().await? {
                return Err(super::coord::CoordError::Fenced.into());
            }
            let nva = self.config.nvas[to].clone();
            tokio::task::spawn_blocking(move || linux::apply(std::slice::from_ref(&route), &nva))
                .await??;
        }
        for vip in self.config.linux_vips.clone() {
            if !self.leading().await? {
                return Err(super::coord::CoordError::Fenced.into());
            }
            // Unknown previous holder (a repair): take it off every other NVA.
            let others: Vec<NvaSettings> = match from {
                Some(f) => vec![self.config.nvas[f].clone()],
                None => self
                    .config
                    .nvas
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != to)
                    .map(|(_, n)| n.clone())
                    .collect(),
            };
            let nva = self.config.nvas[to].clone();
            tokio::task::spawn_blocking(move || -> Result<(), linux::LinuxError> {
                for other in &others {
                    // An unreachable old NVA must not keep the new one from
                    // getting the address.
                    if let Err(e) = linux::move_vip(&vip, Some(other), &nva) {
                        tracing::warn!(vip = %vip.address, from = %other.name, error = %e, "taking the VIP off the old NVA failed");
                        linux::move_vip(&vip, None, &nva)?;
                    }
                }
                if others.is_empty() {
                    linux::move_vip(&vip, None, &nva)?;
                }
                Ok(())
            })
            .await??;
        }
        Ok(())
    }

    async fn switch(
        &mut self,
        mut state: SharedState,
        to: usize,
        reason: &str,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let name = self.config.nvas[to].name.clone();
        let from = state.active.clone();
        if !self.leading().await? {
            return Err(super::coord::CoordError::Fenced.into());
        }
        // Desired state first: a leader that dies now leaves the decision for
        // the next one to complete.
        state.active = Some(name.clone());
        // The first activation is no failover: it starts no dwell time and
        // counts against no limit.
        if from.is_some() {
            state.switches.push(unix_now());
        }
        self.write_state(&state).await?;
        let state_s = started.elapsed().as_secs_f64();
        let from_index = from
            .as_ref()
            .and_then(|f| self.config.nvas.iter().position(|n| &n.name == f));
        self.apply_routes(from_index, to).await?;
        let routes_s = started.elapsed().as_secs_f64();
        let detect = self.down_since.take().map(|t| t.elapsed().as_secs_f64());
        tracing::warn!(
            from = from.as_deref().unwrap_or("(none)"),
            to = %name,
            reason,
            state_s,
            routes_s,
            "switched the active NVA"
        );
        self.last_message = format!("switched to {name}");
        self.last_reconcile = Some(Instant::now());
        let mut s = self.status.write().expect("status lock");
        s.active = Some(name);
        if from.is_some() {
            s.metrics.switches += 1;
        }
        s.metrics.phase_state_s = state_s;
        s.metrics.phase_routes_s = routes_s - state_s;
        if let Some(d) = detect {
            s.metrics.detect_to_switch_s = d;
        }
        Ok(())
    }
}

impl Daemon {
    async fn apply_azure(
        &mut self,
        az: &AzureClient,
        from: Option<usize>,
        to: usize,
    ) -> anyhow::Result<()> {
        let target = self.config.nvas[to].clone();
        // Without a known previous NVA, every other NVA gives up the public
        // IP (a repair does not know who holds it).
        let mut actions = Vec::new();
        match from {
            Some(f) => actions.extend(az.plan(Some(&self.config.nvas[f]), &target)),
            None => {
                for (i, n) in self.config.nvas.iter().enumerate() {
                    if i != to {
                        actions.extend(
                            az.plan(Some(n), &target).into_iter().filter(|a| {
                                matches!(a, super::azure::Action::DetachPublicIp { .. })
                            }),
                        );
                    }
                }
                let mut all = az.plan(None, &target);
                let attach = all.pop();
                actions.splice(0..0, all);
                actions.extend(attach);
            }
        }
        // Leadership is checked before every action; the parallel branches
        // of the switch share the check through a mutex.
        let me = tokio::sync::Mutex::new(&mut *self);
        let me = &me;
        az.switch(&actions, &target, move || async move {
            if me.lock().await.leading().await? {
                Ok(())
            } else {
                Err(anyhow::Error::from(super::coord::CoordError::Fenced))
            }
        })
        .await
    }
}
