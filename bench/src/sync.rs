//! Connection-state sync's throughput on this machine: a table of
//! established flows exported from one loaded program, sealed into frames,
//! opened, decoded and imported into another's, each step timed. The CPU
//! cost per synced flow is the sum of the steps over the flows.

use std::time::Instant;

use anyhow::Result;
use nva::classifier::compiler::compile;
use nva::conntrack::{now_ns, Table};
use nva::datapath::DataPath;
use nva::policy::config::parse_config;
use nva::sync::codec::{decode_flows, encode_flows, Key, Kind, Opener, Sealer};
use nva::sync::flows::{export, import, Context};
use nva_common::{ConntrackEntry, ConntrackKey, ConntrackState};
use serde_json::json;

use crate::report::{Section, Verdict};

const CONFIG: &str =
    "[agent]\ninterfaces = [\"eth0\"]\n[policy]\ndefault = \"allow\"\nstateful = true\n";

pub fn run(quick: bool) -> Result<(Section, Vec<Verdict>)> {
    let flows: usize = if quick { 5_000 } else { 50_000 };
    let config = parse_config("bench.toml", CONFIG).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let compiled = compile(&config.rules, &config.policy)?;
    let a = DataPath::load(&compiled, 1, &|_| None)?;
    let b = DataPath::load(&compiled, 1, &|_| None)?;
    let timeouts = config.policy.timeouts.by_state();
    let cx = Context {
        config: &config,
        rules: &[],
        nat: &[],
        generation: 1,
        timeouts_s: &timeouts,
        ifindex_of: &|_| None,
    };
    // The active side's table: established TCP flows.
    let mut table_a = Table::of(&a)?;
    let now = now_ns();
    for i in 0..flows {
        let mut key = ConntrackKey::default();
        let src = [
            10,
            1,
            (i >> 8) as u8,
            i as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        let dst = [192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let lo = key.set_from_packet(
            false,
            6,
            [0, 0],
            &src,
            40000 + (i % 20000) as u16,
            &dst,
            443,
        );
        let entry = ConntrackEntry {
            created_ns: now,
            last_seen_ns: now,
            generation: 1,
            state: ConntrackState::TcpEstablished as u8,
            origin_is_lo: lo as u8,
            rule_counter: nva_common::NO_RULE,
            ..Default::default()
        };
        table_a.insert(&key, &entry)?;
    }
    let key = Key::new(b"the bench pair's shared secret");
    let mut sealer = Sealer::new(key.clone(), [1; 16], [2; 16]);
    let mut opener = Opener::new(key, [1; 16]);

    let t = Instant::now();
    let records = export(&table_a, &cx, now_ns())?;
    let t_export = t.elapsed();
    let t = Instant::now();
    let frames: Vec<Vec<u8>> = records
        .chunks(1000)
        .map(|c| sealer.seal(Kind::Flows, &encode_flows(c)))
        .collect::<Result<_, _>>()?;
    let t_seal = t.elapsed();
    let bytes: usize = frames.iter().map(Vec::len).sum();
    let t = Instant::now();
    let mut received = Vec::with_capacity(records.len());
    for f in &frames {
        received.extend(decode_flows(&opener.open(f)?.payload)?);
    }
    let t_open = t.elapsed();
    let mut table_b = Table::of(&b)?;
    let t = Instant::now();
    let done = import(&mut table_b, &cx, &received, now_ns())?;
    let t_import = t.elapsed();
    anyhow::ensure!(
        done.imported == flows && records.len() == flows,
        "synced {} of {flows} flows ({} exported)",
        done.imported,
        records.len()
    );
    let per_s = |d: std::time::Duration| flows as f64 / d.as_secs_f64().max(1e-9);
    let total = t_export + t_seal + t_open + t_import;
    let rows = vec![
        vec![
            "export (table scan)".into(),
            format!("{:.0}", per_s(t_export)),
        ],
        vec![
            "encode and seal (HMAC-SHA256)".into(),
            format!("{:.0}", per_s(t_seal)),
        ],
        vec!["open and decode".into(), format!("{:.0}", per_s(t_open))],
        vec![
            "import (rules checked, map updates)".into(),
            format!("{:.0}", per_s(t_import)),
        ],
        vec!["all steps".into(), format!("{:.0}", per_s(total))],
    ];
    let section = Section {
        title: "Connection-state sync".into(),
        intro: format!(
            "{flows} established flows synced from one loaded program's table to another's in this process: flows per second per step, one CPU. {:.1} µs of CPU per synced flow; {:.0} bytes per flow on the wire.",
            total.as_secs_f64() * 1e6 / flows as f64,
            bytes as f64 / flows as f64
        ),
        columns: vec!["step".into(), "flows/s".into()],
        rows,
        notes: vec![
            "The lag from a flow's creation on the active NVA to its presence on the standby is at most one interval (sync.interval_ms, 100 ms by default) plus one export of the table and the transfer; it was not measured under a live load of new flows.".into(),
            "The pauses of established connections across a failover, per failure kind, are measured by the failover_sync test (cargo xtask test) and reported in its output.".into(),
        ],
        figure: None,
        data: json!({
            "flows": flows,
            "export_s": t_export.as_secs_f64(),
            "seal_s": t_seal.as_secs_f64(),
            "open_s": t_open.as_secs_f64(),
            "import_s": t_import.as_secs_f64(),
            "bytes": bytes,
        }),
    };
    Ok((section, Vec::new()))
}
