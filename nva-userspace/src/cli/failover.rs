//! `nva failover`: the failover daemon, or a client of the running daemons.

use std::path::Path;

use anyhow::Context as _;

use crate::FailoverCommand;

pub(crate) fn failover(path: &Path, action: Option<FailoverCommand>) -> anyhow::Result<()> {
    use nva::failover::coord::{Request, ZkClient};
    let config = match nva::failover::config::load_failover_config(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!("invalid failover config");
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let request = match action {
            None => return run_failover(config).await,
            Some(FailoverCommand::Status { json }) => return failover_status(&config, json).await,
            Some(FailoverCommand::Promote { name }) => {
                if !config.nvas.iter().any(|n| n.name == name) {
                    anyhow::bail!("no NVA named {name:?} in {}", path.display());
                }
                Request::Promote(name)
            }
            Some(FailoverCommand::Freeze) => Request::Freeze,
            Some(FailoverCommand::Unfreeze) => Request::Unfreeze,
        };
        let zk = config
            .daemon
            .zookeeper
            .as_deref()
            .context("promote, freeze and unfreeze go through ZooKeeper (daemon.zookeeper); a standalone daemon takes no requests")?;
        let client = ZkClient::connect(zk, &config.daemon.election_path).await?;
        client.request(&request).await?;
        println!("requested {request:?}; the leader carries it out");
        Ok(())
    })
}

async fn run_failover(config: nva::failover::config::FailoverConfig) -> anyhow::Result<()> {
    use nva::failover::daemon::{serve, Daemon};
    let listener = tokio::net::TcpListener::bind(config.daemon.metrics_listen)
        .await
        .with_context(|| format!("daemon.metrics_listen = {}", config.daemon.metrics_listen))?;
    let status = std::sync::Arc::new(std::sync::RwLock::new(Default::default()));
    tracing::info!(
        id = %config.daemon.id,
        mode = if config.daemon.zookeeper.is_some() { "zookeeper" } else { "standalone" },
        nvas = config.nvas.len(),
        "failover daemon starting"
    );
    let daemon = Daemon::new(config, status.clone()).await?;
    tokio::spawn(serve(listener, status));
    tokio::select! {
        r = daemon.run() => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn failover_status(
    config: &nva::failover::config::FailoverConfig,
    json: bool,
) -> anyhow::Result<()> {
    // This daemon's own view, then the ensemble's.
    let own = http_status(config.daemon.metrics_listen).await.ok();
    let (state, daemons) = match &config.daemon.zookeeper {
        Some(zk) => {
            let c =
                nva::failover::coord::ZkClient::connect(zk, &config.daemon.election_path).await?;
            (Some(c.state().await?), c.daemons().await?)
        }
        None => (None, Vec::new()),
    };
    let doc = serde_json::json!({
        "leader": daemons.first(),
        "daemons": daemons,
        "active": state.as_ref().map(|s| s.active.clone()).or_else(|| own.as_ref().map(|o| o["active"].as_str().map(String::from))),
        "frozen": state.as_ref().map(|s| s.frozen),
        "daemon": own,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "leader:  {}",
        doc["leader"]
            .as_str()
            .unwrap_or(if config.daemon.zookeeper.is_none() {
                "(standalone)"
            } else {
                "(none)"
            })
    );
    println!("active:  {}", doc["active"].as_str().unwrap_or("(none)"));
    if doc["frozen"] == true {
        println!("frozen:  yes (switching stopped by an operator)");
    }
    match &own {
        Some(o) => {
            for n in o["nvas"].as_array().into_iter().flatten() {
                println!(
                    "nva:     {} {}",
                    n["name"].as_str().unwrap_or(""),
                    n["health"].as_str().unwrap_or("")
                );
            }
        }
        None => println!("daemon:  not reachable at {}", config.daemon.metrics_listen),
    }
    Ok(())
}

async fn http_status(addr: std::net::SocketAddr) -> anyhow::Result<serde_json::Value> {
    // The daemons' management addresses are never reached through a proxy.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(2))
        .build()?;
    let response = client
        .get(format!("http://{addr}/status"))
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json().await?)
}
