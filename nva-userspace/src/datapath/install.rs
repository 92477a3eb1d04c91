//! Installing a rule set: the inactive slot is cleared and written, then
//! one write of `ACTIVE` switches to it; the old slot is cleared after every
//! program run that may still read it has finished.

use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::Array;
use nva_common::{
    map_names as names, AddrClass, ClassMatch, ConntrackKey, DataPathConfig, L4Key, ManagementKey,
    NatBinding, NatMatch, PairKey, PairMatch, PrefixKey, RuleAction, RuleCheck, RuleCounters,
    VerdictKey, VerdictMatch, MAX_NAT_ATOMS, MAX_RULES,
};

use super::{
    map_err, map_fd, slot_name, ArrayShadow, DataPath, DataPathError, NatTables, WrittenPrefixes,
};
use crate::classifier::{CompiledRuleSet, PrefixClass, TableSink};

/// No flags: a hash table preallocated at its size (the program's
/// template has the same flags; see nva-ebpf's `maps`).
const PREALLOCATED: u32 = 0;
/// `BPF_F_INNER_MAP` (linux/bpf.h): an array that may stand in a map of
/// maps whatever its length (the program's template has the same flag).
const BPF_F_INNER_MAP: u32 = 1 << 12;

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

impl DataPath {
    /// Installs a rule set: writes the inactive slot, switches to it with
    /// one write, then (after a grace period) clears the old slot. Until the
    /// switch, the running rules stay in force; an error leaves them so.
    /// `counters[i]` is the counter index of rule i. Returns the time spent
    /// after the switch (the grace period and clearing the old slot), so
    /// that callers can tell when the new rules went live.
    pub fn install(
        &mut self,
        rules: &CompiledRuleSet,
        nat: &NatTables,
        generation: u64,
        counters: &[u32],
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<Duration, DataPathError> {
        let (active, _) = self.active()?;
        let target = 1 - active;
        // The slot's tables in maps of maps are replaced by new ones below:
        // only the others need emptying.
        self.clear_slot_fixed_tables(target)?;
        self.pending_slot_tables.clear();
        self.pending_writes = Default::default();
        self.write_slot(target, rules, nat, generation, counters, ifindex_of)?;
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

    /// Sets `agent.forward` for the next install (`FORWARD_KERNEL` or
    /// `FORWARD_XDP`), and the interfaces a routed packet may leave by
    /// (`egress`, ifindexes of the current network namespace: a devmap
    /// resolves them in the namespace of the process that writes it).
    pub fn set_forwarding(&mut self, forward: u8, egress: &[u32]) -> Result<(), DataPathError> {
        let mut map: aya::maps::DevMapHash<_> =
            aya::maps::DevMapHash::try_from(self.map_mut(names::EGRESS)?)
                .map_err(map_err(names::EGRESS))?;
        let have: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for k in have.iter().filter(|k| !egress.contains(k)) {
            map.remove(*k).map_err(map_err(names::EGRESS))?;
        }
        for &ifindex in egress {
            map.insert(ifindex, ifindex, None, 0)
                .map_err(|e| DataPathError::Interface {
                    iface: format!("ifindex {ifindex}"),
                    message: format!("adding it to the redirect map {}: {e}", names::EGRESS),
                })?;
        }
        self.forward = forward;
        Ok(())
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
        self.clear_slot_fixed_tables(slot)?;
        self.clear_slot_maps_of_maps(slot)
    }

    /// Marks a slot not ready and empties its tables that are not in maps
    /// of maps (the tries, interface classes, management ports).
    fn clear_slot_fixed_tables(&mut self, slot: u32) -> Result<(), DataPathError> {
        let mut config: Array<_, DataPathConfig> =
            Array::try_from(self.map_mut(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        config
            .set(slot, DataPathConfig::default(), 0)
            .map_err(map_err(names::CONFIG))?;
        macro_rules! clear_hash {
            ($base:expr, $k:ty, $v:ty) => {{
                let name = slot_name($base, slot);
                let fd = map_fd(self.map(&name)?)?;
                crate::datapath::batch::drain::<$k, $v>(fd).map_err(|e| DataPathError::Batch {
                    name: name.clone(),
                    source: e,
                })?;
            }};
        }
        self.clear_slot_tries(slot)?;
        clear_hash!(names::IFACE_CLASS, u32, u32);
        clear_hash!(names::MANAGEMENT, ManagementKey, u8);
        Ok(())
    }

    /// Empties a slot's four tries. The prefixes this process wrote there
    /// are deleted in batches, one thread per trie (each trie has its own
    /// lock); a trie still not empty after that (written before a restart)
    /// is walked key by key.
    fn clear_slot_tries(&mut self, slot: u32) -> Result<(), DataPathError> {
        let tries = [names::SRC_V4, names::SRC_V6, names::DST_V4, names::DST_V6]
            .map(|base| slot_name(base, slot));
        let mut jobs = Vec::new();
        for name in &tries {
            if let Some(keys) = self.written_prefixes.remove(name) {
                let fd = map_fd(self.map(name)?)?
                    .try_clone_to_owned()
                    .map_err(|source| DataPathError::Batch {
                        name: name.clone(),
                        source,
                    })?;
                jobs.push((name, fd, keys));
            }
        }
        let results: Vec<Result<(), DataPathError>> = std::thread::scope(|scope| {
            let threads: Vec<_> = jobs
                .iter()
                .map(|(name, fd, keys)| {
                    scope.spawn(move || {
                        let fd = std::os::fd::AsFd::as_fd(fd);
                        match keys {
                            WrittenPrefixes::V4(k) => super::batch::delete(fd, k),
                            WrittenPrefixes::V6(k) => super::batch::delete(fd, k),
                        }
                        .map(drop)
                        .map_err(|source| DataPathError::Batch {
                            name: (*name).clone(),
                            source,
                        })
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("clearing a trie"))
                .collect()
        });
        results.into_iter().collect::<Result<(), _>>()?;
        macro_rules! clear_rest {
            ($name:expr, $n:expr) => {{
                let name = $name;
                let map: LpmTrie<_, [u8; $n], AddrClass> =
                    LpmTrie::try_from(self.map(name)?).map_err(map_err(name))?;
                // A stale prefix would point at a class id that means
                // something else in the next rule set: errors must surface.
                // Empty (the usual case): one syscall.
                let keys = map
                    .keys()
                    .collect::<Result<Vec<Key<[u8; $n]>>, _>>()
                    .map_err(map_err(name))?;
                if !keys.is_empty() {
                    tracing::debug!(
                        map = %name,
                        prefixes = keys.len(),
                        "clearing prefixes of the old slot written before this process began"
                    );
                    let fd = map_fd(self.map(name)?)?;
                    super::batch::delete(fd, &keys).map_err(|e| DataPathError::Batch {
                        name: name.clone(),
                        source: e,
                    })?;
                    self.prefixes_walked += keys.len() as u64;
                }
            }};
        }
        clear_rest!(&tries[0], 4);
        clear_rest!(&tries[1], 16);
        clear_rest!(&tries[2], 4);
        clear_rest!(&tries[3], 16);
        Ok(())
    }

    fn write_slot(
        &mut self,
        slot: u32,
        rules: &CompiledRuleSet,
        nat: &NatTables,
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
        let counter_stride = counters
            .iter()
            .take(rules.rule_actions.len())
            .max()
            .map_or(1, |m| m + 1);
        self.set_slot_counters(slot, counter_stride)?;
        // Taken: after a failure the arrays are written whole next time.
        let known = self.shadow[slot as usize].take().unwrap_or_default();
        let mut sink = SlotSink {
            datapath: self,
            slot,
            known,
            written: ArrayShadow::new(),
        };
        rules.write_tables(&mut sink, counters, ifindex_of)?;
        let written = sink.written;
        self.shadow[slot as usize] = Some(written);
        self.put_pending_in_slots()?;
        for (table, atoms) in [(names::NAT_DNAT, &nat.dnat), (names::NAT_SNAT, &nat.snat)] {
            if atoms.len() > MAX_NAT_ATOMS as usize {
                return Err(DataPathError::Capacity(format!(
                    "{} {table} matches (at most {MAX_NAT_ATOMS})",
                    atoms.len()
                )));
            }
            let name = slot_name(table, slot);
            let mut map: Array<_, NatMatch> =
                Array::try_from(self.map_mut(&name)?).map_err(map_err(&name))?;
            for (i, m) in atoms.iter().enumerate() {
                map.set(i as u32, m, 0).map_err(map_err(&name))?;
            }
        }
        // Replies of translated flows are looked up while bindings may
        // exist: with NAT configured, or bindings left from before.
        let bindings = !nat.dnat.is_empty() || !nat.snat.is_empty() || self.nat_bindings_exist()?;
        let mut slot_config = rules.slot_config(generation);
        slot_config.nat_dnat = nat.dnat.len() as u8;
        slot_config.nat_snat = nat.snat.len() as u8;
        slot_config.nat_bindings = bindings as u8;
        slot_config.forward = self.forward;
        slot_config.counter_stride = counter_stride;
        // Last: the slot's settings, ready.
        let mut config: Array<_, DataPathConfig> =
            Array::try_from(self.map_mut(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        config
            .set(slot, slot_config, 0)
            .map_err(map_err(names::CONFIG))?;
        Ok(())
    }

    /// True when the NAT map holds any binding.
    fn nat_bindings_exist(&self) -> Result<bool, DataPathError> {
        let map: aya::maps::HashMap<_, ConntrackKey, NatBinding> =
            aya::maps::HashMap::try_from(self.map(names::NAT_BINDINGS)?)
                .map_err(map_err(names::NAT_BINDINGS))?;
        Ok(map.keys().next().is_some())
    }
}

/// A slot table's length for `n` entries: at least 1 (a map cannot be
/// empty).
fn table_len(name: &str, n: usize) -> Result<u32, DataPathError> {
    u32::try_from(n.max(1)).map_err(|_| DataPathError::Capacity(format!("{n} entries in {name}")))
}

/// Tables created for each rule set at the size it needs, and swapped in
/// with the slot (maps of maps; see nva-ebpf's `maps`).
pub(super) const JOIN_TABLES: [&str; 6] = [
    names::PAIRS,
    names::DST_ONLY,
    names::SRC_ONLY,
    names::L4,
    names::VERDICTS,
    names::PREFIXES,
];

/// Arrays created for each rule set at the length it needs, and swapped in
/// with the slot (maps of maps, like the join tables). The rule counters
/// are apart: a new array starts as a copy of the one it replaces.
pub(super) const SLOT_ARRAYS: [&str; 6] = [
    names::RULE_ACTIONS,
    names::RULE_CHECKS,
    names::SRC_V4_RANGES,
    names::DST_V4_RANGES,
    names::SRC_V4_RANGE_CLASSES,
    names::DST_V4_RANGE_CLASSES,
];

impl DataPath {
    /// Creates `slot`'s `table` with exactly `entries` (a table of one
    /// free entry when there are none) and puts it in the slot, replacing
    /// the table there, which the kernel frees once no program run holds it.
    fn set_join_table<K: aya::Pod + Send, V: aya::Pod + Send>(
        &mut self,
        table: &'static str,
        slot: u32,
        entries: &[(K, V)],
    ) -> Result<(), DataPathError> {
        use aya::maps::{IterableMap, MapData};
        let name = slot_name(table, slot);
        let inner: aya::maps::HashMap<MapData, K, V> =
            aya::maps::HashMap::create(table_len(&name, entries.len())?, PREALLOCATED)
                .map_err(map_err(&name))?;
        self.put_in_slot(table, slot, IterableMap::<K, V>::map(&inner).fd(), entries)
    }

    /// Queues writing `entries` into the new table `inner`, to be put in
    /// `slot` of the map of maps `table` by
    /// [`put_pending_in_slots`](Self::put_pending_in_slots).
    fn put_in_slot<K: aya::Pod + Send, V: aya::Pod + Send>(
        &mut self,
        table: &'static str,
        slot: u32,
        inner: &aya::maps::MapFd,
        entries: &[(K, V)],
    ) -> Result<(), DataPathError> {
        use std::os::fd::AsFd;
        let batch_err = |source| DataPathError::Batch {
            name: slot_name(table, slot),
            source,
        };
        let kept = inner.as_fd().try_clone_to_owned().map_err(batch_err)?;
        let writer = kept.try_clone().map_err(batch_err)?;
        self.pending_writes
            .update(&slot_name(table, slot), writer, entries.to_vec(), true);
        self.pending_slot_tables.push((table, slot, kept));
        Ok(())
    }

    /// Runs the queued table writes, one thread per CPU (a 100,000-rule
    /// set's took 0.58 s one after another on two CPUs, 0.3 s at once), then
    /// puts the pending tables in their slots, each replacing the table
    /// there (which the kernel frees once no program run holds it). Each
    /// write to a map of maps waits for an RCU grace period (about 10 ms
    /// here), so one after another, the eight tables of a slot took 80 ms;
    /// written from one thread each, they wait for the same grace period.
    fn put_pending_in_slots(&mut self) -> Result<(), DataPathError> {
        use std::os::fd::{AsFd, AsRawFd};
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        self.pending_writes
            .run(threads)
            .map_err(|(name, source)| DataPathError::Batch { name, source })?;
        let pending = std::mem::take(&mut self.pending_slot_tables);
        let mut writes = Vec::with_capacity(pending.len());
        for (table, slot, inner) in &pending {
            writes.push((*table, *slot, map_fd(self.map(table)?)?, inner.as_fd()));
        }
        std::thread::scope(|scope| {
            let threads: Vec<_> = writes
                .iter()
                .map(|&(table, slot, outer, inner)| {
                    scope.spawn(move || {
                        let fd = inner.as_raw_fd() as u32;
                        crate::datapath::batch::update_one(outer, &slot, &fd).map_err(|source| {
                            DataPathError::Batch {
                                name: slot_name(table, slot),
                                source,
                            }
                        })
                    })
                })
                .collect();
            threads
                .into_iter()
                .try_for_each(|t| t.join().expect("slot table write"))
        })
    }

    /// Empties `slot`'s join tables and arrays in maps of maps (fresh
    /// tables of one free entry, arrays of one zeroed entry).
    pub(super) fn clear_slot_maps_of_maps(&mut self, slot: u32) -> Result<(), DataPathError> {
        self.set_join_table::<PairKey, PairMatch>(names::PAIRS, slot, &[])?;
        self.set_join_table::<u32, PairMatch>(names::DST_ONLY, slot, &[])?;
        self.set_join_table::<u32, PairMatch>(names::SRC_ONLY, slot, &[])?;
        self.set_join_table::<L4Key, ClassMatch>(names::L4, slot, &[])?;
        self.set_join_table::<VerdictKey, VerdictMatch>(names::VERDICTS, slot, &[])?;
        self.set_join_table::<PrefixKey, u32>(names::PREFIXES, slot, &[])?;
        self.set_slot_array::<u32, RuleAction>(names::RULE_ACTIONS, slot, &[])?;
        self.set_slot_array::<u32, RuleCheck>(names::RULE_CHECKS, slot, &[])?;
        self.set_slot_array::<u32, u64>(names::SRC_V4_RANGES, slot, &[])?;
        self.set_slot_array::<u32, u64>(names::DST_V4_RANGES, slot, &[])?;
        self.set_slot_array::<u32, AddrClass>(names::SRC_V4_RANGE_CLASSES, slot, &[])?;
        self.set_slot_array::<u32, AddrClass>(names::DST_V4_RANGE_CLASSES, slot, &[])?;
        self.put_pending_in_slots()
    }

    /// Creates `slot`'s array `table` with `entries` (keys 0..n, in order;
    /// an array of one zeroed entry when there are none) and puts it in the
    /// slot, replacing the array there.
    fn set_slot_array<K: aya::Pod + Send, V: aya::Pod + Send>(
        &mut self,
        table: &'static str,
        slot: u32,
        entries: &[(K, V)],
    ) -> Result<(), DataPathError> {
        use aya::maps::{IterableMap, MapData};
        let name = slot_name(table, slot);
        let inner: aya::maps::Array<MapData, V> =
            aya::maps::Array::create(table_len(&name, entries.len())?, BPF_F_INNER_MAP)
                .map_err(map_err(&name))?;
        self.put_in_slot(
            table,
            slot,
            IterableMap::<u32, V>::map(&inner).fd(),
            entries,
        )
    }

    /// Gives `slot` a counter array of `stride` counters per CPU (see
    /// `counters`) that starts as a copy of the array it replaces. A rule's
    /// count is the sum over both slots' arrays, so the sum is the same
    /// before and after; the array replaced is not counted into (its slot
    /// has not been active since the switch before this one), so the copy
    /// misses nothing.
    fn set_slot_counters(&mut self, slot: u32, stride: u32) -> Result<(), DataPathError> {
        use aya::maps::MapData;
        let table = names::RULE_COUNTERS;
        let name = slot_name(table, slot);
        let ncpus = super::counters::ncpus()?;
        let len = u32::try_from(ncpus)
            .ok()
            .and_then(|n| n.checked_mul(stride.max(1)))
            .ok_or_else(|| DataPathError::Capacity(format!("{stride} counters on {ncpus} CPUs")))?;
        let inner: aya::maps::Array<MapData, RuleCounters> =
            aya::maps::Array::create(len, BPF_F_INNER_MAP).map_err(map_err(&name))?;
        let mut moved: Vec<(u32, RuleCounters)> = Vec::new();
        if let Some(old) = super::counters::slot_counters(self.map(table)?, slot)? {
            // Only counters that moved: most of a large rule set's are 0.
            moved = old
                .per_cpu(ncpus)?
                .into_iter()
                .enumerate()
                .flat_map(|(cpu, counters)| {
                    counters
                        .into_iter()
                        .take(stride as usize)
                        .enumerate()
                        .filter(|(_, c)| c.packets != 0 || c.bytes != 0)
                        .map(move |(i, c)| ((cpu * stride as usize + i) as u32, c))
                })
                .collect();
        }
        let inner_fd = aya::maps::IterableMap::<u32, RuleCounters>::map(&inner).fd();
        self.put_in_slot(table, slot, inner_fd, &moved)
    }
}

/// The maps of the slot being filled, as the classifier sees them.
struct SlotSink<'a> {
    datapath: &'a mut DataPath,
    slot: u32,
    /// What the slot's arrays held before (empty: unknown).
    known: ArrayShadow,
    /// What they hold now.
    written: ArrayShadow,
}

impl SlotSink<'_> {
    fn prefixes<const N: usize>(
        &mut self,
        table: &'static str,
        entries: &[PrefixClass<N>],
    ) -> Result<Vec<Key<[u8; N]>>, DataPathError> {
        // Batched: one syscall per chunk, not per prefix (100,000-rule sets
        // name about 200,000 prefixes); queued, to run with the other tables.
        // Returns the keys, to delete them when the slot is cleared.
        let entries: Vec<(Key<[u8; N]>, AddrClass)> = entries
            .iter()
            .map(|e| (Key::new(e.len as u32, e.addr), e.class))
            .collect();
        let keys = entries.iter().map(|(k, _)| *k).collect();
        self.queue(table, entries, false)?;
        Ok(keys)
    }

    /// Records keys queued for the slot's trie `table` (a failed write
    /// leaves fewer in it: deleting a missing key is skipped).
    fn remember(&mut self, table: &'static str, keys: WrittenPrefixes) {
        let name = slot_name(table, self.slot);
        self.datapath.written_prefixes.insert(name, keys);
    }

    /// Queues writing `entries` to the slot's `table` (not one in a map of
    /// maps); `split` as in [`WriteQueue::update`](super::batch::WriteQueue::update).
    fn queue<K: aya::Pod + Send, V: aya::Pod + Send>(
        &mut self,
        table: &'static str,
        entries: Vec<(K, V)>,
        split: bool,
    ) -> Result<(), DataPathError> {
        let name = slot_name(table, self.slot);
        let fd = map_fd(self.datapath.map(&name)?)?
            .try_clone_to_owned()
            .map_err(|source| DataPathError::Batch {
                name: name.clone(),
                source,
            })?;
        self.datapath
            .pending_writes
            .update(&name, fd, entries, split);
        Ok(())
    }
}

impl TableSink for SlotSink<'_> {
    type Error = DataPathError;

    fn prefixes_v4(
        &mut self,
        table: &'static str,
        entries: &[PrefixClass<4>],
    ) -> Result<(), DataPathError> {
        let keys = self.prefixes(table, entries)?;
        self.remember(table, WrittenPrefixes::V4(keys));
        Ok(())
    }

    fn prefixes_v6(
        &mut self,
        table: &'static str,
        entries: &[PrefixClass<16>],
    ) -> Result<(), DataPathError> {
        let keys = self.prefixes(table, entries)?;
        self.remember(table, WrittenPrefixes::V6(keys));
        Ok(())
    }

    fn hash<K: aya::Pod + Send, V: aya::Pod + Send>(
        &mut self,
        table: &'static str,
        entries: &[(K, V)],
    ) -> Result<(), DataPathError> {
        if JOIN_TABLES.contains(&table) {
            return self.datapath.set_join_table(table, self.slot, entries);
        }
        if SLOT_ARRAYS.contains(&table) {
            return self.datapath.set_slot_array(table, self.slot, entries);
        }
        self.queue(table, entries.to_vec(), true)
    }

    fn array(&mut self, table: &'static str, values: &[u64]) -> Result<(), DataPathError> {
        let old = self.known.get(table);
        let changed: Vec<(u32, u64)> = values
            .iter()
            .enumerate()
            .filter(|(i, v)| old.is_none_or(|o| o.get(*i) != Some(*v)))
            .map(|(i, v)| (i as u32, *v))
            .collect();
        self.hash(table, &changed)?;
        self.written.insert(table, values.to_vec());
        Ok(())
    }
}
