//! The `[agent]` table: interfaces, XDP mode, forwarding, the health and
//! probe listeners, bpffs and the health interval.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::Ctx;
use crate::configfile::{items, Names, OneOrMany, Scalar};
use crate::policy::model::{AgentSettings, ForwardMode, XdpModeSetting};

/// Default `agent.health_listen`.
pub const DEFAULT_HEALTH_LISTEN: &str = "0.0.0.0:9090";
/// Default `agent.bpffs`.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/nva";
/// Default `agent.health_interval_ms`: how often the data path is checked.
pub const DEFAULT_HEALTH_INTERVAL_MS: u32 = 1000;
/// Longest interface name (bytes): IFNAMSIZ - 1.
pub const MAX_IFACE_NAME_LEN: usize = 15;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    interfaces: Option<Spanned<OneOrMany>>,
    xdp_mode: Option<Spanned<String>>,
    forward: Option<Spanned<String>>,
    health_listen: Option<Spanned<String>>,
    tcp_probe_listen: Option<Spanned<String>>,
    bpffs: Option<Spanned<String>>,
    health_interval_ms: Option<Spanned<i64>>,
}

impl Ctx<'_> {
    pub(super) fn agent(&mut self, raw: Spanned<RawAgent>) -> Option<AgentSettings> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let mark = self.c.mark();

        let mut interfaces = Vec::new();
        if let Some(list) = self.c.required(
            &raw.interfaces,
            table_span,
            "agent.interfaces is required: the interfaces to attach XDP to",
        ) {
            let items = items(list);
            if items.is_empty() {
                self.c.err(
                    list.span(),
                    "agent.interfaces must name at least one interface",
                );
            }
            let mut seen = Names::default();
            for (span, item) in items {
                let Scalar::Str(name) = item else {
                    self.c.err(
                        span,
                        format!("expected an interface name (a string), found {item}"),
                    );
                    continue;
                };
                if let Err(m) = check_iface_name(name) {
                    self.c.err(span, m);
                } else if seen.first_use(name, span.start).is_some() {
                    self.c
                        .err(span, format!("interface {name:?} is listed twice"));
                } else {
                    interfaces.push(name.clone());
                }
            }
        }

        let xdp_mode = raw.xdp_mode.as_ref().map_or(XdpModeSetting::Auto, |v| {
            self.c
                .one_of(
                    "agent.xdp_mode",
                    v,
                    &[
                        ("auto", XdpModeSetting::Auto),
                        ("driver", XdpModeSetting::Driver),
                        ("skb", XdpModeSetting::Skb),
                    ],
                )
                .unwrap_or(XdpModeSetting::Auto)
        });

        let forward = raw.forward.as_ref().map_or(ForwardMode::Kernel, |v| {
            let choices = [("kernel", ForwardMode::Kernel), ("xdp", ForwardMode::Xdp)];
            self.c
                .one_of("agent.forward", v, &choices)
                .unwrap_or(ForwardMode::Kernel)
        });

        let health_listen = match &raw.health_listen {
            None => DEFAULT_HEALTH_LISTEN.parse().ok(),
            Some(v) => self.listen_addr("agent.health_listen", v),
        };
        let tcp_probe_listen = match &raw.tcp_probe_listen {
            None => None,
            Some(v) => {
                let addr = self.listen_addr("agent.tcp_probe_listen", v);
                if let (Some(p), Some(h)) = (addr, health_listen) {
                    let overlap =
                        p.ip() == h.ip() || p.ip().is_unspecified() || h.ip().is_unspecified();
                    if p.port() == h.port() && overlap {
                        self.c.err(
                            v.span(),
                            format!(
                                "agent.tcp_probe_listen {p} would share a port with agent.health_listen {h}"
                            ),
                        );
                    }
                }
                addr
            }
        };

        let bpffs = match &raw.bpffs {
            None => PathBuf::from(DEFAULT_BPFFS),
            Some(v) => {
                let p = PathBuf::from(v.get_ref());
                if !p.is_absolute() {
                    self.c.err(
                        v.span(),
                        format!(
                            "agent.bpffs must be an absolute path, got {:?}",
                            v.get_ref()
                        ),
                    );
                }
                p
            }
        };

        let health_interval_ms = self.c.int_or(
            "agent.health_interval_ms",
            raw.health_interval_ms.as_ref(),
            DEFAULT_HEALTH_INTERVAL_MS,
            1..=u32::MAX,
        );

        if self.c.failed_since(mark) {
            return None;
        }
        Some(AgentSettings {
            interfaces,
            xdp_mode,
            forward,
            health_listen: health_listen?,
            tcp_probe_listen,
            bpffs,
            health_interval_ms,
        })
    }

    /// An address to listen on: with a fixed port.
    fn listen_addr(&mut self, key: &str, v: &Spanned<String>) -> Option<SocketAddr> {
        let addr = self
            .c
            .socket_addr(key, v, "e.g. \"0.0.0.0:9090\" or \"[::]:9090\"")?;
        if addr.port() == 0 {
            self.c
                .err(v.span(), format!("{key} needs a fixed port, not 0"));
            return None;
        }
        Some(addr)
    }
}

/// Linux accepts a name for a network device when it is 1..=15 bytes, not
/// "." or "..", without '/', ':' or whitespace.
fn check_iface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFACE_NAME_LEN {
        return Err(format!(
            "interface name {name:?} must be 1 to {MAX_IFACE_NAME_LEN} bytes long"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "{name:?} is not a valid interface name (no '/', ':' or whitespace)"
        ));
    }
    Ok(())
}
