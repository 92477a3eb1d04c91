//! The `linux` switch provider: rewrites, through netlink, the routes that
//! send traffic to the active NVA (in the namespaces and tables the config
//! names), and reads them back so the reconciler can see which NVA the world
//! points at.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::RouteMessageBuilder;

use super::config::{LinuxRoute, NvaSettings};

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error("network namespace {netns:?}: {source}")]
    Netns {
        netns: String,
        source: std::io::Error,
    },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("route {prefix}: NVA {nva} has no address for it")]
    NoNextHop { prefix: String, nva: String },
}

/// Runs `f` on a thread inside `netns` ("" = this one) with its own
/// runtime: a netlink socket belongs to the namespace it is created in.
fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce(rtnetlink::Handle) -> futures::future::BoxFuture<'static, Result<T, LinuxError>>
        + Send
        + 'static,
) -> Result<T, LinuxError> {
    let netns = netns.to_string();
    std::thread::spawn(move || -> Result<T, LinuxError> {
        if !netns.is_empty() {
            let file =
                std::fs::File::open(format!("/var/run/netns/{netns}")).map_err(|source| {
                    LinuxError::Netns {
                        netns: netns.clone(),
                        source,
                    }
                })?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                LinuxError::Netns {
                    netns: netns.clone(),
                    source: e.into(),
                }
            })?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| LinuxError::Netns {
                netns: netns.clone(),
                source,
            })?;
        rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| LinuxError::Netlink(e.to_string()))?;
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn route_message(route: &LinuxRoute, gateway: IpAddr) -> Result<RouteMessage, LinuxError> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.prefix.addr, route.prefix.len)
        .map_err(|e| LinuxError::Netlink(e.to_string()))?
        .table_id(route.table)
        .gateway(gateway)
        .map_err(|e| LinuxError::Netlink(e.to_string()))?
        .build())
}

/// Points every route at `nva` (add or replace).
pub fn apply(routes: &[LinuxRoute], nva: &NvaSettings) -> Result<(), LinuxError> {
    for route in routes {
        let gw = nva
            .next_hop(route.via)
            .ok_or_else(|| LinuxError::NoNextHop {
                prefix: route.prefix.to_string(),
                nva: nva.name.clone(),
            })?;
        let msg = route_message(route, gw)?;
        in_netns(&route.netns, move |handle| {
            Box::pin(async move {
                handle
                    .route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(|e| LinuxError::Netlink(e.to_string()))
            })
        })?;
    }
    Ok(())
}

/// The next hop of each route as it is now (None: no such route).
pub fn current(routes: &[LinuxRoute]) -> Result<Vec<Option<IpAddr>>, LinuxError> {
    routes
        .iter()
        .map(|route| {
            // No destination in the query: with one, the kernel answers a
            // route lookup (like `ip route get`) instead of listing routes.
            let query = match route.prefix.addr {
                IpAddr::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .table_id(route.table)
                    .build(),
                IpAddr::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .table_id(route.table)
                    .build(),
            };
            let want = route.clone();
            in_netns(&route.netns, move |handle| {
                Box::pin(async move {
                    let mut dump = handle.route().get(query).execute();
                    while let Some(msg) = dump
                        .try_next()
                        .await
                        .map_err(|e| LinuxError::Netlink(e.to_string()))?
                    {
                        if let Some(gw) = matching_gateway(&msg, &want) {
                            return Ok(Some(gw));
                        }
                    }
                    Ok(None)
                })
            })
        })
        .collect()
}

/// The gateway of `msg` if it is the route `want` describes.
fn matching_gateway(msg: &RouteMessage, want: &LinuxRoute) -> Option<IpAddr> {
    if msg.header.destination_prefix_length != want.prefix.len {
        return None;
    }
    let mut table = msg.header.table as u32;
    let mut dst = None;
    let mut gw = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => dst = Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => dst = Some(IpAddr::V6(*v6)),
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gw = Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => gw = Some(IpAddr::V6(*v6)),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if want.prefix.addr.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    });
    (table == want.table && dst == want.prefix.addr)
        .then_some(gw)
        .flatten()
}

/// Which NVA the routes point at: Some(index) when all of them point at
/// the same NVA, None when they are missing or split (a partial switch).
pub fn active_nva(
    routes: &[LinuxRoute],
    nvas: &[NvaSettings],
) -> Result<Option<usize>, LinuxError> {
    let now = current(routes)?;
    Ok(nvas.iter().position(|n| {
        routes
            .iter()
            .zip(&now)
            .all(|(r, gw)| gw.is_some() && *gw == n.next_hop(r.via))
    }))
}
