//! Loading the XDP program, installing compiled rule sets into its maps
//! (atomically, through the two table slots), attaching it, and reading its
//! counters.

mod attach;
pub mod batch;
mod counters;
pub mod egress;
mod install;
pub mod pin;

pub use attach::{pinned_link_target, Attachment};
pub use counters::{read_counters, read_forward_counters, read_nat_counters, read_packet_counters};

use std::time::Duration;

use aya::maps::{Array, MapData};
use aya::programs::links::PinnedLink;
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use nva_common::{map_names as names, DataPathConfig, XDP_PROGRAM};

use crate::classifier::compiler::CompiledRuleSet;
use crate::datapath::pin::PinLayout;
pub use crate::nat::NatTables;

/// The XDP object built by build.rs from nva-ebpf.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nva"));

/// Rule tables that exist once per slot (named `{NAME}_{slot}`).
const SLOT_MAPS: [&str; 10] = [
    names::SRC_V4,
    names::SRC_V6,
    names::DST_V4,
    names::DST_V6,
    names::PORT_CLASS,
    names::ICMP_CLASS,
    names::IFACE_CLASS,
    names::MANAGEMENT,
    names::NAT_DNAT,
    names::NAT_SNAT,
];
/// Maps that exist once. The rule actions and counters and the IPv4 range
/// arrays among them are maps of maps: one array per slot, created at each
/// rule set's length (see `install`).
const GLOBAL_MAPS: [&str; 18] = [
    names::ACTIVE,
    names::CONFIG,
    names::RULE_ACTIONS,
    names::RULE_CHECKS,
    names::RULE_COUNTERS,
    names::SRC_V4_RANGES,
    names::DST_V4_RANGES,
    names::SRC_V4_RANGE_CLASSES,
    names::DST_V4_RANGE_CLASSES,
    names::PACKET_COUNTERS,
    names::LOCAL_ADDRS,
    names::CONNTRACK,
    names::CONNTRACK_UNREPLIED,
    names::CONNTRACK_STATS,
    names::NAT_BINDINGS,
    names::NAT_COUNTERS,
    names::EGRESS,
    names::FORWARD_COUNTERS,
];

/// Size of the table of flows not answered yet, for a conntrack table of
/// `conntrack_max` answered flows: a quarter, and at least 1,024 (a burst of
/// handshakes in flight must fit), but never more than `conntrack_max`.
pub fn unreplied_capacity(conntrack_max: u32) -> u32 {
    (conntrack_max / 4).max(conntrack_max.min(1024))
}

/// Conntrack table size of [`DataPath::load`] (tests and one-shot tools).
pub const UNPINNED_CONNTRACK_MAX: u32 = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("XDP link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("BPF map {name}: {source}")]
    Map {
        name: String,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the XDP object")]
    Missing(String),
    #[error("interface {iface}: {message}")]
    Interface { iface: String, message: String },
    #[error("pinning {path}: {message}")]
    Pin { path: String, message: String },
    #[error("BPF map {name}: {source}")]
    Batch {
        name: String,
        source: std::io::Error,
    },
    #[error("rule set does not fit the data path: {0}")]
    Capacity(String),
}

fn map_err(name: &str) -> impl FnOnce(aya::maps::MapError) -> DataPathError + '_ {
    move |source| DataPathError::Map {
        name: name.to_string(),
        source,
    }
}

/// The file descriptor of a map, for the batch operations.
fn map_fd(map: &aya::maps::Map) -> Result<std::os::fd::BorrowedFd<'_>, DataPathError> {
    use aya::maps::Map;
    use std::os::fd::AsFd;
    match map {
        Map::HashMap(d) | Map::Array(d) | Map::LpmTrie(d) | Map::ArrayOfMaps(d) => {
            Ok(d.fd().as_fd())
        }
        _ => Err(DataPathError::Missing("a hash or array map".into())),
    }
}

fn slot_name(base: &str, slot: u32) -> String {
    format!("{base}_{slot}")
}

