//! Coordination of failover daemons: leader election and the shared desired
//! state in a ZooKeeper ensemble, or, without one, a single daemon keeping
//! the state in memory (standalone).
//!
//! ZooKeeper layout under `election_path`:
//! - `election/n-<seq>`: one ephemeral sequential node per daemon (data: its
//!   id); the lowest sequence number leads.
//! - `state`: the desired state (JSON [`SharedState`]), written by the
//!   leader with a version check.
//! - `request`: an operator command (JSON [`Request`]) for the leader to
//!   carry out and delete.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

/// What every daemon agrees on: the NVA that should be active.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SharedState {
    /// Name of the NVA that should be active.
    pub active: Option<String>,
    pub frozen: bool,
    /// Unix times (s) of the switches of the last hour.
    #[serde(default)]
    pub switches: Vec<f64>,
}

/// An operator command, carried out by the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Promote(String),
    Freeze,
    Unfreeze,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("ZooKeeper {0}: {1}")]
    Zk(&'static str, zk::Error),
    #[error("ZooKeeper data at {0} is not valid JSON: {1}")]
    Data(String, serde_json::Error),
    #[error("lost the leadership (fenced)")]
    Fenced,
}

pub enum Coordinator {
    /// A single daemon: always the leader; state in memory.
    Standalone {
        state: SharedState,
    },
    ZooKeeper(ZkCoordinator),
}

pub struct ZkCoordinator {
    client: zk::Client,
    root: String,
    /// Our node's name under `election/`.
    node: String,
    /// Version of `state` as last read.
    state_version: Option<i32>,
}

fn zk_err(what: &'static str) -> impl FnOnce(zk::Error) -> CoordError {
    move |e| CoordError::Zk(what, e)
}

impl ZkCoordinator {
    /// Connects, makes sure the layout exists and joins the election.
    pub async fn join(
        connect: &str,
        root: &str,
        id: &str,
        session_timeout: Duration,
    ) -> Result<ZkCoordinator, CoordError> {
        let client = zk::Client::connector()
            .with_session_timeout(session_timeout)
            .connect(connect)
            .await
            .map_err(zk_err("connect"))?;
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        // Each ancestor in turn; existing ones are fine.
        let mut path = String::new();
        for part in root.trim_start_matches('/').split('/').chain(["election"]) {
            path.push('/');
            path.push_str(part);
            match client.create(&path, b"", &persistent).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(CoordError::Zk("create", e)),
            }
        }
        let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let (_, seq) = client
            .create(&format!("{root}/election/n-"), id.as_bytes(), &ephemeral)
            .await
            .map_err(zk_err("join election"))?;
        let node = format!("n-{seq}");
        Ok(ZkCoordinator {
            client,
            root: root.to_string(),
            node,
            state_version: None,
        })
    }

    /// Whether the session is usable (a suspended or lost session must stop
    /// a leader at once).
    pub fn connected(&self) -> bool {
        self.client.state() == zk::SessionState::SyncConnected
    }

    pub fn expired(&self) -> bool {
        self.client.state().is_terminated()
    }

    /// The id of the leading daemon, asking the ensemble (a round trip:
    /// this is the fencing check).
    pub async fn leader(&self) -> Result<Option<(String, bool)>, CoordError> {
        let (mut children, _) = self
            .client
            .get_children(&format!("{}/election", self.root))
            .await
            .map_err(zk_err("list election"))?;
        children.sort_by_key(|c| c.rsplit('-').next().and_then(|s| s.parse::<i64>().ok()));
        let Some(first) = children.first() else {
            return Ok(None);
        };
        let (id, _) = self
            .client
            .get_data(&format!("{}/election/{first}", self.root))
            .await
            .map_err(zk_err("read leader"))?;
        Ok(Some((
            String::from_utf8_lossy(&id).into_owned(),
            *first == self.node,
        )))
    }

    pub async fn read_state(&mut self) -> Result<SharedState, CoordError> {
        let path = format!("{}/state", self.root);
        match self.client.get_data(&path).await {
            Ok((data, stat)) => {
                self.state_version = Some(stat.version);
                if data.is_empty() {
                    return Ok(SharedState::default());
                }
                serde_json::from_slice(&data).map_err(|e| CoordError::Data(path, e))
            }
            Err(zk::Error::NoNode) => {
                self.state_version = None;
                Ok(SharedState::default())
            }
            Err(e) => Err(CoordError::Zk("read state", e)),
        }
    }

    /// Writes the state if nobody changed it since it was read.
    pub async fn write_state(&mut self, state: &SharedState) -> Result<(), CoordError> {
        let path = format!("{}/state", self.root);
        let data = serde_json::to_vec(state).expect("state serialises");
        match self.state_version {
            Some(v) => {
                let stat = self
                    .client
                    .set_data(&path, &data, Some(v))
                    .await
                    .map_err(zk_err("write state"))?;
                self.state_version = Some(stat.version);
            }
            None => {
                let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                let (stat, _) = self
                    .client
                    .create(&path, &data, &persistent)
                    .await
                    .map_err(zk_err("create state"))?;
                self.state_version = Some(stat.version);
            }
        }
        Ok(())
    }

    /// Takes the pending operator request, if any.
    pub async fn take_request(&self) -> Result<Option<Request>, CoordError> {
        let path = format!("{}/request", self.root);
        let (data, stat) = match self.client.get_data(&path).await {
            Ok(x) => x,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(CoordError::Zk("read request", e)),
        };
        match self.client.delete(&path, Some(stat.version)).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(CoordError::Zk("delete request", e)),
        }
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| CoordError::Data(path, e))
    }
}

