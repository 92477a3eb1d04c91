//! `nva conntrack list|count|flush`: the flow table, from the pins.

use anyhow::Context as _;
use nva::agent::read_state;

use super::bpffs_of;
use crate::ConntrackCommand;

pub(crate) fn conntrack(action: ConntrackCommand) -> anyhow::Result<()> {
    use nva::conntrack::{active_timeouts, now_ns, remaining_ns, view, Table};
    let path = match &action {
        ConntrackCommand::List { config, .. }
        | ConntrackCommand::Count { config }
        | ConntrackCommand::Flush { config } => config,
    };
    let bpffs = bpffs_of(path)?;
    let layout = nva::datapath::pin::require_pins(&bpffs)?;
    let mut table = Table::open(&layout).with_context(|| {
        format!(
            "no data path pinned under {} (is the agent configured with agent.bpffs = {:?}?)",
            layout.root.display(),
            bpffs.display().to_string()
        )
    })?;
    let timeouts = active_timeouts(&layout)?;
    match action {
        ConntrackCommand::Flush { .. } => {
            let n = table.flush()?;
            println!("flushed {n} flows");
        }
        ConntrackCommand::Count { .. } => {
            let now = now_ns();
            let live = table
                .entries()?
                .iter()
                .filter(|(_, e)| remaining_ns(e, &timeouts, now) > 0)
                .count();
            println!("{live}");
        }
        ConntrackCommand::List { json, .. } => {
            let state = read_state(&bpffs).unwrap_or_default();
            // One map, not a search of the rules per flow.
            let names: std::collections::HashMap<u32, &str> = state
                .rules
                .iter()
                .map(|r| (r.counter, r.name.as_str()))
                .collect();
            let name = |counter: u32| names.get(&counter).map(|n| n.to_string());
            let nat_names: std::collections::HashMap<u32, &str> = state
                .nat
                .iter()
                .map(|r| (r.counter, r.name.as_str()))
                .collect();
            let nat_name = |counter: u32| nat_names.get(&counter).map(|n| n.to_string());
            let bindings = table.bindings()?;
            let now = now_ns();
            let mut flows: Vec<_> = table
                .entries()?
                .iter()
                .filter(|(_, e)| remaining_ns(e, &timeouts, now) > 0)
                .map(|(k, e)| {
                    let v = view(k, e, &timeouts, now, &name);
                    match bindings.get(k) {
                        Some(b) if e.nat != 0 => v.with_nat(b, k.family, k.proto, &nat_name),
                        _ => v,
                    }
                })
                .collect();
            flows.sort_by(|a, b| a.age_s.total_cmp(&b.age_s).reverse());
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
                return Ok(());
            }
            println!(
                "{:<12} {:<45} {:<45} {:<11} {:>9} {:>9} {:<20} {:>21} {:>21}",
                "PROTO",
                "ORIGINATOR",
                "RESPONDER",
                "STATE",
                "AGE",
                "EXPIRES",
                "RULE",
                "PACKETS/BYTES ORIG",
                "PACKETS/BYTES REPLY"
            );
            // Translated flows get a second line: the tuple their
            // originator's packets leave with, and the NAT entries.
            for f in &flows {
                println!(
                    "{:<12} {:<45} {:<45} {:<11} {:>8.1}s {:>8.1}s {:<20} {:>21} {:>21}",
                    f.proto,
                    f.src,
                    f.dst,
                    f.state,
                    f.age_s,
                    f.expires_in_s,
                    f.rule,
                    format!("{}/{}", f.packets_orig, f.bytes_orig),
                    format!("{}/{}", f.packets_reply, f.bytes_reply)
                );
                if let (Some(nat), Some(src), Some(dst)) =
                    (&f.nat, &f.translated_src, &f.translated_dst)
                {
                    println!("{:<12} {src:<45} {dst:<45} nat: {nat}", "  ↳ as");
                }
            }
            eprintln!("{} flows", flows.len());
        }
    }
    Ok(())
}
