//! IPv4 address ranges: the general path's address lookup for large rule
//! sets, in place of a side's IPv4 trie (layout and lookup: see
//! `nva_common::V4_RANGE_BLOCKS`). A kernel LPM trie of 100,000 prefixes
//! walks about 20 nodes per lookup (about 100 ns, most of what a 100,000-rule
//! set costs a packet more than a 10-rule set); here a lookup is a directory
//! entry, a binary search among the ranges of the address's /16 block, and
//! the class: array reads.

use rustc_hash::FxHashMap as HashMap;

use nva_common::{
    v4_range_find, v4_range_pair, AddrClass, NO_RULE, RULE_GROUPS, V4_RANGE_BLOCKS, V4_RANGE_SUBDIR,
};

use crate::classifier::compiler::PrefixClass;

/// A side's IPv4 prefixes take the range arrays from this many on; below
/// it a trie is as fast, and the directory (512 KiB) would cost a small
/// rule set more memory than its trie.
pub const RANGES_FROM_PREFIXES: usize = 4_096;

/// The range arrays of one side: `entries` (directory, then ranges) and
/// the classes the ranges point at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct V4Ranges {
    pub entries: Vec<u64>,
    pub classes: Vec<AddrClass>,
}

/// A block with more candidate ranges than this gets a sub-directory.
const SUBDIR_FROM_CANDIDATES: u32 = 8;

/// No prefix holds the address (what a trie miss gives).
const NONE: AddrClass = AddrClass {
    class: [NO_RULE; RULE_GROUPS],
};

impl V4Ranges {
    /// The ranges of `prefixes` (distinct prefixes, any order): each
    /// address gets the class of the longest prefix holding it.
    pub fn build(prefixes: &[PrefixClass<4>]) -> V4Ranges {
        let mut sorted: Vec<(u64, u64, AddrClass)> = prefixes
            .iter()
            .map(|p| {
                let start = u32::from_be_bytes(p.addr) as u64;
                let size = 1u64 << (32 - p.len as u32);
                (start, start + size - 1, p.class)
            })
            .collect();
        // By start, a containing prefix before those it contains.
        sorted.sort_unstable_by_key(|&(start, end, _)| (start, std::cmp::Reverse(end)));
        debug_assert!(
            sorted
                .windows(2)
                .all(|w| (w[0].0, w[0].1) != (w[1].0, w[1].1)),
            "a prefix appears once"
        );
        // (first address, class) in address order, from address 0.
        let mut ranges: Vec<(u64, AddrClass)> = vec![(0, NONE)];
        let mut emit = |start: u64, class: AddrClass| {
            if start > u32::MAX as u64 {
                return;
            }
            let last = ranges.last_mut().expect("starts with address 0");
            if last.0 == start {
                // A longer prefix from the same address takes over.
                last.1 = class;
                let n = ranges.len();
                if n >= 2 && ranges[n - 2].1 == class {
                    ranges.pop();
                }
            } else if last.1 != class {
                ranges.push((start, class));
            }
        };
        // The prefixes holding the current address, innermost last.
        let mut open: Vec<(u64, AddrClass)> = Vec::new();
        for &(start, end, class) in &sorted {
            while let Some(&(top_end, _)) = open.last() {
                if top_end >= start {
                    break;
                }
                open.pop();
                emit(top_end + 1, open.last().map_or(NONE, |o| o.1));
            }
            emit(start, class);
            open.push((end, class));
        }
        while let Some((top_end, _)) = open.pop() {
            emit(top_end + 1, open.last().map_or(NONE, |o| o.1));
        }
        // Classes, each once.
        let mut class_index: HashMap<AddrClass, u32> = HashMap::default();
        let mut classes = Vec::new();
        let starts: Vec<u64> = ranges.iter().map(|r| r.0).collect();
        // Index (among the ranges) of the range holding `addr`.
        let holding = |addr: u64| (starts.partition_point(|&s| s <= addr) - 1) as u32;
        // Per block: its candidates (first, last), and the bits of its
        // sub-directory (0: none).
        let blocks: Vec<(u32, u32, u32)> = (0..V4_RANGE_BLOCKS as u64)
            .map(|block| {
                let first = holding(block << 16);
                let last = holding(block << 16 | 0xffff);
                let candidates = last - first + 1;
                // About four candidates per slice: two probes. Past 8
                // candidates, at least 2 bits (ceil(log2) is at least 4).
                let bits = if candidates > SUBDIR_FROM_CANDIDATES {
                    (u32::BITS - (candidates - 1).leading_zeros() - 2).min(8)
                } else {
                    0
                };
                (first, last, bits)
            })
            .collect();
        let subdir_entries: u32 = blocks
            .iter()
            .filter(|b| b.2 != 0)
            .map(|b| 1u32 << b.2)
            .sum();
        let first_range = V4_RANGE_BLOCKS + subdir_entries;
        let mut entries = Vec::with_capacity((first_range as usize) + ranges.len());
        let mut subdirs = Vec::with_capacity(subdir_entries as usize);
        for (block, &(first, last, bits)) in blocks.iter().enumerate() {
            if bits == 0 {
                entries.push(v4_range_pair(first_range + first, first_range + last));
                continue;
            }
            entries.push(v4_range_pair(
                V4_RANGE_BLOCKS + subdirs.len() as u32,
                V4_RANGE_SUBDIR + bits,
            ));
            let slice = 1u64 << (16 - bits);
            for i in 0..1u64 << bits {
                let from = ((block as u64) << 16) | (i * slice);
                subdirs.push(v4_range_pair(
                    first_range + holding(from),
                    first_range + holding(from + slice - 1),
                ));
            }
        }
        entries.extend(subdirs);
        for (start, class) in &ranges {
            let index = *class_index.entry(*class).or_insert_with(|| {
                classes.push(*class);
                classes.len() as u32 - 1
            });
            entries.push(v4_range_pair(*start as u32, index));
        }
        V4Ranges { entries, classes }
    }

