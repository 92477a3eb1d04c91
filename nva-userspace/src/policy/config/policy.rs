//! The `[policy]` table: the default verdict, stateful mode, fragments,
//! management ports and the conntrack limits.

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;

use super::rules::port_number;
use super::Ctx;
use crate::configfile::{items, OneOrMany, Scalar};
use crate::policy::model::{
    AgentSettings, ConntrackTimeouts, ManagementPort, PolicySettings, Proto, DEFAULT_CONNTRACK_MAX,
};

/// Longest conntrack timeout (seconds).
pub const MAX_CONNTRACK_TIMEOUT_S: u32 = 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    default: Option<Spanned<String>>,
    stateful: Option<Spanned<bool>>,
    loose_tcp: Option<bool>,
    fragments: Option<Spanned<String>>,
    management: Option<Spanned<OneOrMany>>,
    log_drops: Option<bool>,
    conntrack_max: Option<Spanned<i64>>,
    timeouts: Option<RawTimeouts>,
}

/// Conntrack timeouts in seconds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp_syn: Option<Spanned<i64>>,
    tcp_established: Option<Spanned<i64>>,
    tcp_half_closed: Option<Spanned<i64>>,
    tcp_fin: Option<Spanned<i64>>,
    udp: Option<Spanned<i64>>,
    udp_replied: Option<Spanned<i64>>,
    icmp: Option<Spanned<i64>>,
}

impl Ctx<'_> {
    pub(super) fn policy(
        &mut self,
        raw: Spanned<RawPolicy>,
        agent: Option<&AgentSettings>,
    ) -> Option<PolicySettings> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let mark = self.c.mark();

        let default = self
            .c
            .required(
                &raw.default,
                table_span,
                "policy.default is required (\"allow\" or \"drop\"): the verdict for traffic no rule matches",
            )
            .and_then(|v| self.action("policy.default", v));

        let stateful = raw.stateful.as_ref().is_some_and(|v| *v.get_ref());
        let loose_tcp = raw.loose_tcp.unwrap_or(false);

        let fragments_allow = raw.fragments.as_ref().is_some_and(|v| {
            self.c
                .one_of("policy.fragments", v, &[("drop", false), ("allow", true)])
                .unwrap_or(false)
        });

        let mut management: Vec<ManagementPort> = Vec::new();
        if let Some(list) = &raw.management {
            for (span, item) in items(list) {
                match item {
                    Scalar::Str(s) => {
                        if let Some(m) = self.c.check(span, parse_management(s)) {
                            management.push(m);
                        }
                    }
                    Scalar::Int(_) => self.c.err(
                        span,
                        format!(
                            "management entry {item} must be a string like \"tcp/22\" or \"udp/53\""
                        ),
                    ),
                }
            }
        }
        if let Some(agent) = agent {
            management.push(ManagementPort {
                proto: Proto::Tcp,
                port: agent.health_listen.port(),
            });
            if let Some(p) = agent.tcp_probe_listen {
                management.push(ManagementPort {
                    proto: Proto::Tcp,
                    port: p.port(),
                });
            }
        }
        let mut seen = HashSet::new();
        management.retain(|m| seen.insert(*m));

        let log_drops = raw.log_drops.unwrap_or(false);
        let conntrack_max = self.c.int_or(
            "policy.conntrack_max",
            raw.conntrack_max.as_ref(),
            DEFAULT_CONNTRACK_MAX,
            1..=u32::MAX,
        );
        let mut timeouts = ConntrackTimeouts::default();
        if let Some(t) = &raw.timeouts {
            let all = [
                ("tcp_syn", &t.tcp_syn, &mut timeouts.tcp_syn),
                (
                    "tcp_established",
                    &t.tcp_established,
                    &mut timeouts.tcp_established,
                ),
                (
                    "tcp_half_closed",
                    &t.tcp_half_closed,
                    &mut timeouts.tcp_half_closed,
                ),
                ("tcp_fin", &t.tcp_fin, &mut timeouts.tcp_fin),
                ("udp", &t.udp, &mut timeouts.udp),
                ("udp_replied", &t.udp_replied, &mut timeouts.udp_replied),
                ("icmp", &t.icmp, &mut timeouts.icmp),
            ];
            for (key, v, out) in all {
                let Some(v) = v else { continue };
                // A day at most: longer idle flows are better re-opened.
                let key = format!("policy.timeouts.{key}");
                if let Some(n) = self.c.int_in(&key, v, 1..=u32::MAX) {
                    if n > MAX_CONNTRACK_TIMEOUT_S {
                        self.c.err(
                            v.span(),
                            format!(
                                "{key} = {n} is out of range (1 to {MAX_CONNTRACK_TIMEOUT_S} seconds)"
                            ),
                        );
                    } else {
                        *out = n;
                    }
                }
            }
        }

        if self.c.failed_since(mark) {
            return None;
        }
        Some(PolicySettings {
            default: default?,
            stateful,
            loose_tcp,
            fragments_allow,
            log_drops,
            management,
            conntrack_max,
            timeouts,
        })
    }
}

/// Parses a management entry "tcp/22" or "udp/53".
fn parse_management(s: &str) -> Result<ManagementPort, String> {
    let bad = || format!("management entry {s:?} must look like \"tcp/22\" or \"udp/53\"");
    let (proto, port) = s.trim().split_once('/').ok_or_else(bad)?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(bad()),
    };
    if port.trim().is_empty() || !port.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let port = port_number(port)?;
    if port == 0 {
        return Err(format!(
            "management entry {s:?}: port 0 is not a service port"
        ));
    }
    Ok(ManagementPort { proto, port })
}
