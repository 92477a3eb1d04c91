//! The verdict on a frame: parse, conntrack, the management failsafe, then
//! the rules of the active slot; counting and sampled events.

use aya_ebpf::programs::XdpContext;
use nva_common::{
    DataPathConfig, LogBudget, ManagementKey, PacketEvent, PacketReason, RuleCounters,
    ACTION_ALLOW, FRAGMENTS_ALLOW, LOG_EVENTS_PER_SECOND, LOG_SLOT_DEFAULT_DROP, NO_RULE,
    PROTO_TCP, PROTO_UDP,
};

use crate::maps::{
    self, Tables, ACTIVE, CONFIG, DIAG_LAST_NS, EVENTS, LOCAL_ADDRS, LOG_BUDGET, PACKET,
    PACKET_COUNTERS,
};
use crate::parse::{self, Packet};
use crate::{classify, conntrack, nat};

/// The verdict for one frame (a [`PacketReason`] number): parse,
/// conntrack, management failsafe, rules, then NAT.
#[inline(always)]
pub fn decide(ctx: &XdpContext) -> u32 {
    // One read decides the rule set for this packet: a reload flips ACTIVE
    // only once the other slot is complete.
    let slot = ACTIVE.get(0).copied().unwrap_or(0) & 1;
    // An answered flow's ordinary packet takes the lean path, before the
    // full parse; NAT has nothing to do for it (translated flows take the
    // full path).
    if let Some(config) = CONFIG.get(slot) {
        if config.ready != 0 {
            if let Some(reason) = conntrack::lean(ctx, config) {
                return reason as u32;
            }
        }
    }
    // The parsed packet lives in map memory, off the program's small stack.
    let Some(pkt) = PACKET.get_ptr_mut(0) else {
        return PacketReason::PassNotReady as u32;
    };
    // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and aligned
    // for the value; the slot is this CPU's, XDP runs do not nest on a CPU, and nothing else
    // references it during this run.
    let pkt = unsafe { &mut *pkt };
    match parse::parse_into(ctx, pkt) {
        Ok(true) => {}
        Ok(false) => return PacketReason::PassNonIp as u32,
        Err(reason) => return reason as u32,
    }
    let reason = match slot {
        0 => decide_with::<maps::slot0::Slot>(ctx, pkt, 0),
        _ => decide_with::<maps::slot1::Slot>(ctx, pkt, 1),
    };
    // NAT rewrites what passes, in this (the shallowest) stack frame.
    nat::apply(ctx, pkt, reason)
}

// A function of its own (a BPF-to-BPF call) per slot: each gets its own
// stack frame instead of both slots' locals sharing the 512-byte limit.
#[inline(never)]
fn decide_with<T: Tables>(ctx: &XdpContext, pkt: &mut Packet, slot: u32) -> PacketReason {
    let Some(config) = CONFIG.get(slot) else {
        return PacketReason::PassNotReady;
    };
    if config.ready == 0 {
        diagnose_not_ready(ctx, slot);
        return PacketReason::PassNotReady;
    }
    if pkt.later_fragment {
        return if config.fragments == FRAGMENTS_ALLOW {
            PacketReason::PassFragment
        } else {
            PacketReason::DropFragment
        };
    }
    // Conntrack first: a packet of a tracked flow costs this one lookup.
    // Conntrack and classification run on every path in the same order, so
    // the verifier explores the classifier once per slot (see
    // `ConntrackScratch`).
    let reason = conntrack::track(ctx, pkt, config);
    if reason != conntrack::CLASSIFY {
        return reason;
    }
    // Management traffic is never tracked (it passes before any insert), so
    // checking it after the lookup changes nothing for it.
    if is_management::<T>(pkt) {
        return PacketReason::PassManagement;
    }
    if let Some(drop) = conntrack::pending_drop() {
        return drop;
    }
    // From here `pkt` is the packet as the classifier sees it (turned
    // around for a re-check, DNAT applied). It is map memory, so these
    // rewrites are invisible to the verifier, which explores the classifier
    // once per slot rather than once per rewrite.
    let ifindex = conntrack::classify_as_origin(ctx, pkt);
    // Netfilter's order: DNAT before the rules, SNAT after them.
    nat::dnat::<T>(pkt, ifindex, config);
    let (reason, counter) = rule_verdict::<T>(ctx, pkt, ifindex, config);
    if reason.is_pass() {
        nat::snat::<T>(pkt, ifindex, config);
    }
    conntrack::after_classify(ctx, reason, counter, config)
}

/// Classifies a packet: the verdict, and the counter index of the rule that
/// decided (NO_RULE: the default policy).
#[inline(always)]
fn rule_verdict<T: Tables>(
    ctx: &XdpContext,
    pkt: &Packet,
    ifindex: u32,
    config: &DataPathConfig,
) -> (PacketReason, u32) {
    let rule = classify::first_match::<T>(pkt, ifindex, config);
    if rule == NO_RULE {
        if config.default_action == ACTION_ALLOW {
            return (PacketReason::PassDefault, NO_RULE);
        }
        if config.log_drops != 0 {
            log_event(
                ctx,
                pkt,
                NO_RULE,
                LOG_SLOT_DEFAULT_DROP,
                PacketReason::DropDefault,
            );
        }
        return (PacketReason::DropDefault, NO_RULE);
    }
    let Some(action) = T::rule_action(rule) else {
        return (PacketReason::DropRule, NO_RULE);
    };
    count_rule::<T>(ctx, config.counter_stride, action.counter);
    let reason = if action.action == ACTION_ALLOW {
        PacketReason::PassRule
    } else {
        PacketReason::DropRule
    };
    if action.log != 0 || (config.log_drops != 0 && !reason.is_pass()) {
        log_event(ctx, pkt, action.counter, action.counter, reason);
    }
    (reason, action.counter)
}