    /// The class of `addr`, found as the program finds it (the same
    /// function, `nva_common::v4_range_find`).
    pub fn lookup(&self, addr: u32) -> AddrClass {
        v4_range_find(addr, |i| self.entries.get(i as usize).copied())
            .and_then(|range| self.classes.get((range >> 32) as usize))
            .copied()
            .unwrap_or(NONE)
    }

    /// Kernel memory of the two arrays (array elements are 8-byte aligned).
    pub fn bytes(&self) -> u64 {
        self.entries.len() as u64 * 8 + self.classes.len() as u64 * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::rulegen::Rng;

    fn lpm(prefixes: &[PrefixClass<4>], addr: u32) -> AddrClass {
        prefixes
            .iter()
            .filter(|p| {
                let mask = if p.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - p.len as u32)
                };
                addr & mask == u32::from_be_bytes(p.addr)
            })
            .max_by_key(|p| p.len)
            .map_or(NONE, |p| p.class)
    }

    fn prefix(addr: u32, len: u8, class: u32) -> PrefixClass<4> {
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - len as u32)
        };
        PrefixClass {
            addr: (addr & mask).to_be_bytes(),
            len,
            class: AddrClass::single(class),
        }
    }

    #[test]
    fn every_address_gets_its_longest_prefix_class() {
        let mut rng = Rng::new(42);
        for round in 0..40 {
            // Nested and overlapping prefixes around a few bases, with the
            // edges of the address space (0/0, 255.255.255.255/32) at times.
            let bases: Vec<u32> = (0..1 + rng.below(6))
                .map(|_| rng.next_u64() as u32)
                .collect();
            let mut seen = std::collections::HashSet::new();
            let mut prefixes = Vec::new();
            for i in 0..(1 + rng.below(300)) as u32 {
                let base = bases[rng.below(bases.len() as u64) as usize]
                    ^ (rng.next_u64() as u32 & 0xffff);
                let len = [0, 1, 8, 15, 16, 17, 24, 31, 32][rng.below(9) as usize];
                let p = if round % 5 == 0 && i == 0 {
                    prefix(u32::MAX, 32, i)
                } else {
                    prefix(base, len, i)
                };
                if seen.insert((p.addr, p.len)) {
                    prefixes.push(p);
                }
            }
            let ranges = V4Ranges::build(&prefixes);
            let mut probes: Vec<u32> = vec![0, u32::MAX];
            for p in &prefixes {
                let start = u32::from_be_bytes(p.addr);
                let end = start | (u32::MAX.checked_shr(p.len as u32).unwrap_or(0));
                probes.extend([start, end, start.wrapping_sub(1), end.wrapping_add(1)]);
            }
            probes.extend((0..2_000).map(|_| rng.next_u64() as u32));
            for addr in probes {
                assert_eq!(
                    ranges.lookup(addr),
                    lpm(&prefixes, addr),
                    "round {round}: {}",
                    std::net::Ipv4Addr::from(addr)
                );
            }
        }
    }

    #[test]
    fn the_densest_slices_are_searched_within_the_bound() {
        // Under a /16, a /32 at every address of 10.0.2.1-10.0.2.255 and
        // 300 more spread over the block: more than 512 candidates, so the
        // block gets the most slices (8 bits, 256 addresses each), and the
        // slice 10.0.2.0/24 has 256 candidates (8 probes), the most a slice
        // can have.
        let prefixes: Vec<PrefixClass<4>> = (1..256u32)
            .map(|i| prefix(0x0a00_0200 | i, 32, i))
            .chain((0..300u32).map(|i| prefix(0x0a00_8000 | (i * 4), 32, 1_000 + i)))
            .chain([prefix(0x0a00_0000, 16, 99_999)])
            .collect();
        let ranges = V4Ranges::build(&prefixes);
        let block = ranges.entries[0x0a00];
        assert_eq!(
            (block >> 32) as u32,
            V4_RANGE_SUBDIR + 8,
            "the block has a sub-directory of 256 slices"
        );
        for addr in (0x09ff_fff0u32..0x0a01_0010).step_by(3) {
            assert_eq!(ranges.lookup(addr), lpm(&prefixes, addr));
        }
    }

    #[test]
    fn a_block_of_65536_candidates_is_searched_within_the_bound() {
        // Built by hand (the compiler would give it a sub-directory): one
        // block whose every address starts a range, class = address.
        let base = V4_RANGE_BLOCKS;
        let mut entries = vec![v4_range_pair(base, base); V4_RANGE_BLOCKS as usize];
        entries[1] = v4_range_pair(base, base + 65_535);
        entries[2] = v4_range_pair(base + 65_535, base + 65_535);
        entries.extend((0..65_536u32).map(|i| v4_range_pair(0x0001_0000 | i, i)));
        for addr in (0x0001_0000u32..0x0002_0000)
            .step_by(97)
            .chain([0x0001_0000, 0x0001_ffff])
        {
            let range = v4_range_find(addr, |i| entries.get(i as usize).copied());
            assert_eq!(range.map(|r| (r >> 32) as u32), Some(addr & 0xffff));
        }
    }
}