/// For the CLI: connects to the ensemble without joining the election.
pub struct ZkClient {
    client: zk::Client,
    root: String,
}

impl ZkClient {
    pub async fn connect(connect: &str, root: &str) -> Result<ZkClient, CoordError> {
        let client = zk::Client::connector()
            .with_session_timeout(Duration::from_secs(4))
            .connect(connect)
            .await
            .map_err(zk_err("connect"))?;
        Ok(ZkClient {
            client,
            root: root.to_string(),
        })
    }

    pub async fn state(&self) -> Result<SharedState, CoordError> {
        let path = format!("{}/state", self.root);
        match self.client.get_data(&path).await {
            Ok((data, _)) if !data.is_empty() => {
                serde_json::from_slice(&data).map_err(|e| CoordError::Data(path, e))
            }
            Ok(_) | Err(zk::Error::NoNode) => Ok(SharedState::default()),
            Err(e) => Err(CoordError::Zk("read state", e)),
        }
    }

    /// Ids of the daemons in the election, the leader first.
    pub async fn daemons(&self) -> Result<Vec<String>, CoordError> {
        let dir = format!("{}/election", self.root);
        let mut children = match self.client.get_children(&dir).await {
            Ok((c, _)) => c,
            Err(zk::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(CoordError::Zk("list election", e)),
        };
        children.sort_by_key(|c| c.rsplit('-').next().and_then(|s| s.parse::<i64>().ok()));
        let mut ids = Vec::new();
        for c in children {
            if let Ok((id, _)) = self.client.get_data(&format!("{dir}/{c}")).await {
                ids.push(String::from_utf8_lossy(&id).into_owned());
            }
        }
        Ok(ids)
    }

    /// Leaves a request for the leader (replacing one not yet taken).
    pub async fn request(&self, request: &Request) -> Result<(), CoordError> {
        let path = format!("{}/request", self.root);
        let data = serde_json::to_vec(request).expect("request serialises");
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match self.client.create(&path, &data, &persistent).await {
            Ok(_) => Ok(()),
            Err(zk::Error::NodeExists) => self
                .client
                .set_data(&path, &data, None)
                .await
                .map(|_| ())
                .map_err(zk_err("write request")),
            Err(e) => Err(CoordError::Zk("write request", e)),
        }
    }
}
