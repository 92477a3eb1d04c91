//! The program's counters: per rule (by stable counter index; summed over
//! CPUs and both slots' counter arrays) and per packet reason (summed over
//! CPUs).

use aya::maps::{
    Array, ArrayOfMaps, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuValues,
};
use nva_common::{map_names as names, NatCounters, RuleCounters, FORWARD_PATHS, PACKET_REASONS};

use super::{map_err, DataPath, DataPathError};

/// One slot's counter array: each CPU's counters one after the other, the
/// same number for each (see nva-ebpf's `RULE_COUNTERS`).
pub(super) struct SlotCounters(Array<MapData, RuleCounters>);

impl SlotCounters {
    /// Each CPU's counters (of `ncpus`), read in batches.
    pub(super) fn per_cpu(&self, ncpus: usize) -> Result<Vec<Vec<RuleCounters>>, DataPathError> {
        use std::os::fd::AsFd as _;
        let fd = IterableMap::<u32, RuleCounters>::map(&self.0).fd();
        // A plain array has the batch layout of a per-CPU array on one CPU.
        let all: Vec<RuleCounters> =
            crate::datapath::batch::percpu_array_prefix(fd.as_fd(), self.0.len(), 1).map_err(
                |source| DataPathError::Batch {
                    name: names::RULE_COUNTERS.into(),
                    source,
                },
            )?;
        let stride = (all.len() / ncpus.max(1)).max(1);
        Ok(all.chunks(stride).map(<[RuleCounters]>::to_vec).collect())
    }

    /// Zeroes counters `indices` on every CPU (those within the array).
    fn zero(&self, indices: &[u32], ncpus: usize) -> Result<(), DataPathError> {
        use std::os::fd::AsFd as _;
        let stride = self.0.len() / ncpus.max(1) as u32;
        let zeros: Vec<(u32, RuleCounters)> = (0..ncpus as u32)
            .flat_map(|cpu| {
                indices
                    .iter()
                    .filter(|i| **i < stride)
                    .map(move |i| (cpu * stride + i, RuleCounters::default()))
            })
            .collect();
        let fd = IterableMap::<u32, RuleCounters>::map(&self.0).fd();
        crate::datapath::batch::update(fd.as_fd(), &zeros).map_err(|source| DataPathError::Batch {
            name: names::RULE_COUNTERS.into(),
            source,
        })
    }
}

/// The counter array of `slot` in the RULE_COUNTERS map of maps (None: the
/// slot was never installed).
pub(super) fn slot_counters(outer: &Map, slot: u32) -> Result<Option<SlotCounters>, DataPathError> {
    let outer: ArrayOfMaps<&MapData, Array<MapData, RuleCounters>> =
        ArrayOfMaps::try_from(outer).map_err(map_err(names::RULE_COUNTERS))?;
    match outer.get(&slot, 0) {
        Ok(inner) => Ok(Some(SlotCounters(inner))),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(names::RULE_COUNTERS)(e)),
    }
}

/// The number of possible CPUs: the parts of a counter array.
pub(super) fn ncpus() -> Result<usize, DataPathError> {
    aya::util::nr_cpus().map_err(|(_, source)| DataPathError::Batch {
        name: names::RULE_COUNTERS.into(),
        source,
    })
}

/// Sums the rule counters at `indices` over CPUs and over both slots'
/// counter arrays (`outer`: the RULE_COUNTERS map of maps; a rule's count
/// is the sum, see `install`).
pub fn read_counters(outer: &Map, indices: &[u32]) -> Result<Vec<RuleCounters>, DataPathError> {
    let mut sums = vec![RuleCounters::default(); indices.len()];
    if indices.is_empty() {
        return Ok(sums);
    }
    let ncpus = ncpus()?;
    for slot in 0..2 {
        let Some(inner) = slot_counters(outer, slot)? else {
            continue;
        };
        for counters in inner.per_cpu(ncpus)? {
            for (sum, &i) in sums.iter_mut().zip(indices) {
                if let Some(c) = counters.get(i as usize) {
                    sum.packets += c.packets;
                    sum.bytes += c.bytes;
                }
            }
        }
    }
    Ok(sums)
}

