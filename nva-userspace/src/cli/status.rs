//! `nva status`: the agent's status and health, from its status file.

use std::path::Path;

use super::bpffs_of;

pub(crate) fn status(path: &Path, json: bool) -> anyhow::Result<()> {
    let bpffs = bpffs_of(path)?;
    let doc = nva::agent::read_status(&bpffs).map_err(|e| {
        anyhow::anyhow!(
            "no agent found: {e:#} (is an agent running, or did one run, with agent.bpffs = {}?)",
            bpffs.display()
        )
    })?;
    let pid = doc["status"]["pid"].as_i64().unwrap_or(0) as i32;
    let running = pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    if json {
        let mut doc = doc;
        doc["agent_running"] = running.into();
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let st = &doc["status"];
    let healthy = doc["health"]["healthy"].as_bool().unwrap_or(false);
    println!(
        "agent:       {} (pid {pid})",
        if running {
            "running"
        } else {
            "NOT running (data path left enforcing)"
        }
    );
    println!(
        "health:      {}",
        if healthy { "healthy" } else { "UNHEALTHY" }
    );
    for c in doc["health"]["checks"].as_array().into_iter().flatten() {
        if c["ok"] != true {
            println!(
                "  failing:   {}: {}",
                c["name"].as_str().unwrap_or(""),
                c["detail"].as_str().unwrap_or("")
            );
        }
    }
    println!(
        "generation:  {} (hash {})",
        st["generation"],
        st["ruleset_hash"].as_str().unwrap_or("")
    );
    println!("rules:       {}", st["rules"]);
    println!("program id:  {}", st["program_id"]);
    for i in st["interfaces"].as_array().into_iter().flatten() {
        println!(
            "interface:   {} ({}, mode {})",
            i["name"].as_str().unwrap_or(""),
            i["attached"].as_str().unwrap_or(""),
            i["xdp_mode"].as_str().unwrap_or("")
        );
    }
    println!(
        "reloads:     {} ok, {} refused",
        st["reloads"]["ok"], st["reloads"]["error"]
    );
    if let Some(e) = st["last_reload_error"].as_str() {
        println!("last error:  {e}");
    }
    if st["sync"].is_object() {
        let s = &st["sync"];
        println!(
            "sync peer:   {} {} (records sent {}, received {}, rejected frames {}, refused {})",
            s["peer"].as_str().unwrap_or(""),
            if s["peer_up"] == true { "up" } else { "DOWN" },
            s["sent"],
            s["received"],
            s["rejected"],
            s["refused"]
        );
    }
    println!("uptime:      {} s", st["uptime_s"]);
    Ok(())
}
