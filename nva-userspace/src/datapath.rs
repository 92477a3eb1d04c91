//! Loading the XDP program, writing a compiled rule set into its maps,
//! attaching it, and reading its counters.

use std::collections::HashMap as StdHashMap;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use nva_common::{
    l4_pattern, map_names as names, ClassMatch, DataPathConfig, L4Key, ManagementKey, PairKey,
    PairMatch, RuleAction, RuleCounters, VerdictKey, FRAGMENTS_ALLOW, FRAGMENTS_DROP,
    PACKET_REASONS, PAIR_GROUP_BOTH, PAIR_GROUP_DST_ONLY, PAIR_GROUP_SRC_ONLY, XDP_PROGRAM,
};

use crate::compiler::CompiledRuleSet;
use crate::model::XdpModeSetting;

/// The XDP object built by build.rs from nva-ebpf.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nva"));

#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the XDP object")]
    MissingMap(&'static str),
    #[error("interface {iface}: {message}")]
    Interface { iface: String, message: String },
    #[error("pinning under {path}: {message}")]
    Pin { path: String, message: String },
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataPathError {
    move |source| DataPathError::Map { name, source }
}

/// A loaded (not necessarily attached) XDP program with its maps.
pub struct DataPath {
    ebpf: Ebpf,
}

impl DataPath {
    /// Loads the program with tables sized for `rules`, writes the rules and
    /// marks the rule set ready. `ifindex_of` resolves `in_iface` names.
    pub fn load(
        rules: &CompiledRuleSet,
        generation: u64,
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<DataPath, DataPathError> {
        // Hash and trie sizes follow the compiled tables (at least 1 entry).
        let size = |n: usize| (n.max(1)) as u32;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::SRC_V4, size(rules.src_v4.len()))
            .map_max_entries(names::SRC_V6, size(rules.src_v6.len()))
            .map_max_entries(names::DST_V4, size(rules.dst_v4.len()))
            .map_max_entries(names::DST_V6, size(rules.dst_v6.len()))
            .map_max_entries(names::PAIRS, size(rules.pairs.len()))
            .map_max_entries(names::DST_ONLY, size(rules.dst_only.len()))
            .map_max_entries(names::SRC_ONLY, size(rules.src_only.len()))
            .map_max_entries(names::L4, size(rules.l4.len()))
            .map_max_entries(names::VERDICTS, size(rules.verdicts.len()));
        let ebpf = loader.load(XDP_OBJECT)?;
        let mut dp = DataPath { ebpf };
        dp.write_rules(rules, generation, ifindex_of)?;
        let prog: &mut Xdp = dp.program_mut()?;
        prog.load()?;
        Ok(dp)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, DataPathError> {
        let prog = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(DataPathError::MissingMap(XDP_PROGRAM))?;
        Ok(prog.try_into()?)
    }

    fn program(&self) -> Result<&Xdp, DataPathError> {
        let prog = self
            .ebpf
            .program(XDP_PROGRAM)
            .ok_or(DataPathError::MissingMap(XDP_PROGRAM))?;
        Ok(prog.try_into()?)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataPathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataPathError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataPathError> {
        self.ebpf.map(name).ok_or(DataPathError::MissingMap(name))
    }

    fn write_rules(
        &mut self,
        rules: &CompiledRuleSet,
        generation: u64,
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), DataPathError> {
        macro_rules! fill_lpm {
            ($name:expr, $entries:expr) => {{
                let mut trie: LpmTrie<_, _, u32> =
                    LpmTrie::try_from(self.map_mut($name)?).map_err(map_err($name))?;
                for e in $entries {
                    trie.insert(&Key::new(e.len as u32, e.addr), e.class, 0)
                        .map_err(map_err($name))?;
                }
            }};
        }
        fill_lpm!(names::SRC_V4, &rules.src_v4);
        fill_lpm!(names::SRC_V6, &rules.src_v6);
        fill_lpm!(names::DST_V4, &rules.dst_v4);
        fill_lpm!(names::DST_V6, &rules.dst_v6);

        let mut ports: Array<_, u32> = Array::try_from(self.map_mut(names::PORT_CLASS)?)
            .map_err(map_err(names::PORT_CLASS))?;
        for (i, c) in rules.port_class.iter().enumerate() {
            // Class 0 is the array's initial value: skip the writes.
            if *c != 0 {
                ports
                    .set(i as u32, c, 0)
                    .map_err(map_err(names::PORT_CLASS))?;
            }
        }
        let mut icmp: Array<_, u32> = Array::try_from(self.map_mut(names::ICMP_CLASS)?)
            .map_err(map_err(names::ICMP_CLASS))?;
        for (i, c) in rules.icmp_class.iter().enumerate() {
            icmp.set(i as u32, c, 0)
                .map_err(map_err(names::ICMP_CLASS))?;
        }
        let mut ifaces: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(names::IFACE_CLASS)?)
            .map_err(map_err(names::IFACE_CLASS))?;
        for (name, class) in &rules.iface_class {
            // An interface that does not exist (yet) cannot receive packets.
            if let Some(ifindex) = ifindex_of(name) {
                ifaces
                    .insert(ifindex, class, 0)
                    .map_err(map_err(names::IFACE_CLASS))?;
            }
        }
        let mut pairs: HashMap<_, PairKey, PairMatch> =
            HashMap::try_from(self.map_mut(names::PAIRS)?).map_err(map_err(names::PAIRS))?;
        for (k, v) in &rules.pairs {
            pairs.insert(k, v, 0).map_err(map_err(names::PAIRS))?;
        }
        for (name, table) in [
            (names::DST_ONLY, &rules.dst_only),
            (names::SRC_ONLY, &rules.src_only),
        ] {
            let mut map: HashMap<_, u32, PairMatch> =
                HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for (k, v) in table {
                map.insert(k, v, 0).map_err(map_err(name))?;
            }
        }
        let mut l4: HashMap<_, L4Key, ClassMatch> =
            HashMap::try_from(self.map_mut(names::L4)?).map_err(map_err(names::L4))?;
        for (k, v) in &rules.l4 {
            l4.insert(k, v, 0).map_err(map_err(names::L4))?;
        }
        let mut verdicts: HashMap<_, VerdictKey, u32> =
            HashMap::try_from(self.map_mut(names::VERDICTS)?).map_err(map_err(names::VERDICTS))?;
        for (k, v) in &rules.verdicts {
            verdicts.insert(k, v, 0).map_err(map_err(names::VERDICTS))?;
        }
        let mut actions: Array<_, RuleAction> = Array::try_from(self.map_mut(names::RULE_ACTIONS)?)
            .map_err(map_err(names::RULE_ACTIONS))?;
        for (i, a) in rules.rule_actions.iter().enumerate() {
            actions
                .set(i as u32, a, 0)
                .map_err(map_err(names::RULE_ACTIONS))?;
        }
        let mut mgmt: HashMap<_, ManagementKey, u8> =
            HashMap::try_from(self.map_mut(names::MANAGEMENT)?)
                .map_err(map_err(names::MANAGEMENT))?;
        for k in &rules.management {
            mgmt.insert(k, 1, 0).map_err(map_err(names::MANAGEMENT))?;
        }
        // Last: the program uses the tables only once `ready` is set.
        let mut config: Array<_, DataPathConfig> =
            Array::try_from(self.map_mut(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        let value = DataPathConfig {
            generation,
            catch_all_rule: rules.catch_all_rule,
            proto_catch_all: rules.proto_catch_all,
            default_action: rules.default_action,
            fragments: if rules.fragments_allow {
                FRAGMENTS_ALLOW
            } else {
                FRAGMENTS_DROP
            },
            ready: 1,
            l4_patterns: rules.l4.keys().fold(0, |m, k| m | 1 << l4_pattern(k)),
            pair_groups: [
                (PAIR_GROUP_BOTH, rules.pairs.is_empty()),
                (PAIR_GROUP_DST_ONLY, rules.dst_only.is_empty()),
                (PAIR_GROUP_SRC_ONLY, rules.src_only.is_empty()),
            ]
            .iter()
            .filter(|(_, empty)| !empty)
            .fold(0, |m, (bit, _)| m | bit),
            _pad: [0; 7],
        };
        config.set(0, value, 0).map_err(map_err(names::CONFIG))?;
        Ok(())
    }

    /// Attaches to `iface`; `auto` tries driver mode, then generic (skb).
    pub fn attach(&mut self, iface: &str, mode: XdpModeSetting) -> Result<XdpMode, DataPathError> {
        let prog = self.program_mut()?;
        let attempts: &[XdpMode] = match mode {
            XdpModeSetting::Auto => &[XdpMode::Driver, XdpMode::Skb],
            XdpModeSetting::Driver => &[XdpMode::Driver],
            XdpModeSetting::Skb => &[XdpMode::Skb],
        };
        let mut last = String::new();
        for &m in attempts {
            match prog.attach(iface, m) {
                Ok(_) => return Ok(m),
                Err(e) => {
                    last = format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    )
                }
            }
        }
        Err(DataPathError::Interface {
            iface: iface.to_string(),
            message: format!("cannot attach XDP ({last})"),
        })
    }

    /// Pins the counter maps under `dir` so that `nva rules` can read them.
    pub fn pin_counters(&self, dir: &std::path::Path) -> Result<(), DataPathError> {
        std::fs::create_dir_all(dir).map_err(|e| DataPathError::Pin {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        for name in [names::RULE_COUNTERS, names::PACKET_COUNTERS] {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            self.map(name)?.pin(&path).map_err(|e| DataPathError::Pin {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Runs one frame through the loaded program (BPF_PROG_TEST_RUN) and
    /// returns its XDP action. `ingress_ifindex` 0 means the default device.
    pub fn test_run(&self, frame: &[u8], ingress_ifindex: u32) -> Result<u32, DataPathError> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ingress_ifindex, 0, 0];
        let md_bytes: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        if ingress_ifindex != 0 {
            opts.ctx_in = Some(&md_bytes);
        }
        let result = self.program()?.test_run(opts)?;
        Ok(result.return_value)
    }

    /// Per-rule counters summed over CPUs.
    pub fn rule_counters(&self, n_rules: usize) -> Result<Vec<RuleCounters>, DataPathError> {
        read_rule_counters(
            self.map(names::RULE_COUNTERS)?
                .try_into()
                .map_err(map_err(names::RULE_COUNTERS))?,
            n_rules,
        )
    }

    /// Packet counters by reason, summed over CPUs.
    pub fn packet_counters(&self) -> Result<Vec<u64>, DataPathError> {
        read_packet_counters(
            self.map(names::PACKET_COUNTERS)?
                .try_into()
                .map_err(map_err(names::PACKET_COUNTERS))?,
        )
    }
}

/// Sums a per-CPU rule counter array.
pub fn read_rule_counters<T: std::borrow::Borrow<MapData>>(
    map: PerCpuArray<T, RuleCounters>,
    n_rules: usize,
) -> Result<Vec<RuleCounters>, DataPathError> {
    (0..n_rules as u32)
        .map(|i| {
            let per_cpu: PerCpuValues<RuleCounters> =
                map.get(&i, 0).map_err(map_err(names::RULE_COUNTERS))?;
            Ok(per_cpu
                .iter()
                .fold(RuleCounters::default(), |acc, c| RuleCounters {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                }))
        })
        .collect()
}

/// Sums the per-CPU packet counters by reason.
pub fn read_packet_counters<T: std::borrow::Borrow<MapData>>(
    map: PerCpuArray<T, u64>,
) -> Result<Vec<u64>, DataPathError> {
    (0..PACKET_REASONS)
        .map(|i| {
            let per_cpu = map.get(&i, 0).map_err(map_err(names::PACKET_COUNTERS))?;
            Ok(per_cpu.iter().sum())
        })
        .collect()
}

/// Resolves interface names in the current network namespace.
pub fn ifindex_by_name(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// A map from interface names to indexes, for tests and fixed setups.
pub fn ifindex_table(table: StdHashMap<String, u32>) -> impl Fn(&str) -> Option<u32> {
    move |name| table.get(name).copied()
}