/// Sums the per-CPU packet counters by reason.
pub fn read_packet_counters<T: std::borrow::Borrow<MapData>>(
    map: PerCpuArray<T, u64>,
) -> Result<Vec<u64>, DataPathError> {
    sum_u64_counters(&map, PACKET_REASONS, names::PACKET_COUNTERS)
}

/// Sums the per-CPU forwarding counters by `ForwardPath`.
pub fn read_forward_counters<T: std::borrow::Borrow<MapData>>(
    map: PerCpuArray<T, u64>,
) -> Result<Vec<u64>, DataPathError> {
    sum_u64_counters(&map, FORWARD_PATHS, names::FORWARD_COUNTERS)
}

fn sum_u64_counters<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
    n: u32,
    name: &str,
) -> Result<Vec<u64>, DataPathError> {
    (0..n)
        .map(|i| {
            let per_cpu = map.get(&i, 0).map_err(map_err(name))?;
            Ok(per_cpu.iter().sum())
        })
        .collect()
}

impl DataPath {
    /// Counters 0..n, summed over CPUs.
    pub fn rule_counters(&self, n: usize) -> Result<Vec<RuleCounters>, DataPathError> {
        let indices: Vec<u32> = (0..n as u32).collect();
        self.counters_at(&indices)
    }

    /// Counters at the given indices, summed over CPUs and slots.
    pub fn counters_at(&self, indices: &[u32]) -> Result<Vec<RuleCounters>, DataPathError> {
        read_counters(self.map(names::RULE_COUNTERS)?, indices)
    }

    /// Zeroes counters (of rules that left the rule set, or before a new
    /// rule takes a counter), in both slots' arrays.
    pub fn reset_counters(&mut self, indices: &[u32]) -> Result<(), DataPathError> {
        if indices.is_empty() {
            return Ok(());
        }
        let ncpus = ncpus()?;
        for slot in 0..2 {
            if let Some(inner) = slot_counters(self.map(names::RULE_COUNTERS)?, slot)? {
                inner.zero(indices, ncpus)?;
            }
        }
        Ok(())
    }

    /// NAT counters at the given indices, summed over CPUs.
    pub fn nat_counters(&self, indices: &[u32]) -> Result<Vec<NatCounters>, DataPathError> {
        let map: PerCpuArray<_, NatCounters> = self
            .map(names::NAT_COUNTERS)?
            .try_into()
            .map_err(map_err(names::NAT_COUNTERS))?;
        read_nat_counters(&map, indices)
    }

    /// Zeroes NAT counters (of `[[nat]]` entries new to the rule set).
    pub fn reset_nat_counters(&mut self, indices: &[u32]) -> Result<(), DataPathError> {
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| DataPathError::Capacity(e.to_string()))?;
        let mut map: PerCpuArray<_, NatCounters> = self
            .map_mut(names::NAT_COUNTERS)?
            .try_into()
            .map_err(map_err(names::NAT_COUNTERS))?;
        for &i in indices {
            let zeros = PerCpuValues::try_from(vec![NatCounters::default(); ncpu])
                .map_err(|e| DataPathError::Capacity(e.to_string()))?;
            map.set(i, zeros, 0).map_err(map_err(names::NAT_COUNTERS))?;
        }
        Ok(())
    }

    /// Forwarding counters by `ForwardPath`, summed over CPUs.
    pub fn forward_counters(&self) -> Result<Vec<u64>, DataPathError> {
        read_forward_counters(
            self.map(names::FORWARD_COUNTERS)?
                .try_into()
                .map_err(map_err(names::FORWARD_COUNTERS))?,
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

/// Sums per-CPU NAT counters at `indices`.
pub fn read_nat_counters<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, NatCounters>,
    indices: &[u32],
) -> Result<Vec<NatCounters>, DataPathError> {
    indices
        .iter()
        .map(|&i| {
            let per_cpu = map.get(&i, 0).map_err(map_err(names::NAT_COUNTERS))?;
            Ok(per_cpu
                .iter()
                .fold(NatCounters::default(), |acc, c| NatCounters {
                    translations: acc.translations + c.translations,
                    ports_exhausted: acc.ports_exhausted + c.ports_exhausted,
                }))
        })
        .collect()
}
