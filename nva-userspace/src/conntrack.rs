//! The conntrack table seen from userspace: listing, counting, flushing, the
//! background sweep of expired flows, and the statistics (evictions are
//! derived, the kernel does not count them). Everything works on the pinned
//! maps, so it also works while the agent is down.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use nva_common::{
    map_names as names, ConntrackEntry, ConntrackKey, ConntrackState, NatBinding, CT_STATS,
    CT_STAT_CREATED, CT_STAT_REPLACED, CT_STAT_REVOKED, CT_STAT_USER_REMOVED, NAT_REVERSE,
    NAT_REWRITE_DST, NAT_REWRITE_SRC, NO_RULE,
};
use serde::Serialize;

use crate::datapath::pin::PinLayout;
use crate::datapath::{open_pinned, DataPath, DataPathError};

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error(transparent)]
    DataPath(#[from] DataPathError),
    #[error("conntrack table: {0}")]
    Io(#[from] std::io::Error),
    #[error("conntrack statistics: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// The kernel's clock of the entries (`bpf_ktime_get_coarse_ns`).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds until the entry expires (0: expired), under `timeouts_s`
/// (seconds by state, as in `DataPathConfig`).
pub fn remaining_ns(entry: &ConntrackEntry, timeouts_s: &[u32], now: u64) -> u64 {
    let timeout = timeouts_s.get(entry.state as usize).copied().unwrap_or(0) as u64 * 1_000_000_000;
    let idle = now.saturating_sub(entry.last_seen_ns);
    timeout.saturating_sub(idle)
}

/// The conntrack maps of an agent's pin layout (answered flows, flows not
/// answered yet), with the NAT bindings of translated flows.
pub struct Table {
    flows: Map,
    unreplied: Map,
    stats: Map,
    nat: Map,
}

impl Table {
    pub fn open(layout: &PinLayout) -> Result<Table, ConntrackError> {
        Ok(Table {
            flows: Map::LruHashMap(open_pinned(layout, names::CONNTRACK)?),
            unreplied: Map::LruHashMap(open_pinned(layout, names::CONNTRACK_UNREPLIED)?),
            stats: Map::PerCpuArray(open_pinned(layout, names::CONNTRACK_STATS)?),
            nat: Map::HashMap(open_pinned(layout, names::NAT_BINDINGS)?),
        })
    }

    /// The table of a loaded program (unpinned data paths: tests, tools),
    /// on its own handles of the maps.
    pub fn of(datapath: &DataPath) -> Result<Table, ConntrackError> {
        Ok(Table {
            flows: Map::LruHashMap(datapath.map_handle(names::CONNTRACK)?),
            unreplied: Map::LruHashMap(datapath.map_handle(names::CONNTRACK_UNREPLIED)?),
            stats: Map::PerCpuArray(datapath.map_handle(names::CONNTRACK_STATS)?),
            nat: Map::HashMap(datapath.map_handle(names::NAT_BINDINGS)?),
        })
    }

    /// Both flow tables, answered flows first.
    fn tables(&self) -> [&Map; 2] {
        [&self.flows, &self.unreplied]
    }

    fn fds(&self) -> [BorrowedFd<'_>; 2] {
        self.tables().map(|m| match m {
            Map::LruHashMap(d) => d.fd().as_fd(),
            _ => unreachable!("opened as an LRU hash"),
        })
    }

    fn nat_fd(&self) -> BorrowedFd<'_> {
        match &self.nat {
            Map::HashMap(d) => d.fd().as_fd(),
            _ => unreachable!("opened as a hash"),
        }
    }

    /// Inserts or replaces a flow (an imported one), in the table the data
    /// path would keep it in.
    pub fn insert(
        &mut self,
        key: &ConntrackKey,
        entry: &ConntrackEntry,
    ) -> Result<(), ConntrackError> {
        let (to, other) = if entry.answered() {
            (&mut self.flows, &mut self.unreplied)
        } else {
            (&mut self.unreplied, &mut self.flows)
        };
        let mut map: aya::maps::HashMap<&mut MapData, ConntrackKey, ConntrackEntry> =
            aya::maps::HashMap::try_from(to)?;
        map.insert(key, entry, 0)?;
        remove_from(other, key)
    }

    /// The flow under `key`, if any.
    pub fn get(&self, key: &ConntrackKey) -> Result<Option<ConntrackEntry>, ConntrackError> {
        for table in self.tables() {
            let map: aya::maps::HashMap<&MapData, ConntrackKey, ConntrackEntry> =
                aya::maps::HashMap::try_from(table)?;
            match map.get(key, 0) {
                Ok(e) => return Ok(Some(e)),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Removes a flow, if present.
    pub fn remove(&mut self, key: &ConntrackKey) -> Result<(), ConntrackError> {
        remove_from(&mut self.flows, key)?;
        remove_from(&mut self.unreplied, key)
    }

    /// Inserts or replaces a NAT binding (of an imported flow).
    pub fn insert_binding(
        &mut self,
        key: &ConntrackKey,
        b: &NatBinding,
    ) -> Result<(), ConntrackError> {
        let mut map: aya::maps::HashMap<&mut MapData, ConntrackKey, NatBinding> =
            aya::maps::HashMap::try_from(&mut self.nat)?;
        map.insert(key, b, 0)?;
        Ok(())
    }

    /// Every NAT binding (a snapshot taken a chunk at a time).
    pub fn bindings(
        &self,
    ) -> Result<std::collections::HashMap<ConntrackKey, NatBinding>, ConntrackError> {
        let mut out = std::collections::HashMap::new();
        crate::datapath::batch::for_each::<ConntrackKey, NatBinding>(self.nat_fd(), &mut |c| {
            out.extend(c.iter().copied())
        })?;
        Ok(out)
    }

    /// Removes the bindings whose flow is gone (expired and swept, evicted,
    /// revoked). A binding is removed only if its flow is still missing
    /// when it is looked at again: the program stores a new flow's reverse
    /// binding an instant before the flow itself. Returns how many.
    pub fn sweep_bindings(&mut self) -> Result<usize, ConntrackError> {
        let bindings = self.bindings()?;
        if bindings.is_empty() {
            return Ok(0);
        }
        let orphan = |b: &NatBinding| !matches!(self.get(&b.flow), Ok(Some(e)) if e.nat != 0);
        let candidates: Vec<ConntrackKey> = bindings
            .iter()
            .filter(|(_, b)| orphan(b))
            .map(|(k, _)| *k)
            .collect();
        let nat: aya::maps::HashMap<&MapData, ConntrackKey, NatBinding> =
            aya::maps::HashMap::try_from(&self.nat)?;
        let confirmed: Vec<ConntrackKey> = candidates
            .into_iter()
            .filter(|k| matches!(nat.get(k, 0), Ok(b) if orphan(&b)))
            .collect();
        Ok(crate::datapath::batch::delete(self.nat_fd(), &confirmed)?)
    }

    /// Every entry, answered flows first (a snapshot taken a chunk at a
    /// time). A flow moved between the tables while they are read may show
    /// twice; the first (answered) copy is kept.
    pub fn entries(&self) -> Result<Vec<(ConntrackKey, ConntrackEntry)>, ConntrackError> {
        let mut out = Vec::new();
        let [flows, unreplied] = self.fds();
        crate::datapath::batch::for_each::<ConntrackKey, ConntrackEntry>(flows, &mut |chunk| {
            out.extend_from_slice(chunk)
        })?;
        let answered = out.len();
        let mut fresh = Vec::new();
        crate::datapath::batch::for_each::<ConntrackKey, ConntrackEntry>(
            unreplied,
            &mut |chunk| fresh.extend_from_slice(chunk),
        )?;
        if !fresh.is_empty() {
            let seen: std::collections::HashSet<ConntrackKey> =
                out[..answered].iter().map(|(k, _)| *k).collect();
            out.extend(fresh.into_iter().filter(|(k, _)| !seen.contains(k)));
        }
        Ok(out)
    }

    /// Number of entries present in (answered, unreplied) flows, expired
    /// ones included until swept.
    pub fn counts(&self) -> Result<(usize, usize), ConntrackError> {
        let mut n = [0usize; 2];
        for (fd, n) in self.fds().into_iter().zip(n.iter_mut()) {
            crate::datapath::batch::for_each::<ConntrackKey, ConntrackEntry>(fd, &mut |chunk| {
                *n += chunk.len()
            })?;
        }
        Ok((n[0], n[1]))
    }

    /// Number of entries present (expired ones included until swept).
    pub fn count(&self) -> Result<usize, ConntrackError> {
        let (answered, unreplied) = self.counts()?;
        Ok(answered + unreplied)
    }

    /// Removes every entry; returns how many there were. Tracked TCP
    /// connections then need `policy.loose_tcp` (or a new handshake).
    pub fn flush(&mut self) -> Result<usize, ConntrackError> {
        let mut n = 0;
        for fd in self.fds() {
            n += crate::datapath::batch::drain::<ConntrackKey, ConntrackEntry>(fd)?;
        }
        self.add_user_removed(n as u64)?;
        crate::datapath::batch::drain::<ConntrackKey, NatBinding>(self.nat_fd())?;
        Ok(n)
    }

    /// Removes the entries that have expired under `timeouts_s`. Each
    /// candidate is read again just before its removal, so a flow that saw
    /// a packet meanwhile stays. Returns (entries left, entries removed).
    pub fn sweep(&mut self, timeouts_s: &[u32]) -> Result<(usize, usize), ConntrackError> {
        let (mut total, mut removed) = (0, 0);
        for (table, fd) in self.tables().into_iter().zip(self.fds()) {
            let now = now_ns();
            let mut expired = Vec::new();
            crate::datapath::batch::for_each::<ConntrackKey, ConntrackEntry>(fd, &mut |chunk| {
                total += chunk.len();
                expired.extend(
                    chunk
                        .iter()
                        .filter(|(_, e)| remaining_ns(e, timeouts_s, now) == 0)
                        .map(|(k, _)| *k),
                );
            })?;
            let map: aya::maps::HashMap<&MapData, ConntrackKey, ConntrackEntry> =
                aya::maps::HashMap::try_from(table)?;
            let now = now_ns();
            let still_expired: Vec<ConntrackKey> = expired
                .into_iter()
                .filter(|k| match map.get(k, 0) {
                    Ok(e) => remaining_ns(&e, timeouts_s, now) == 0,
                    Err(_) => false,
                })
                .collect();
            removed += crate::datapath::batch::delete(fd, &still_expired)?;
        }
        self.add_user_removed(removed as u64)?;
        Ok((total.saturating_sub(removed), removed))
    }

    /// The program's counters, summed over CPUs, indexed by `CT_STAT_*`.
    pub fn stats(&self) -> Result<[u64; CT_STATS as usize], ConntrackError> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(&self.stats)?;
        let mut out = [0u64; CT_STATS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Flows evicted by the LRU because the table was full: every flow
    /// created and not replaced, revoked, removed or still present.
    pub fn evictions(&self, present: usize) -> Result<u64, ConntrackError> {
        let s = self.stats()?;
        Ok(s[CT_STAT_CREATED as usize]
            .saturating_sub(s[CT_STAT_REPLACED as usize])
            .saturating_sub(s[CT_STAT_REVOKED as usize])
            .saturating_sub(s[CT_STAT_USER_REMOVED as usize])
            .saturating_sub(present as u64))
    }

    /// Counts userspace removals (on CPU 0's slot; the program never writes
    /// this index).
    fn add_user_removed(&mut self, n: u64) -> Result<(), ConntrackError> {
        if n == 0 {
            return Ok(());
        }
        let mut map: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(&mut self.stats)?;
        let mut values: Vec<u64> = map.get(&CT_STAT_USER_REMOVED, 0)?.iter().copied().collect();
        values[0] += n;
        map.set(CT_STAT_USER_REMOVED, PerCpuValues::try_from(values)?, 0)?;
        Ok(())
    }
}

fn remove_from(table: &mut Map, key: &ConntrackKey) -> Result<(), ConntrackError> {
    let mut map: aya::maps::HashMap<&mut MapData, ConntrackKey, ConntrackEntry> =
        aya::maps::HashMap::try_from(table)?;
    match map.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The timeouts of the active rule set (seconds by state), from the pinned
/// maps; all zero when none is installed.
pub fn active_timeouts(layout: &PinLayout) -> Result<[u32; CT_STATES_LEN], ConntrackError> {
    let active = Map::Array(open_pinned(layout, names::ACTIVE)?);
    let active: aya::maps::Array<&MapData, u32> = aya::maps::Array::try_from(&active)?;
    let slot = active.get(&0, 0)? & 1;
    let config = Map::Array(open_pinned(layout, names::CONFIG)?);
    let config: aya::maps::Array<&MapData, nva_common::DataPathConfig> =
        aya::maps::Array::try_from(&config)?;
    Ok(config.get(&slot, 0)?.timeouts_s)
}

const CT_STATES_LEN: usize = nva_common::CT_STATES;

/// What the agent publishes about the table after each sweep.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub entries: u64,
    pub created: u64,
    pub evictions: u64,
    pub revoked: u64,
    /// Expired entries removed by the sweeps of this agent.
    pub expired_removed: u64,
}

/// How often the agent sweeps: often enough that short timeouts free their
/// entries promptly, at most every 10 s (a sweep reads the whole table).
pub fn sweep_interval(timeouts_s: &[u32]) -> std::time::Duration {
    let shortest = timeouts_s
        .iter()
        .copied()
        .filter(|t| *t > 0)
        .min()
        .unwrap_or(10);
    std::time::Duration::from_secs((shortest as u64 / 2).clamp(1, 10))
}

/// One sweep: removes expired entries and returns the new summary.
pub fn sweep_once(layout: &PinLayout, previous: &Summary) -> Result<Summary, ConntrackError> {
    let timeouts = active_timeouts(layout)?;
    let mut table = Table::open(layout)?;
    let (left, removed) = table.sweep(&timeouts)?;
    let unbound = table.sweep_bindings()?;
    if unbound > 0 {
        tracing::debug!(unbound, "removed the NAT bindings of flows that are gone");
    }
    let stats = table.stats()?;
    Ok(Summary {
        entries: left as u64,
        created: stats[CT_STAT_CREATED as usize],
        evictions: table.evictions(left)?,
        revoked: stats[CT_STAT_REVOKED as usize],
        expired_removed: previous.expired_removed + removed as u64,
    })
}

/// One flow as `nva conntrack list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlowView {
    pub proto: String,
    /// The originator.
    pub src: String,
    /// The responder.
    pub dst: String,
    pub state: String,
    pub age_s: f64,
    pub expires_in_s: f64,
    /// Name of the rule that admitted the flow ("(default)" for the default
    /// policy, "?" for a rule no longer in the rule set).
    pub rule: String,
    pub packets_orig: u64,
    pub bytes_orig: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    pub vlan: [u16; 2],
    /// Translated flows: the `[[nat]]` entries that translate it (DNAT,
    /// then SNAT, joined by "+"), and the tuple its originator's packets
    /// leave with.
    pub nat: Option<String>,
    pub translated_src: Option<String>,
    pub translated_dst: Option<String>,
    /// Imported from the peer NVA and not seen here yet.
    pub imported: bool,
}

impl FlowView {
    /// Adds the translation of a flow from its forward binding;
    /// `nat_name` maps a NAT counter index to the entry's name.
    pub fn with_nat(
        mut self,
        b: &NatBinding,
        family: u8,
        proto: u8,
        nat_name: &dyn Fn(u32) -> Option<String>,
    ) -> FlowView {
        if b.flags & NAT_REVERSE != 0 {
            return self;
        }
        let names: Vec<String> = [b.dnat_counter, b.snat_counter]
            .iter()
            .filter(|c| **c != NO_RULE)
            .map(|c| nat_name(*c).unwrap_or_else(|| "?".into()))
            .collect();
        self.nat = Some(names.join("+"));
        self.translated_src = Some(if b.flags & NAT_REWRITE_SRC != 0 {
            endpoint(addr(&b.src, family), b.sport, proto)
        } else {
            self.src.clone()
        });
        self.translated_dst = Some(if b.flags & NAT_REWRITE_DST != 0 {
            endpoint(addr(&b.dst, family), b.dport, proto)
        } else {
            self.dst.clone()
        });
        self
    }
}

fn addr(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

fn endpoint(a: IpAddr, port: u16, proto: u8) -> String {
    match (proto, a) {
        (6 | 17, IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        (6 | 17, IpAddr::V4(v4)) => format!("{v4}:{port}"),
        _ => a.to_string(),
    }
}

fn proto_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Describes an entry; `rule_name` maps a counter index to a rule name.
pub fn view(
    key: &ConntrackKey,
    e: &ConntrackEntry,
    timeouts_s: &[u32],
    now: u64,
    rule_name: &dyn Fn(u32) -> Option<String>,
) -> FlowView {
    let lo = endpoint(addr(&key.addr_lo, key.family), key.port_lo, key.proto);
    let hi = endpoint(addr(&key.addr_hi, key.family), key.port_hi, key.proto);
    let (src, dst) = if e.origin_is_lo != 0 {
        (lo, hi)
    } else {
        (hi, lo)
    };
    let proto = match (key.proto, key.port_lo) {
        (1 | 58, id) => format!("{} id={id}", proto_name(key.proto)),
        _ => proto_name(key.proto),
    };
    FlowView {
        proto,
        src,
        dst,
        state: ConntrackState::from_u8(e.state)
            .map(|s| s.name().to_string())
            .unwrap_or_else(|| format!("state{}", e.state)),
        age_s: now.saturating_sub(e.created_ns) as f64 / 1e9,
        expires_in_s: remaining_ns(e, timeouts_s, now) as f64 / 1e9,
        rule: if e.rule_counter == NO_RULE {
            "(default)".into()
        } else {
            rule_name(e.rule_counter).unwrap_or_else(|| "?".into())
        },
        packets_orig: e.packets[0],
        bytes_orig: e.bytes[0],
        packets_reply: e.packets[1],
        bytes_reply: e.bytes[1],
        vlan: key.vlan,
        nat: None,
        translated_src: None,
        translated_dst: None,
        imported: e.flags & nva_common::CT_FLAG_IMPORTED != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> (ConntrackKey, bool) {
        let mut k = ConntrackKey::default();
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s[..4].copy_from_slice(&src);
        d[..4].copy_from_slice(&dst);
        let lo = k.set_from_packet(false, 6, [0, 0], &s, sport, &d, dport);
        (k, lo)
    }

    #[test]
    fn both_directions_share_a_key() {
        let (a, a_lo) = key_of([10, 0, 0, 2], 40000, [10, 0, 0, 1], 80);
        let (b, b_lo) = key_of([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000);
        assert_eq!(a, b);
        assert_ne!(a_lo, b_lo);
        // Same addresses, ports decide.
        let (c, c_lo) = key_of([10, 0, 0, 1], 2, [10, 0, 0, 1], 1);
        assert!(!c_lo);
        assert_eq!((c.port_lo, c.port_hi), (1, 2));
        // normalize() agrees with set_from_packet().
        let mut d = ConntrackKey::default();
        d.addr_lo[..4].copy_from_slice(&[10, 0, 0, 2]);
        d.addr_hi[..4].copy_from_slice(&[10, 0, 0, 1]);
        d.port_lo = 40000;
        d.port_hi = 80;
        d.normalize(false, 6, [0, 0]);
        assert_eq!(d, a);
    }

    #[test]
    fn view_shows_originator_first_and_expiry() {
        let (k, src_is_lo) = key_of([10, 0, 0, 2], 40000, [10, 0, 0, 1], 80);
        let mut timeouts = [0u32; nva_common::CT_STATES];
        timeouts[ConntrackState::TcpEstablished as usize] = 100;
        let e = ConntrackEntry {
            created_ns: 1_000_000_000,
            last_seen_ns: 5_000_000_000,
            state: ConntrackState::TcpEstablished as u8,
            origin_is_lo: src_is_lo as u8,
            rule_counter: 3,
            packets: [4, 5],
            ..Default::default()
        };
        let v = view(&k, &e, &timeouts, 15_000_000_000, &|i| {
            Some(format!("r{i}"))
        });
        assert_eq!(v.src, "10.0.0.2:40000");
        assert_eq!(v.dst, "10.0.0.1:80");
        assert_eq!(v.state, "ESTABLISHED");
        assert_eq!(v.rule, "r3");
        assert_eq!(v.age_s, 14.0);
        assert_eq!(v.expires_in_s, 90.0);
        assert_eq!(remaining_ns(&e, &timeouts, 200_000_000_000), 0);
    }
}
