//! Loading the XDP program, installing compiled rule sets into its maps
//! (atomically, through the two table slots), attaching it, and reading its
//! counters.

use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use nva_common::{
    l4_pattern, map_names as names, ClassMatch, DataPathConfig, L4Key, ManagementKey, PairKey,
    PairMatch, RuleAction, RuleCounters, VerdictKey, FRAGMENTS_ALLOW, FRAGMENTS_DROP, MAX_RULES,
    PACKET_REASONS, PAIR_GROUP_BOTH, PAIR_GROUP_DST_ONLY, PAIR_GROUP_SRC_ONLY, XDP_PROGRAM,
};

use crate::compiler::CompiledRuleSet;
use crate::model::XdpModeSetting;
use crate::pin::PinLayout;

/// The XDP object built by build.rs from nva-ebpf.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nva"));

/// Rule tables that exist once per slot (named `{NAME}_{slot}`).
const SLOT_MAPS: [&str; 14] = [
    names::SRC_V4,
    names::SRC_V6,
    names::DST_V4,
    names::DST_V6,
    names::PORT_CLASS,
    names::ICMP_CLASS,
    names::IFACE_CLASS,
    names::PAIRS,
    names::DST_ONLY,
    names::SRC_ONLY,
    names::L4,
    names::VERDICTS,
    names::RULE_ACTIONS,
    names::MANAGEMENT,
];
const GLOBAL_MAPS: [&str; 7] = [
    names::ACTIVE,
    names::CONFIG,
    names::RULE_COUNTERS,
    names::PACKET_COUNTERS,
    names::LOCAL_ADDRS,
    names::CONNTRACK,
    names::CONNTRACK_STATS,
];

/// Conntrack table size of [`DataPath::load`] (tests and one-shot tools).
pub const UNPINNED_CONNTRACK_MAX: u32 = 65_536;

/// Extra margin after the RCU grace period below.
const GRACE: Duration = Duration::from_millis(5);

/// Waits until every XDP program run that may have read the old ACTIVE value
/// has finished: membarrier(MEMBARRIER_CMD_GLOBAL) waits for an RCU grace
/// period, and XDP runs inside RCU read-side sections.
fn wait_for_running_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // Without it, a generous sleep: XDP runs complete in microseconds.
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(GRACE);
}

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
        Map::HashMap(d) | Map::Array(d) | Map::LpmTrie(d) => Ok(d.fd().as_fd()),
        _ => Err(DataPathError::Missing("a hash or array map".into())),
    }
}

fn slot_name(base: &str, slot: u32) -> String {
    format!("{base}_{slot}")
}

/// Every map pinned under the layout: the global maps, then each slot's.
fn pinned_map_names() -> Vec<String> {
    GLOBAL_MAPS
        .iter()
        .map(|n| n.to_string())
        .chain(
            SLOT_MAPS
                .iter()
                .flat_map(|n| [slot_name(n, 0), slot_name(n, 1)]),
        )
        .collect()
}

/// What is known of a slot's port/ICMP arrays, so a reload writes only the
/// entries that change (the port array has 262,144 entries).
#[derive(Clone, Default)]
struct ArrayShadow {
    port_class: Vec<u32>,
    icmp_class: Vec<u32>,
}

/// A loaded XDP program with its maps.
pub struct DataPath {
    ebpf: Ebpf,
    shadow: [Option<ArrayShadow>; 2],
    /// Links this agent attached or adopted, by interface.
    links: Vec<(String, Option<PinnedLink>)>,
}

/// Why a pinned link was not adopted.
enum NotAdopted {
    /// Severed or bound to another interface: drop it and attach afresh.
    Dead(String),
    /// Something else failed: the link may be good, so it stays.
    Failed(DataPathError),
}

