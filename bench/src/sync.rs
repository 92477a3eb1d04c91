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
            "The lag under a steady load of new flows is the next section; the pauses of established connections across a failover are in the failover section.".into(),
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

/// New flows per second the lag is measured under.
const NEW_FLOWS_PER_S: u64 = 10_000;

/// The lag from a flow's creation on the active side (its first packet
/// through the active program) to its presence in the standby's table,
/// under `NEW_FLOWS_PER_S` new flows per second, through the real sync
/// service (sender, TCP on loopback, receiver) at the default interval.
pub fn lag(quick: bool) -> Result<Section> {
    use std::collections::HashMap;
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use nva::sync::service::{self, Exporter, Importer, SyncStats};
    use nva_tests::frames;

    let seconds: u64 = if quick { 1 } else { 4 };
    let interval = Duration::from_millis(100);
    let flows = (NEW_FLOWS_PER_S * seconds) as usize;
    eprintln!("bench: sync lag under {NEW_FLOWS_PER_S} new flows/s for {seconds} s");
    let config =
        Arc::new(parse_config("bench.toml", CONFIG).map_err(|e| anyhow::anyhow!("{e:?}"))?);
    let compiled = compile(&config.rules, &config.policy)?;
    let active = Arc::new(Mutex::new(DataPath::load(&compiled, 1, &|_| None)?));
    let standby = Arc::new(Mutex::new(DataPath::load(&compiled, 1, &|_| None)?));
    let timeouts: Arc<Vec<u32>> = Arc::new(config.policy.timeouts.by_state().to_vec());

    // Each side's view of the config, for the closures on the runtime's
    // threads.
    fn context<'a>(config: &'a nva::policy::model::Config, timeouts: &'a [u32]) -> Context<'a> {
        Context {
            config,
            rules: &[],
            nat: &[],
            generation: 1,
            timeouts_s: timeouts,
            ifindex_of: &|_| None,
        }
    }
    let (a, cfg, to) = (active.clone(), config.clone(), timeouts.clone());
    let export: Exporter = Arc::new(move || {
        let dp = a.lock().expect("lock");
        let table = Table::of(&dp)?;
        Ok(nva::sync::flows::export_all(
            &table,
            &context(&cfg, &to),
            now_ns(),
        )?)
    });
    // Created flows by source port (one source address), and their lags.
    let created: Arc<Mutex<HashMap<u16, Instant>>> = Arc::default();
    let lags: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (b, c, l) = (standby.clone(), created.clone(), lags.clone());
    let (cfg, to) = (config.clone(), timeouts.clone());
    let import: Importer = Arc::new(move |records| {
        let dp = b.lock().expect("lock");
        let mut table = Table::of(&dp)?;
        let done = import(&mut table, &context(&cfg, &to), records, now_ns())?;
        let now = Instant::now();
        let mut created = c.lock().expect("lock");
        let mut lags = l.lock().expect("lock");
        for r in records {
            if let Some(t) = created.remove(&r.sport) {
                lags.push(now.duration_since(t).as_secs_f64() * 1e3);
            }
        }
        Ok(done)
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let key = Key::new(b"the bench pair's shared secret");
    let stats = Arc::new(SyncStats::default());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let peer = listener.local_addr()?;
    runtime.spawn(service::receive(
        listener,
        key.clone(),
        import,
        stats.clone(),
    ));
    runtime.spawn(service::send(peer, key, interval, export, stats.clone()));
    let connected = Instant::now();
    while !stats.peer_up.load(std::sync::atomic::Ordering::Relaxed) {
        anyhow::ensure!(
            connected.elapsed() < Duration::from_secs(5),
            "the sync sender did not connect"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // New flows at a steady rate: SYNs through the active program, paced
    // against the clock (1 ms steps).
    let (src, dst) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(192, 0, 2, 7));
    let start = Instant::now();
    let mut made = 0usize;
    while made < flows {
        let due = ((start.elapsed().as_secs_f64() * NEW_FLOWS_PER_S as f64) as usize).min(flows);
        while made < due {
            // Ports 1024.. : one source address, a port per flow.
            let sport = 1024 + made as u16;
            let frame = frames::with_checksums(frames::ethernet(
                &[],
                frames::ETH_P_IP,
                &frames::ipv4(src, dst, 6, &[], 0, &frames::tcp(sport, 443, 0x02)),
            ));
            let verdict = active.lock().expect("lock").test_run(&frame, 0)?;
            anyhow::ensure!(
                verdict == 2,
                "the active program passes a new flow's SYN (got {verdict})"
            );
            created.lock().expect("lock").insert(sport, Instant::now());
            made += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let offered = start.elapsed();
    // Wait for the last ones (a few intervals).
    let drained = Instant::now();
    while !created.lock().expect("lock").is_empty() && drained.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    runtime.shutdown_background();
    let missing = created.lock().expect("lock").len();
    let mut lags = lags.lock().expect("lock").clone();
    anyhow::ensure!(!lags.is_empty(), "no flow reached the standby");
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    let rate = flows as f64 / offered.as_secs_f64();
    Ok(Section {
        title: "Connection-state sync: lag under load".into(),
        intro: format!(
            "{flows} new TCP flows offered at {rate:.0} per second (SYNs through the active side's loaded program, BPF_PROG_TEST_RUN), synced by the agent's own sync service (sender, TCP on loopback, receiver; interval_ms = {}) into a second loaded program's table. Lag: from the SYN's verdict on the active side to the end of the import that put the flow in the standby's table; milliseconds.",
            interval.as_millis()
        ),
        columns: ["median", "p99", "max", "flows not synced after 3 s"].map(String::from).to_vec(),
        rows: vec![vec![
            format!("{:.1}", pct(0.5)),
            format!("{:.1}", pct(0.99)),
            format!("{:.1}", lags[lags.len() - 1]),
            missing.to_string(),
        ]],
        notes: vec![
            "A flow waits for the sender's next tick (up to one interval, half of one on average), then for one export of the whole table (every live flow is read each interval, so the export grows with the table), the transfer and the import.".into(),
        ],
        figure: None,
        data: json!({
            "flows": flows,
            "offered_per_s": rate,
            "interval_ms": interval.as_millis() as u64,
            "median_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "max_ms": lags[lags.len() - 1],
            "missing": missing,
        }),
    })
}
