//! The program's counters: per rule (by stable counter index) and per
//! packet reason, summed over CPUs.

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use nva_common::{map_names as names, NatCounters, RuleCounters, FORWARD_PATHS, PACKET_REASONS};

use super::{map_err, DataPath, DataPathError};

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
        crate::datapath::batch::percpu_array_prefix(map.map().fd().as_fd(), len, ncpus).map_err(
            |e| DataPathError::Batch {
                name: names::RULE_COUNTERS.into(),
                source: e,
            },
        )?;
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
