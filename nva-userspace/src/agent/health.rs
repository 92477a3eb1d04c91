//! The truthful health check: is the data path really enforcing the rule set
//! the agent believes it loaded? Run every `agent.health_interval_ms`; the
//! HTTP server only serves the latest result, so it answers at once.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nva_common::{ACTION_ALLOW, NO_RULE, XDP_DROP, XDP_PASS};
use serde::Serialize;

use crate::classifier::compiler::{CompiledRuleSet, PacketView};
use crate::datapath::pin::PinLayout;
use crate::datapath::DataPath;
use crate::datapath::{ifindex_by_name, pinned_link_target};

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct HealthReport {
    pub healthy: bool,
    pub checks: Vec<Check>,
}

impl HealthReport {
    pub fn failing(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.ok).collect()
    }
}

/// Whether the pinned link of `iface` is attached to that interface.
pub fn link_attached(layout: &crate::datapath::pin::PinLayout, iface: &str) -> bool {
    match (
        ifindex_by_name(iface),
        pinned_link_target(&layout.link(iface)),
    ) {
        (Some(want), Ok((got, _))) => want == got,
        _ => false,
    }
}

/// Whether the interface is administratively and operationally up.
fn interface_up(iface: &str) -> std::io::Result<bool> {
    // SAFETY: socket() takes no pointers; its result is checked below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket() returned a new descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is a C struct of integers, arrays and unions of them: all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_flags of a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel wrote ifru_flags, the member read here.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as libc::c_int;
    Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}

/// A synthetic UDP packet (TEST-NET addresses) and the action the loaded
/// rule set must give it, from the compiler's model of the lookup. Built
/// once per rule set: the model is costly to build for large rule sets.
#[derive(Clone, Debug)]
pub struct HealthProbe {
    frame: Vec<u8>,
    want: u32,
}

impl HealthProbe {
    pub fn for_rules(compiled: &CompiledRuleSet) -> HealthProbe {
        let (frame, want) = probe_packet(compiled);
        HealthProbe { frame, want }
    }
}

fn probe_packet(compiled: &CompiledRuleSet) -> (Vec<u8>, u32) {
    let (src, dst) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 1));
    let view = PacketView {
        src: src.into(),
        dst: dst.into(),
        proto: 17,
        sport: 9,
        dport: 9,
        icmp_type: 0,
        iface: None,
    };
    let rule = compiled.model().lookup(&view);
    let allow = if rule == NO_RULE {
        compiled.default_action == ACTION_ALLOW
    } else {
        compiled.rule_actions[rule as usize].action == ACTION_ALLOW
    };
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let udp = [0u8, 9, 0, 9, 0, 8, 0, 0];
    let total = (20 + udp.len()) as u16;
    frame.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
    ]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&udp);
    (frame, if allow { XDP_PASS } else { XDP_DROP })
}

/// What the health checks look at: the agent's data path and what it
/// believes it loaded.
pub struct HealthInputs<'a> {
    pub datapath: &'a DataPath,
    pub layout: &'a PinLayout,
    pub interfaces: &'a [String],
    /// The generation the agent loaded.
    pub generation: u64,
    pub probe: &'a HealthProbe,
}

/// Runs every check against the live data path.
pub fn check(agent: &HealthInputs<'_>) -> HealthReport {
    let mut checks = Vec::new();
    let prog_id = agent.datapath.program_id().ok();
    for iface in agent.interfaces {
        let ifindex = ifindex_by_name(iface);
        let attached = match (ifindex, pinned_link_target(&agent.layout.link(iface))) {
            (None, _) => (false, "interface does not exist".to_string()),
            (Some(_), Err(e)) => (false, format!("no XDP link: {e}")),
            (Some(want), Ok((got, prog))) if got != want => (
                false,
                format!("XDP link detached (link ifindex {got}, program {prog})"),
            ),
            (Some(_), Ok((_, prog))) if Some(prog) != prog_id => (
                false,
                format!("another program ({prog}) is on the link, not ours ({prog_id:?})"),
            ),
            (Some(_), Ok((_, prog))) => (true, format!("program {prog} attached")),
        };
        checks.push(Check {
            name: format!("attached:{iface}"),
            ok: attached.0,
            detail: attached.1,
        });
        let up = interface_up(iface);
        checks.push(Check {
            name: format!("link_up:{iface}"),
            ok: matches!(up, Ok(true)),
            detail: match up {
                Ok(true) => "up".into(),
                Ok(false) => "down".into(),
                Err(e) => e.to_string(),
            },
        });
    }
    let generation = match agent.datapath.active() {
        Ok((slot, cfg)) if cfg.ready == 1 && cfg.generation == agent.generation => Check {
            name: "generation".into(),
            ok: true,
            detail: format!("generation {} active in slot {slot}", cfg.generation),
        },
        Ok((slot, cfg)) => Check {
            name: "generation".into(),
            ok: false,
            detail: format!(
                "slot {slot} holds generation {} (ready {}), the agent loaded {}",
                cfg.generation, cfg.ready, agent.generation
            ),
        },
        Err(e) => Check {
            name: "generation".into(),
            ok: false,
            detail: e.to_string(),
        },
    };
    checks.push(generation);
    let want = agent.probe.want;
    checks.push(match agent.datapath.test_run(&agent.probe.frame, 0) {
        Ok(got) if got == want => Check {
            name: "verdict".into(),
            ok: true,
            detail: format!("synthetic packet got the expected action {got}"),
        },
        Ok(got) => Check {
            name: "verdict".into(),
            ok: false,
            detail: format!("synthetic packet got action {got}, expected {want}"),
        },
        Err(e) => Check {
            name: "verdict".into(),
            ok: false,
            detail: e.to_string(),
        },
    });
    HealthReport {
        healthy: checks.iter().all(|c| c.ok),
        checks,
    }
}
