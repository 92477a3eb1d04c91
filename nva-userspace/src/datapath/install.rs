//! Installing a rule set: the inactive slot is cleared and written, then
//! one write of `ACTIVE` switches to it; the old slot is cleared after every
//! program run that may still read it has finished.

use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::Array;
use nva_common::{
    l4_pattern, map_names as names, ClassMatch, DataPathConfig, L4Key, ManagementKey, PairKey,
    PairMatch, RuleAction, VerdictKey, FRAGMENTS_ALLOW, FRAGMENTS_DROP, MAX_RULES, PAIR_GROUP_BOTH,
    PAIR_GROUP_DST_ONLY, PAIR_GROUP_SRC_ONLY,
};

use super::{map_err, map_fd, slot_name, ArrayShadow, DataPath, DataPathError};
use crate::classifier::compiler::CompiledRuleSet;

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
                crate::datapath::batch::drain::<$k, $v>(fd).map_err(|e| DataPathError::Batch {
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
                crate::datapath::batch::update(fd, &entries).map_err(|e| DataPathError::Batch {
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
            crate::datapath::batch::update(fd, &changed).map_err(|e| DataPathError::Batch {
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
        crate::datapath::batch::update(fd, &actions).map_err(|e| DataPathError::Batch {
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
}
