//! `nva detach`: remove nva from the data path after the agent stopped.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nva::datapath::pin::PinLayout;

use super::bpffs_of;

pub(crate) fn detach(path: &Path) -> anyhow::Result<()> {
    let bpffs = bpffs_of(path)?;
    // From a private mount namespace the pins are out of sight, not gone:
    // say so before anything else, and remove nothing.
    let pins = nva::datapath::pin::require_pins(&bpffs);
    if nva::datapath::pin::in_private_mount_ns() {
        pins.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    }
    nva::agent::refuse_if_agent_running(&bpffs)
        .context("stop the agent first (it holds the links)")?;
    // Pins of other layout versions (an older nva) go too.
    let mut removed: Vec<PathBuf> = nva::datapath::pin::other_versions(&bpffs)
        .iter()
        .map(|v| bpffs.join(v))
        .collect();
    if let Ok(layout) = &pins {
        removed.insert(0, layout.root.clone());
    }
    let layout = PinLayout::new(&bpffs);
    if removed.is_empty() {
        println!("nothing pinned under {}", layout.root.display());
    } else {
        layout.remove_all(&bpffs);
        for path in &removed {
            println!("detached: removed {}", path.display());
        }
    }
    let _ = std::fs::remove_dir_all(nva::datapath::pin::state_dir(&bpffs));
    // Without the program, the NAT guard has nothing left to protect.
    if let Err(e) = nva::nat::guard::apply(&[]) {
        eprintln!(
            "warning: removing the nftables table {}: {e}",
            nva::nat::guard::TABLE
        );
    }
    Ok(())
}