/// Emits a packet event unless this slot's budget for the current second
/// (per CPU) is spent: logging never costs more than a few events per rule.
#[inline(always)]
fn log_event(ctx: &XdpContext, pkt: &Packet, counter: u32, slot: u32, reason: PacketReason) {
    // SAFETY: a BPF helper without arguments that only reads a clock.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let budget = match LOG_BUDGET.get_ptr_mut(slot) {
        Some(budget) => budget,
        None => {
            // First event of this slot (or its slot was evicted): a window
            // starts now. Another CPU may have inserted it meanwhile; then
            // this one only resets this CPU's copy.
            let fresh = LogBudget {
                window_start_ns: now,
                sent: 0,
                _pad: 0,
            };
            let _ = LOG_BUDGET.insert(slot, fresh, 0);
            match LOG_BUDGET.get_ptr_mut(slot) {
                Some(budget) => budget,
                None => return,
            }
        }
    };
    // SAFETY: the pointer comes from a successful per-CPU map lookup, so it
    // is valid and aligned, and points at this CPU's copy; XDP runs do not
    // nest on a CPU, so no other run writes it meanwhile. The program runs
    // under RCU, so the element's memory stays valid even if the LRU evicts
    // it now; the worst is a write into a slot reused for another rule's
    // budget, a rate limit reset early.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.window_start_ns) >= 1_000_000_000 {
        budget.window_start_ns = now;
        budget.sent = 0;
    }
    if budget.sent >= LOG_EVENTS_PER_SECOND {
        return;
    }
    budget.sent += 1;
    if let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) {
        let ev = PacketEvent {
            ts_ns: now,
            src: pkt.src,
            dst: pkt.dst,
            counter,
            ifindex: ctx.ingress_ifindex() as u32,
            bytes: (ctx.data_end() - ctx.data()) as u32,
            sport: pkt.sport,
            dport: pkt.dport,
            proto: pkt.proto,
            is_v6: pkt.is_v6 as u8,
            reason: reason as u8,
            _pad8: 0,
            _pad32: 0,
        };
        entry.write(ev);
        entry.submit(0);
    }
}

/// Failsafe: management ports of the NVA itself pass before any rule. Only
/// traffic addressed to one of the NVA's own addresses qualifies: traffic
/// through the NVA to the same port elsewhere follows the rules.
#[inline(always)]
fn is_management<T: Tables>(pkt: &Packet) -> bool {
    if pkt.proto != PROTO_TCP && pkt.proto != PROTO_UDP {
        return false;
    }
    let key = ManagementKey {
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    // SAFETY: only whether the key is present is used; the element is never read.
    if unsafe { T::management().get(&key) }.is_none() {
        return false;
    }
    let local = if pkt.is_v6 {
        pkt.dst
    } else {
        nva_common::v4_mapped([pkt.dst[0], pkt.dst[1], pkt.dst[2], pkt.dst[3]])
    };
    // SAFETY: only whether the key is present is used; the element is never read.
    unsafe { LOCAL_ADDRS.get(&local) }.is_some()
}

/// Counts a verdict by reason (its number; per CPU).
#[inline(always)]
pub fn count_packet(reason: u32) {
    if let Some(counter) = PACKET_COUNTERS.get_ptr_mut(reason) {
        // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and
        // aligned for the value; the slot is this CPU's and XDP runs do not nest on a CPU, so
        // nothing else writes it during this run (userspace only reads it, or zeroes slots not in
        // use).
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn count_rule<T: Tables>(ctx: &XdpContext, stride: u32, counter: u32) {
    // Past the stride, the index would be the next CPU's.
    if counter >= stride {
        return;
    }
    // SAFETY: a BPF helper without arguments that only reads the CPU id.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    if let Some(counters) = T::rule_counters(cpu.wrapping_mul(stride).wrapping_add(counter)) {
        // SAFETY: the pointer comes from a successful array lookup, so it is valid and aligned
        // for the value (array elements live as long as the array, which this run holds); the
        // element is this CPU's (the index starts at this CPU's part) and XDP runs do not nest
        // on a CPU, so nothing else writes it during this run (userspace only reads it, or
        // zeroes counters no rule uses).
        let counters: &mut RuleCounters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += (ctx.data_end() - ctx.data()) as u64;
    }
}

/// A rare diagnostic for the agent's log (aya-log, forwarded into its
/// `tracing` output): packets pass because the active slot holds no complete
/// rule set (only between a fresh load and the first install). At most one
/// record a second per CPU.
#[inline(never)]
fn diagnose_not_ready(ctx: &XdpContext, slot: u32) {
    let Some(last) = DIAG_LAST_NS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a BPF helper without arguments that only reads a clock.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
    // SAFETY: the pointer comes from a successful per-CPU map lookup, so it
    // is valid and aligned; the slot is this CPU's and XDP runs do not nest
    // on a CPU, so nothing else writes it during this run.
    let last = unsafe { &mut *last };
    if *last != 0 && now.wrapping_sub(*last) < 1_000_000_000 {
        return;
    }
    *last = now;
    aya_log_ebpf::warn!(
        ctx,
        "slot {} holds no complete rule set: packets pass until one is installed",
        slot
    );
}