/// Every map pinned under the layout: the global maps, the join tables'
/// outer maps (their tables live as long as they hold them), then each
/// slot's maps.
fn pinned_map_names() -> Vec<String> {
    GLOBAL_MAPS
        .iter()
        .chain(install::JOIN_TABLES.iter())
        .map(|n| n.to_string())
        .chain(
            SLOT_MAPS
                .iter()
                .flat_map(|n| [slot_name(n, 0), slot_name(n, 1)]),
        )
        .collect()
}

/// What is known of a slot's arrays (by base table name), so a reload
/// writes only the entries that change (the port array has 65,536
/// entries).
type ArrayShadow = std::collections::HashMap<&'static str, Vec<u64>>;

/// A loaded XDP program with its maps.
pub struct DataPath {
    ebpf: Ebpf,
    shadow: [Option<ArrayShadow>; 2],
    /// Links this agent attached or adopted, by interface.
    links: Vec<(String, Option<PinnedLink>)>,
    /// `agent.forward` for the next install (`FORWARD_KERNEL` or
    /// `FORWARD_XDP`).
    forward: u8,
    /// Slot tables filled and waiting to be put in their maps of maps
    /// (table, slot, the new table), all at once (see `install`).
    pending_slot_tables: Vec<(&'static str, u32, std::os::fd::OwnedFd)>,
    /// Table writes of the slot being filled, run at once before the
    /// pending tables are put in their slots.
    pending_writes: batch::WriteQueue,
    /// The prefixes this process wrote to each slot's tries (by map name),
    /// so that clearing a slot deletes them without walking the trie, one
    /// syscall per key. Unknown (after a restart): the trie is walked.
    written_prefixes: std::collections::HashMap<String, WrittenPrefixes>,
    /// Prefixes found by walking a trie after its remembered keys were
    /// deleted (those a previous process wrote), since this process began.
    prefixes_walked: u64,
}

/// Keys written to one trie.
enum WrittenPrefixes {
    V4(Vec<aya::maps::lpm_trie::Key<[u8; 4]>>),
    V6(Vec<aya::maps::lpm_trie::Key<[u8; 16]>>),
}

impl DataPath {
    /// Loads the program. With `pins`, maps are reused from (or created and
    /// pinned under) the pin layout, so they outlive this process. A new
    /// conntrack table gets `conntrack_max` entries (and its table of flows
    /// not answered yet [`unreplied_capacity`]); a pinned one keeps its
    /// size (and its flows).
    pub fn open(pins: Option<&PinLayout>, conntrack_max: u32) -> Result<DataPath, DataPathError> {
        // Maps created now start zeroed, which the array shadows can assume.
        let fresh = pins.is_none_or(|p| !p.map(names::ACTIVE).exists());
        if let Some(p) = pins {
            let path = p.map(names::CONNTRACK);
            if let Ok(info) = aya::maps::MapInfo::from_pin(&path) {
                if info.max_entries() != conntrack_max {
                    tracing::warn!(
                        pinned = info.max_entries(),
                        configured = conntrack_max,
                        "policy.conntrack_max differs from the pinned conntrack table, which keeps its size and flows; `nva detach` and a restart apply the new size"
                    );
                }
            }
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(names::CONNTRACK, conntrack_max);
        loader.map_max_entries(
            names::CONNTRACK_UNREPLIED,
            unreplied_capacity(conntrack_max),
        );
        // A translated flow has two bindings; not preallocated.
        loader.map_max_entries(names::NAT_BINDINGS, conntrack_max.saturating_mul(2));
        let all = pinned_map_names();
        let paths: Vec<(String, std::path::PathBuf)> = match pins {
            Some(p) => all.iter().map(|n| (n.clone(), p.map(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name.as_str(), path.as_path());
        }
        let mut ebpf = loader.load(XDP_OBJECT)?;
        let prog: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| DataPathError::Missing(XDP_PROGRAM.into()))?
            .try_into()?;
        prog.load()?;
        let zeroed = fresh.then(|| {
            ArrayShadow::from([
                (
                    names::PORT_CLASS,
                    vec![0; nva_common::PORT_CLASS_ENTRIES as usize],
                ),
                (
                    names::ICMP_CLASS,
                    vec![0; nva_common::ICMP_CLASS_ENTRIES as usize],
                ),
            ])
        });
        Ok(DataPath {
            ebpf,
            shadow: [zeroed.clone(), zeroed],
            links: Vec::new(),
            forward: nva_common::FORWARD_KERNEL,
            pending_slot_tables: Vec::new(),
            pending_writes: Default::default(),
            written_prefixes: Default::default(),
            prefixes_walked: 0,
        })
    }

    /// Loads the program (unpinned) with `rules` installed; rule i counts
    /// into counter i. For tests and one-shot tools.
    pub fn load(
        rules: &CompiledRuleSet,
        generation: u64,
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<DataPath, DataPathError> {
        DataPath::load_with_nat(rules, &NatTables::default(), generation, ifindex_of)
    }

    /// Like [`load`](Self::load), with NAT atoms.
    pub fn load_with_nat(
        rules: &CompiledRuleSet,
        nat: &NatTables,
        generation: u64,
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<DataPath, DataPathError> {
        let mut dp = DataPath::open(None, UNPINNED_CONNTRACK_MAX)?;
        dp.set_local_addrs(&local_addrs())?;
        let counters: Vec<u32> = (0..rules.rule_actions.len() as u32).collect();
        dp.install(rules, nat, generation, &counters, ifindex_of)?;
        Ok(dp)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, DataPathError> {
        Ok(self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| DataPathError::Missing(XDP_PROGRAM.into()))?
            .try_into()?)
    }

    fn program(&self) -> Result<&Xdp, DataPathError> {
        Ok(self
            .ebpf
            .program(XDP_PROGRAM)
            .ok_or_else(|| DataPathError::Missing(XDP_PROGRAM.into()))?
            .try_into()?)
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map, DataPathError> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| DataPathError::Missing(name.to_string()))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map, DataPathError> {
        self.ebpf
            .map(name)
            .ok_or_else(|| DataPathError::Missing(name.to_string()))
    }

    /// Prefixes the clearing of old slots had to find by walking their
    /// tries, since this process began: those a previous process wrote.
    /// Prefixes this process wrote are deleted by key and never counted.
    pub fn prefixes_walked(&self) -> u64 {
        self.prefixes_walked
    }

    /// The active slot and its settings.
    pub fn active(&self) -> Result<(u32, DataPathConfig), DataPathError> {
        let active: Array<_, u32> =
            Array::try_from(self.map(names::ACTIVE)?).map_err(map_err(names::ACTIVE))?;
        let slot = active.get(&0, 0).map_err(map_err(names::ACTIVE))? & 1;
        let config: Array<_, DataPathConfig> =
            Array::try_from(self.map(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        let cfg = config.get(&slot, 0).map_err(map_err(names::CONFIG))?;
        Ok((slot, cfg))
    }

    /// Takes the ring buffer of sampled packet events (once).
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        let map = self.ebpf.take_map(names::EVENTS)?;
        aya::maps::RingBuf::try_from(map).ok()
    }

    /// Takes the reader of the program's rare diagnostics (aya-log
    /// records), which writes them to `logger` when flushed (once).
    pub fn take_diagnostics<T: log::Log>(&mut self, logger: T) -> Option<aya_log::EbpfLogger<T>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger).ok()
    }

    /// The kernel id of the loaded program.
    pub fn program_id(&self) -> Result<u32, DataPathError> {
        Ok(self.program()?.info()?.id())
    }

    /// Kernel memory of each map (`memlock` of its fdinfo: for hash maps
    /// without preallocation, what the entries present use).
    pub fn map_memory(&self) -> Vec<(String, u64)> {
        use aya::maps::{ArrayOfMaps, Map, MapData};
        use std::os::fd::{AsFd, AsRawFd};
        let memlock = |data: &MapData| -> Option<u64> {
            let fd = data.fd().as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))?
                .trim()
                .parse()
                .ok()
        };
        let mut out: Vec<(String, u64)> = self
            .ebpf
            .maps()
            .filter_map(|(name, map)| {
                let data = match map {
                    Map::HashMap(d)
                    | Map::Array(d)
                    | Map::LpmTrie(d)
                    | Map::PerCpuArray(d)
                    | Map::LruHashMap(d)
                    | Map::PerCpuLruHashMap(d)
                    | Map::DevMapHash(d)
                    | Map::RingBuf(d)
                    | Map::ArrayOfMaps(d) => d,
                    _ => return None,
                };
                Some((name.to_string(), memlock(data)?))
            })
            .collect();
        // Each slot's join tables and arrays (maps of maps), named like slot
        // maps.
        let slot_arrays = install::SLOT_ARRAYS
            .into_iter()
            .chain([names::RULE_COUNTERS]);
        for table in install::JOIN_TABLES.into_iter().chain(slot_arrays) {
            let Ok(map) = self.map(table) else { continue };
            let Ok(outer) = ArrayOfMaps::<&MapData, MapData>::try_from(map) else {
                continue;
            };
            for slot in 0..2 {
                if let Some(bytes) = outer.get(&slot, 0).ok().as_ref().and_then(memlock) {
                    out.push((slot_name(table, slot), bytes));
                }
            }
        }
        out.sort();
        out
    }

    /// Instructions the verifier processed to accept the program (its
    /// limit is 1,000,000): the margin left for the program to grow.
    pub fn verified_insns(&self) -> Result<Option<u32>, DataPathError> {
        Ok(self.program()?.info()?.verified_instruction_count())
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

    /// Like [`test_run`](Self::test_run), also returning the frame as the
    /// program left it (rewritten by NAT, for one).
    pub fn test_run_out(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<(u32, Vec<u8>), DataPathError> {
        let md: [u32; 6] = [0, frame.len() as u32, 0, ingress_ifindex, 0, 0];
        let md_bytes: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        if ingress_ifindex != 0 {
            opts.ctx_in = Some(&md_bytes);
        }
        let result = self.program()?.test_run(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Runs `frame` `repeat` times in the kernel; returns the action and
    /// the mean time per run as the kernel measured it.
    pub fn time_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), DataPathError> {
        timed_run(self.program()?, frame, repeat)
    }

    /// A new handle on one of the program's maps (by kernel id), for
    /// readers that must not borrow the data path, like the conntrack table.
    pub fn map_handle(&self, name: &str) -> Result<MapData, DataPathError> {
        let data = match self.map(name)? {
            aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::PerCpuArray(d) => d,
            _ => return Err(DataPathError::Missing(name.to_string())),
        };
        let id = data.info().map_err(map_err(name))?.id();
        MapData::from_id(id).map_err(map_err(name))
    }
}

fn timed_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration), DataPathError> {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.repeat = repeat;
    let result = prog.test_run(opts)?;
    Ok((result.return_value, result.duration))
}

/// A benchmark baseline from the same object, never attached by the agent:
/// parse and pass (against which per-packet costs are measured), or parse
/// and drop (the floor of an interface's XDP path in end-to-end runs).
pub struct Baseline {
    ebpf: Ebpf,
    program: &'static str,
}

impl Baseline {
    pub fn parse_pass() -> Result<Baseline, DataPathError> {
        Baseline::load(nva_common::XDP_PARSE_PASS_PROGRAM)
    }

    pub fn parse_drop() -> Result<Baseline, DataPathError> {
        Baseline::load(nva_common::XDP_PARSE_DROP_PROGRAM)
    }

    fn load(program: &'static str) -> Result<Baseline, DataPathError> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(names::CONNTRACK, 1);
        loader.map_max_entries(names::CONNTRACK_UNREPLIED, 1);
        let ebpf = loader.load(XDP_OBJECT)?;
        let mut baseline = Baseline { ebpf, program };
        baseline.program_mut()?.load()?;
        Ok(baseline)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, DataPathError> {
        Ok(self
            .ebpf
            .program_mut(self.program)
            .ok_or_else(|| DataPathError::Missing(self.program.into()))?
            .try_into()?)
    }

    /// Like [`DataPath::time_run`].
    pub fn time_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), DataPathError> {
        let prog: &Xdp = self
            .ebpf
            .program(self.program)
            .ok_or_else(|| DataPathError::Missing(self.program.into()))?
            .try_into()?;
        timed_run(prog, frame, repeat)
    }

    /// Attaches in driver mode to `iface` (of the calling thread's network
    /// namespace) until dropped.
    pub fn attach(&mut self, iface: &str) -> Result<(), DataPathError> {
        self.program_mut()?
            .attach(iface, XdpMode::Driver)
            .map(|_| ())
            .map_err(|e| DataPathError::Interface {
                iface: iface.to_string(),
                message: format!("cannot attach XDP: {e}"),
            })
    }
}

/// Opens a pinned map of a running (or stopped) agent.
pub fn open_pinned(pins: &PinLayout, name: &str) -> Result<aya::maps::MapData, DataPathError> {
    let path = pins.map(name);
    aya::maps::MapData::from_pin(&path).map_err(|source| DataPathError::Map {
        name: path.display().to_string(),
        source,
    })
}

/// Every address configured in the current network namespace.
pub fn local_addrs() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| ifa.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// Resolves interface names in the current network namespace.
pub fn ifindex_by_name(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pinned map of the program: (name, map type, key size, value
    /// size), from the object's own definitions.
    fn pinned_maps() -> Vec<(String, u32, u32, u32)> {
        let object = aya_obj::Object::parse(XDP_OBJECT).expect("parse the XDP object");
        pinned_map_names()
            .into_iter()
            .map(|name| {
                let map = object.maps.get(&name).unwrap_or_else(|| {
                    panic!("map {name} (nva_common::map_names) is not in the XDP object")
                });
                (name, map.map_type(), map.key_size(), map.value_size())
            })
            .collect()
    }

    /// FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
    fn fingerprint(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    #[test]
    fn pinned_layout_changes_only_with_a_new_version() {
        let mut text: String = pinned_maps()
            .iter()
            .map(|(n, t, k, v)| format!("{n} type {t} key {k} value {v}\n"))
            .collect();
        // The configuration's field offsets too (recorded from v6 on): a
        // field can move, and change its meaning, without changing a size.
        {
            use std::mem::offset_of;
            use DataPathConfig as C;
            text += &format!(
                "config prefix_rules {} timeouts_s {}\n",
                offset_of!(C, prefix_rules),
                offset_of!(C, timeouts_s)
            );
        }
        // And the flags of the maps of maps' inner templates (from v10 on,
        // when the join tables became preallocated): the kernel refuses an
        // inner table whose flags differ from the template pinned.
        {
            let object = aya_obj::Object::parse(XDP_OBJECT).expect("parse the XDP object");
            for name in pinned_map_names() {
                if let Some(inner) = object.maps.get(&name).and_then(|m| m.inner()) {
                    text += &format!("{name} inner flags {}\n", inner.map_flags());
                    // And their key and value sizes (from v11 on, when the
                    // pair entries grew).
                    text += &format!(
                        "{name} inner key {} value {}\n",
                        inner.key_size(),
                        inner.value_size()
                    );
                }
            }
        }
        let found = fingerprint(&text);
        let recorded = crate::datapath::pin::LAYOUT_FINGERPRINTS
            .iter()
            .find(|(v, _)| *v == crate::datapath::pin::LAYOUT_VERSION)
            .map(|(_, f)| *f);
        assert_eq!(
            recorded,
            Some(found),
            "the pinned maps are not those recorded for layout {}: an agent would adopt pins it misreads. Bump nva_common::LAYOUT_VERSION and append (\"NEW\", {found:#x}) to pin::LAYOUT_FINGERPRINTS (never edit a recorded entry). The maps now:\n{text}",
            crate::datapath::pin::LAYOUT_VERSION
        );
        let mut seen = std::collections::HashSet::new();
        for (version, f) in crate::datapath::pin::LAYOUT_FINGERPRINTS {
            assert!(seen.insert(*f), "layout {version} repeats an older layout");
        }
    }
}