/// Whether `error` or one of its sources is the OS error `code`.
fn has_os_error(error: &(dyn std::error::Error + 'static), code: i32) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(code))
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// How an interface got its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    Attached(XdpMode),
    /// A pinned link existed: the program was replaced on it atomically.
    Adopted,
    /// The pinned link was severed or defunct: dropped, then attached anew.
    Reattached(XdpMode),
}

impl DataPath {
    /// Loads the program. With `pins`, maps are reused from (or created and
    /// pinned under) the pin layout, so they outlive this process. A new
    /// conntrack table gets `conntrack_max` entries; a pinned one keeps its
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
        let zeroed = fresh.then(|| ArrayShadow {
            port_class: vec![0; nva_common::PORT_CLASS_ENTRIES as usize],
            icmp_class: vec![0; nva_common::ICMP_CLASS_ENTRIES as usize],
        });
        Ok(DataPath {
            ebpf,
            shadow: [zeroed.clone(), zeroed],
            links: Vec::new(),
        })
    }

    /// Loads the program (unpinned) with `rules` installed; rule i counts
    /// into counter i. For tests and one-shot tools.
    pub fn load(
        rules: &CompiledRuleSet,
        generation: u64,
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<DataPath, DataPathError> {
        let mut dp = DataPath::open(None, UNPINNED_CONNTRACK_MAX)?;
        dp.set_local_addrs(&local_addrs())?;
        let counters: Vec<u32> = (0..rules.rule_actions.len() as u32).collect();
        dp.install(rules, generation, &counters, ifindex_of)?;
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

    /// Installs a rule set: writes the inactive slot, switches to it with
    /// one write, then (after a grace period) clears the old slot. Until the
    /// switch, the running rules stay in force; an error leaves them so.
    /// `counters[i]` is the counter index of rule i. Returns the time spent
    /// after the switch (the grace period and clearing the old slot), so
    /// that callers can tell when the new rules went live.
    pub fn install(
        &mut self,
        rules: &CompiledRuleSet,
        generation: u64,
        counters: &[u32],
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<Duration, DataPathError> {
        let (active, _) = self.active()?;
        let target = 1 - active;
        self.clear_slot(target)?;
        self.write_slot(target, rules, generation, counters, ifindex_of)?;
        // The switch: one write; each packet reads ACTIVE once.
        let mut flag: Array<_, u32> =
            Array::try_from(self.map_mut(names::ACTIVE)?).map_err(map_err(names::ACTIVE))?;
        flag.set(0, target, 0).map_err(map_err(names::ACTIVE))?;
        // The new rule set is live from here: what follows is cleanup, and
        // its failure must not be reported as a failed install.
        let live = std::time::Instant::now();
        wait_for_running_programs();
        if let Err(e) = self.clear_slot(active) {
            tracing::warn!(slot = active, error = %e, "clearing the old slot (done again before its next use)");
        }
        Ok(live.elapsed())
    }

    /// Makes the set of local addresses (for management traffic) `addrs`.
    pub fn set_local_addrs(&mut self, addrs: &[std::net::IpAddr]) -> Result<(), DataPathError> {
        let want: std::collections::HashSet<[u8; 16]> = addrs
            .iter()
            .map(|a| match a {
                std::net::IpAddr::V4(v4) => nva_common::v4_mapped(v4.octets()),
                std::net::IpAddr::V6(v6) => v6.octets(),
            })
            .collect();
        let mut map: aya::maps::HashMap<_, [u8; 16], u8> =
            aya::maps::HashMap::try_from(self.map_mut(names::LOCAL_ADDRS)?)
                .map_err(map_err(names::LOCAL_ADDRS))?;
        let have: Vec<[u8; 16]> = map.keys().filter_map(Result::ok).collect();
        for k in have.iter().filter(|k| !want.contains(*k)) {
            map.remove(k).map_err(map_err(names::LOCAL_ADDRS))?;
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            map.insert(k, 1, 0).map_err(map_err(names::LOCAL_ADDRS))?;
        }
        Ok(())
    }

    /// Empties a slot's hash tables (freeing their memory) and marks it not
    /// ready. Only ever called on the inactive slot.
    fn clear_slot(&mut self, slot: u32) -> Result<(), DataPathError> {
        let mut config: Array<_, DataPathConfig> =
            Array::try_from(self.map_mut(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        config
            .set(slot, DataPathConfig::default(), 0)
            .map_err(map_err(names::CONFIG))?;
        macro_rules! clear_hash {
            ($base:expr, $k:ty, $v:ty) => {{
                let name = slot_name($base, slot);
                let fd = map_fd(self.map(&name)?)?;
                crate::batch::drain::<$k, $v>(fd).map_err(|e| DataPathError::Batch {
                    name: name.clone(),
                    source: e,
                })?;
            }};
        }
        macro_rules! clear_lpm {
            ($base:expr, $n:expr) => {{
                let name = slot_name($base, slot);
                let mut map: LpmTrie<_, [u8; $n], u32> =
                    LpmTrie::try_from(self.map_mut(&name)?).map_err(map_err(&name))?;
                // A stale prefix would point at a class id that means
                // something else in the next rule set: errors must surface.
                let keys = map
                    .keys()
                    .collect::<Result<Vec<Key<[u8; $n]>>, _>>()
                    .map_err(map_err(&name))?;
                for k in keys {
                    map.remove(&k).map_err(map_err(&name))?;
                }
            }};
        }
        clear_lpm!(names::SRC_V4, 4);
        clear_lpm!(names::SRC_V6, 16);
        clear_lpm!(names::DST_V4, 4);
        clear_lpm!(names::DST_V6, 16);
        clear_hash!(names::IFACE_CLASS, u32, u32);
        clear_hash!(names::PAIRS, PairKey, PairMatch);
        clear_hash!(names::DST_ONLY, u32, PairMatch);
        clear_hash!(names::SRC_ONLY, u32, PairMatch);
        clear_hash!(names::L4, L4Key, ClassMatch);
        clear_hash!(names::VERDICTS, VerdictKey, u32);
        clear_hash!(names::MANAGEMENT, ManagementKey, u8);
        Ok(())
    }

    fn write_slot(
        &mut self,
        slot: u32,
        rules: &CompiledRuleSet,
        generation: u64,
        counters: &[u32],
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), DataPathError> {
        if rules.rule_actions.len() > MAX_RULES as usize
            || counters.len() < rules.rule_actions.len()
        {
            return Err(DataPathError::Capacity(format!(
                "{} rules (at most {MAX_RULES})",
                rules.rule_actions.len()
            )));
        }
        macro_rules! fill_lpm {
            ($base:expr, $entries:expr) => {{
                let name = slot_name($base, slot);
                let mut trie: LpmTrie<_, _, u32> =
                    LpmTrie::try_from(self.map_mut(&name)?).map_err(map_err(&name))?;
                for e in $entries {
                    trie.insert(&Key::new(e.len as u32, e.addr), e.class, 0)
                        .map_err(map_err(&name))?;
                }
            }};
        }
        macro_rules! fill_hash {
            ($base:expr, $k:ty, $v:ty, $entries:expr) => {{
                let name = slot_name($base, slot);
                let entries: Vec<($k, $v)> = $entries.into_iter().map(|(k, v)| (*k, *v)).collect();
                let fd = map_fd(self.map(&name)?)?;
                crate::batch::update(fd, &entries).map_err(|e| DataPathError::Batch {
                    name: name.clone(),
                    source: e,
                })?;
            }};
        }
        fill_lpm!(names::SRC_V4, &rules.src_v4);
        fill_lpm!(names::SRC_V6, &rules.src_v6);
        fill_lpm!(names::DST_V4, &rules.dst_v4);
        fill_lpm!(names::DST_V6, &rules.dst_v6);
        fill_hash!(names::PAIRS, PairKey, PairMatch, &rules.pairs);
        fill_hash!(names::DST_ONLY, u32, PairMatch, &rules.dst_only);
        fill_hash!(names::SRC_ONLY, u32, PairMatch, &rules.src_only);
        fill_hash!(names::L4, L4Key, ClassMatch, &rules.l4);
        fill_hash!(names::VERDICTS, VerdictKey, u32, &rules.verdicts);
        // An interface that does not exist (yet) cannot receive packets.
        let ifaces: Vec<(u32, u32)> = rules
            .iface_class
            .iter()
            .filter_map(|(name, class)| ifindex_of(name).map(|i| (i, *class)))
            .collect();
        fill_hash!(
            names::IFACE_CLASS,
            u32,
            u32,
            ifaces.iter().map(|(k, v)| (k, v))
        );
        fill_hash!(
            names::MANAGEMENT,
            ManagementKey,
            u8,
            rules.management.iter().map(|k| (k, &1u8))
        );

        // Arrays: write only what differs from what the slot holds.
        let shadow = self.shadow[slot as usize].take();
        for (base, new, old) in [
            (
                names::PORT_CLASS,
                &rules.port_class,
                shadow.as_ref().map(|s| &s.port_class),
            ),
            (
                names::ICMP_CLASS,
                &rules.icmp_class,
                shadow.as_ref().map(|s| &s.icmp_class),
            ),
        ] {
            let name = slot_name(base, slot);
            let changed: Vec<(u32, u32)> = new
                .iter()
                .enumerate()
                .filter(|(i, v)| old.is_none_or(|o| o.get(*i) != Some(*v)))
                .map(|(i, v)| (i as u32, *v))
                .collect();
            let fd = map_fd(self.map(&name)?)?;
            crate::batch::update(fd, &changed).map_err(|e| DataPathError::Batch {
                name: name.clone(),
                source: e,
            })?;
        }
        self.shadow[slot as usize] = Some(ArrayShadow {
            port_class: rules.port_class.clone(),
            icmp_class: rules.icmp_class.clone(),
        });
        let name = slot_name(names::RULE_ACTIONS, slot);
        let actions: Vec<(u32, RuleAction)> = rules
            .rule_actions
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    i as u32,
                    RuleAction {
                        counter: counters[i],
                        ..*a
                    },
                )
            })
            .collect();
        let fd = map_fd(self.map(&name)?)?;
        crate::batch::update(fd, &actions).map_err(|e| DataPathError::Batch {
            name: name.clone(),
            source: e,
        })?;
        // Last: the slot's settings, ready.
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
            log_drops: rules.log_drops as u8,
            stateful: rules.stateful as u8,
            loose_tcp: rules.loose_tcp as u8,
            _pad: [0; 4],
            timeouts_s: rules.timeouts_s,
            _pad_tail: 0,
        };
        config.set(slot, value, 0).map_err(map_err(names::CONFIG))?;
        Ok(())
    }

    /// Attaches to `iface`. With `pins`, an existing pinned link that is
    /// still bound to `iface` is adopted (the program on it replaced
    /// atomically, no gap); a pinned link that was severed (detached behind
    /// the agent's back) or whose interface was deleted and created again is
    /// dropped and the program attached afresh. A new link is pinned so it
    /// survives this process. `auto` tries driver mode, then generic (skb).
    pub fn attach(
        &mut self,
        iface: &str,
        mode: XdpModeSetting,
        pins: Option<&PinLayout>,
    ) -> Result<Attachment, DataPathError> {
        let pin_path = pins.map(|p| p.link(iface));
        let mut repaired = false;
        if let Some(path) = pin_path.as_ref().filter(|p| p.exists()) {
            match self.adopt(iface, path) {
                Ok(()) => return Ok(Attachment::Adopted),
                // The link may still be good: leave it (and its pin) alone.
                Err(NotAdopted::Failed(e)) => return Err(e),
                Err(NotAdopted::Dead(why)) => {
                    tracing::warn!(iface, pin = %path.display(), why, "dropping the pinned link; attaching afresh");
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(DataPathError::Pin {
                                path: path.display().to_string(),
                                message: format!("removing a severed link: {e}"),
                            })
                        }
                    }
                    repaired = true;
                }
            }
        }
        let attached = self.attach_new(iface, mode, pin_path.as_deref())?;
        Ok(if repaired {
            Attachment::Reattached(attached)
        } else {
            Attachment::Attached(attached)
        })
    }

    /// Replaces the program on the pinned link of `iface` if that link is
    /// still bound to `iface`. The pin keeps naming the same link, so it is
    /// never removed here: a SIGKILL at any point leaves a link in place.
    fn adopt(&mut self, iface: &str, path: &std::path::Path) -> Result<(), NotAdopted> {
        let pin_err = |message: String| {
            NotAdopted::Failed(DataPathError::Pin {
                path: path.display().to_string(),
                message,
            })
        };
        let want = ifindex_by_name(iface).ok_or_else(|| {
            NotAdopted::Failed(DataPathError::Interface {
                iface: iface.to_string(),
                message: "no such interface".into(),
            })
        })?;
        match pinned_link_target(path) {
            // bpf_link_info reports ifindex 0 once the link lost its device:
            // detached (BPF_LINK_DETACH) or the interface unregistered.
            Ok((0, _)) => {
                return Err(NotAdopted::Dead(
                    "the link was severed (detached, or its interface deleted)".into(),
                ))
            }
            Ok((got, _)) if got != want => {
                return Err(NotAdopted::Dead(format!(
                    "the link is bound to ifindex {got}, the interface is now {want}"
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(pin_err(format!("reading the pinned link: {e}"))),
        }
        let pinned =
            PinnedLink::from_pin(path).map_err(|e| pin_err(format!("opening the pin: {e}")))?;
        let fd: FdLink = pinned.into();
        let link = fd
            .try_into()
            .map_err(|e| NotAdopted::Failed(DataPathError::Link(e)))?;
        let prog = self.program_mut().map_err(NotAdopted::Failed)?;
        // bpf_link_update fails with ENOLINK if the link was severed since
        // it was looked at.
        let id = match prog.attach_to_link(link) {
            Ok(id) => id,
            Err(e) if has_os_error(&e, libc::ENOLINK) => {
                return Err(NotAdopted::Dead(format!(
                    "the link was severed while being adopted ({e})"
                )))
            }
            Err(e) => return Err(NotAdopted::Failed(e.into())),
        };
        // The link outlives this handle through its pin; keep a handle
        // opened from the pin, which `detach_all` can unpin.
        drop(
            prog.take_link(id)
                .map_err(|e| NotAdopted::Failed(e.into()))?,
        );
        let pinned = PinnedLink::from_pin(path)
            .map_err(|e| pin_err(format!("opening the pin again: {e}")))?;
        self.set_link(iface, Some(pinned));
        Ok(())
    }

    /// Remembers the link of `iface`, replacing one it had before.
    fn set_link(&mut self, iface: &str, link: Option<PinnedLink>) {
        self.links.retain(|(i, _)| i != iface);
        self.links.push((iface.to_string(), link));
    }

    /// Attaches with a new link (pinned at `pin_path`, if given).
    fn attach_new(
        &mut self,
        iface: &str,
        mode: XdpModeSetting,
        pin_path: Option<&std::path::Path>,
    ) -> Result<XdpMode, DataPathError> {
        let attempts: &[XdpMode] = match mode {
            XdpModeSetting::Auto => &[XdpMode::Driver, XdpMode::Skb],
            XdpModeSetting::Driver => &[XdpMode::Driver],
            XdpModeSetting::Skb => &[XdpMode::Skb],
        };
        let mut last = String::new();
        for &m in attempts {
            let prog = self.program_mut()?;
            match prog.attach(iface, m) {
                Ok(id) => {
                    let pinned = match pin_path {
                        Some(path) => {
                            let link = prog.take_link(id)?;
                            let fd: FdLink = link.try_into()?;
                            Some(fd.pin(path).map_err(|e| DataPathError::Pin {
                                path: path.display().to_string(),
                                message: e.to_string(),
                            })?)
                        }
                        None => None,
                    };
                    self.set_link(iface, pinned);
                    return Ok(m);
                }
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

    /// Detaches from every interface: unpins the links and drops them.
    pub fn detach_all(&mut self) {
        for (iface, pinned) in self.links.drain(..) {
            if let Some(p) = pinned {
                match p.unpin() {
                    Ok(fd) => drop(fd),
                    Err(e) => tracing::warn!(iface, error = %e, "unpinning link"),
                }
            }
        }
    }

    /// Takes the ring buffer of sampled packet events (once).
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        let map = self.ebpf.take_map(names::EVENTS)?;
        aya::maps::RingBuf::try_from(map).ok()
    }

    /// The kernel id of the loaded program.
    pub fn program_id(&self) -> Result<u32, DataPathError> {
        Ok(self.program()?.info()?.id())
    }

    /// Kernel memory of each map (`memlock` of its fdinfo: for hash maps
    /// without preallocation, what the entries present use).
    pub fn map_memory(&self) -> Vec<(String, u64)> {
        use aya::maps::Map;
        use std::os::fd::{AsFd, AsRawFd};
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
                    | Map::RingBuf(d) => d,
                    _ => return None,
                };
                let fd = data.fd().as_fd().as_raw_fd();
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                let bytes = info
                    .lines()
                    .find_map(|l| l.strip_prefix("memlock:"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some((name.to_string(), bytes))
            })
            .collect();
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

    /// Runs `frame` `repeat` times in the kernel; returns the action and
    /// the mean time per run as the kernel measured it.
    pub fn time_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), DataPathError> {
        timed_run(self.program()?, frame, repeat)
    }

    /// Counters 0..n, summed over CPUs.
    pub fn rule_counters(&self, n: usize) -> Result<Vec<RuleCounters>, DataPathError> {
        let indices: Vec<u32> = (0..n as u32).collect();
        self.counters_at(&indices)
    }

    /// Counters at the given indices, summed over CPUs.
    pub fn counters_at(&self, indices: &[u32]) -> Result<Vec<RuleCounters>, DataPathError> {
        let map: PerCpuArray<_, RuleCounters> = self
            .map(names::RULE_COUNTERS)?
            .try_into()
            .map_err(map_err(names::RULE_COUNTERS))?;
        read_counters(&map, indices)
    }

    /// Zeroes counters (of rules that left the rule set).
    pub fn reset_counters(&mut self, indices: &[u32]) -> Result<(), DataPathError> {
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| DataPathError::Capacity(e.to_string()))?;
        let mut map: PerCpuArray<_, RuleCounters> = self
            .map_mut(names::RULE_COUNTERS)?
            .try_into()
            .map_err(map_err(names::RULE_COUNTERS))?;
        for &i in indices {
            let zeros = PerCpuValues::try_from(vec![RuleCounters::default(); ncpu])
                .map_err(|e| DataPathError::Capacity(e.to_string()))?;
            map.set(i, zeros, 0)
                .map_err(map_err(names::RULE_COUNTERS))?;
        }
        Ok(())
    }

    /// The conntrack table of this program (its own handles on the maps).
    pub fn conntrack(&self) -> Result<crate::conntrack::Table, DataPathError> {
        let reopen = |name: &str| -> Result<MapData, DataPathError> {
            let data = match self.map(name)? {
                aya::maps::Map::LruHashMap(d) | aya::maps::Map::PerCpuArray(d) => d,
                _ => return Err(DataPathError::Missing(name.to_string())),
            };
            let id = data.info().map_err(map_err(name))?.id();
            MapData::from_id(id).map_err(map_err(name))
        };
        Ok(crate::conntrack::Table::from_maps(
            reopen(names::CONNTRACK)?,
            reopen(names::CONNTRACK_STATS)?,
        ))
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

/// Sums per-CPU rule counters at `indices`, reading the counters up to the
/// largest index in batches.
pub fn read_counters<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, RuleCounters>,
    indices: &[u32],
) -> Result<Vec<RuleCounters>, DataPathError> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    let Some(len) = indices.iter().max().map(|m| m + 1) else {
        return Ok(Vec::new());
    };
    let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataPathError::Batch {
        name: names::RULE_COUNTERS.into(),
        source: e,
    })?;
    let values: Vec<RuleCounters> =
        crate::batch::percpu_array_prefix(map.map().fd().as_fd(), len, ncpus).map_err(|e| {
            DataPathError::Batch {
                name: names::RULE_COUNTERS.into(),
                source: e,
            }
        })?;
    Ok(indices
        .iter()
        .map(|&i| {
            let start = i as usize * ncpus;
            values
                .get(start..start + ncpus)
                .unwrap_or_default()
                .iter()
                .fold(RuleCounters::default(), |acc, c| RuleCounters {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                })
        })
        .collect())
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

/// (ifindex, program id) of a pinned XDP link, from the kernel. A link whose
/// interface was detached or removed reports ifindex 0.
pub fn pinned_link_target(path: &std::path::Path) -> std::io::Result<(u32, u32)> {
    // BPF_OBJ_GET then BPF_OBJ_GET_INFO_BY_FD: aya 0.14 does not expose the
    // XDP part of bpf_link_info.
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut get = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: valid bpf_attr prefix for BPF_OBJ_GET (7).
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 7, &mut get as *mut ObjGet, 24usize) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor we now own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, (pad), union at 16; for XDP
    // the union starts with ifindex.
    let mut info = [0u8; 64];
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: valid bpf_attr prefix for BPF_OBJ_GET_INFO_BY_FD (15).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 15, &mut attr as *mut InfoByFd, 16usize) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let word = |o: usize| u32::from_ne_bytes([info[o], info[o + 1], info[o + 2], info[o + 3]]);
    Ok((word(16), word(8)))
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
        let text: String = pinned_maps()
            .iter()
            .map(|(n, t, k, v)| format!("{n} type {t} key {k} value {v}\n"))
            .collect();
        let found = fingerprint(&text);
        let recorded = crate::pin::LAYOUT_FINGERPRINTS
            .iter()
            .find(|(v, _)| *v == crate::pin::LAYOUT_VERSION)
            .map(|(_, f)| *f);
        assert_eq!(
            recorded,
            Some(found),
            "the pinned maps are not those recorded for layout {}: an agent would adopt pins it misreads. Bump nva_common::LAYOUT_VERSION and append (\"NEW\", {found:#x}) to pin::LAYOUT_FINGERPRINTS (never edit a recorded entry). The maps now:\n{text}",
            crate::pin::LAYOUT_VERSION
        );
        let mut seen = std::collections::HashSet::new();
        for (version, f) in crate::pin::LAYOUT_FINGERPRINTS {
            assert!(seen.insert(*f), "layout {version} repeats an older layout");
        }
    }
}
