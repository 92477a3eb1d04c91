//! `nva reload`: signal the running agent and wait for its verdict.

use std::path::Path;

use anyhow::Context as _;
use nva::agent::read_reload_progress;

use super::bpffs_of;

pub(crate) fn reload(path: &Path) -> anyhow::Result<()> {
    let bpffs = &bpffs_of(path)?;
    // Looked at before reading: a state written meanwhile is read again.
    let mut seen = state_version(bpffs);
    let before = read_reload_progress(bpffs)?;
    // The agent re-reads the file it was started with: reloading "another
    // file" would report success and keep the old rules.
    if let Some(own) = &before.config_path {
        // Both resolved now: the file the agent will read is whatever its
        // path (symlinks included) names at this moment.
        let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if resolve(path) != resolve(own) {
            anyhow::bail!(
                "the agent (pid {}) reads {}, not {}: a reload re-reads the agent's own config file; write the new rules to {} (or restart the agent with --config {})",
                before.pid,
                own.display(),
                path.display(),
                own.display(),
                path.display()
            );
        }
    }
    let pid = nix::unistd::Pid::from_raw(before.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)
        .with_context(|| format!("signalling the agent (pid {})", before.pid))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        // The agent replaces its state file (a rename) when it has reloaded:
        // parsing it only then keeps this loop off the CPUs the agent is
        // compiling on (100,000 rules make a state file of megabytes).
        let version = state_version(bpffs);
        if version == seen {
            continue;
        }
        seen = version;
        let Ok(now) = read_reload_progress(bpffs) else {
            continue;
        };
        if now.reload_seq > before.reload_seq {
            for r in &now.repaired {
                println!("repaired: {r}");
            }
            for e in &now.repair_errors {
                eprintln!("not re-attached: {e}");
            }
            return match now.last_reload_error {
                None if !now.repair_errors.is_empty() => Err(anyhow::anyhow!(
                    "generation {} is active, but the program is not attached everywhere (the data path is unhealthy)",
                    now.generation
                )),
                None => {
                    println!("reloaded: generation {} active", now.generation);
                    Ok(())
                }
                Some(e) => Err(anyhow::anyhow!(
                    "reload refused, generation {} stays in force:\n{e}",
                    now.generation
                )),
            };
        }
    }
    anyhow::bail!("the agent did not report the reload within 120 s")
}

/// What tells one version of the agent's state file from the next (it is
/// replaced whole, by a rename): its inode, length and modification time.
fn state_version(bpffs: &Path) -> Option<(u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(nva::agent::state_file(bpffs)).ok()?;
    Some((meta.ino(), meta.len(), meta.modified().ok()?))
}
