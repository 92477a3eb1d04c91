//! `nva rules`: each rule of the running data path with its counters.

use std::path::Path;

use nva::agent::read_state;

use super::bpffs_of;

pub(crate) fn rules(path: &Path, json: bool) -> anyhow::Result<()> {
    let bpffs = &bpffs_of(path)?;
    let layout = nva::datapath::pin::require_pins(bpffs)?;
    let state = read_state(bpffs)?;
    let map = nva::datapath::open_pinned(&layout, nva_common::map_names::RULE_COUNTERS)?;
    let map = aya::maps::Map::ArrayOfMaps(map);
    let indices: Vec<u32> = state.rules.iter().map(|r| r.counter).collect();
    let counters = nva::datapath::read_counters(&map, &indices)?;
    if json {
        let rows: Vec<_> = state
            .rules
            .iter()
            .zip(&counters)
            .map(|(r, c)| serde_json::json!({"name": r.name, "action": r.action, "packets": c.packets, "bytes": c.bytes}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("generation {}", state.generation);
        println!(
            "{:<32} {:<6} {:>14} {:>16}",
            "RULE", "ACTION", "PACKETS", "BYTES"
        );
        for (r, c) in state.rules.iter().zip(&counters) {
            println!(
                "{:<32} {:<6} {:>14} {:>16}",
                r.name, r.action, c.packets, c.bytes
            );
        }
    }
    Ok(())
}
