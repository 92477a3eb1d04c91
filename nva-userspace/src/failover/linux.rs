//! The `linux` switch provider: rewrites, through netlink, the routes that
//! send traffic to the active NVA (in the namespaces and tables the config
//! names), and reads them back so the reconciler can see which NVA the world
//! points at.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::RouteMessageBuilder;

use super::config::{LinuxRoute, LinuxVip, NvaSettings};

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

/// Moves `vip` to `to` (taking it off `from`) and announces it, so that
/// neighbours update their caches at once: gratuitous ARP for IPv4, an
/// unsolicited neighbour advertisement for IPv6.
pub fn move_vip(
    vip: &LinuxVip,
    from: Option<&NvaSettings>,
    to: &NvaSettings,
) -> Result<(), LinuxError> {
    if let Some(from) = from.filter(|f| f.name != to.name) {
        let v = vip.clone();
        in_netns(&from.netns, move |handle| {
            Box::pin(async move { remove_address(&handle, &v).await })
        })?;
    }
    let v = vip.clone();
    let (ifindex, mac) = in_netns(&to.netns, move |handle| {
        Box::pin(async move {
            let (ifindex, mac) = link_of(&handle, &v.dev).await?;
            handle
                .address()
                .add(ifindex, v.address, v.prefix_len)
                .replace()
                .execute()
                .await
                .map_err(|e| LinuxError::Netlink(format!("add {} on {}: {e}", v.address, v.dev)))?;
            Ok((ifindex, mac))
        })
    })?;
    let v = vip.clone();
    in_netns(&to.netns, move |_| {
        Box::pin(async move {
            for _ in 0..3 {
                announce(&v, ifindex, &mac)?;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(())
        })
    })
}

/// Index and MAC address of interface `dev`.
async fn link_of(handle: &rtnetlink::Handle, dev: &str) -> Result<(u32, [u8; 6]), LinuxError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let link = handle
        .link()
        .get()
        .match_name(dev.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| LinuxError::Netlink(format!("interface {dev}: {e}")))?
        .ok_or_else(|| LinuxError::Netlink(format!("no interface {dev}")))?;
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
            _ => None,
        })
        .ok_or_else(|| LinuxError::Netlink(format!("interface {dev} has no MAC address")))?;
    Ok((link.header.index, mac))
}

async fn remove_address(handle: &rtnetlink::Handle, vip: &LinuxVip) -> Result<(), LinuxError> {
    let Ok((ifindex, _)) = link_of(handle, &vip.dev).await else {
        // No such interface there: nothing to take away.
        return Ok(());
    };
    let mut found = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .set_address_filter(vip.address)
        .execute();
    while let Some(msg) = found
        .try_next()
        .await
        .map_err(|e| LinuxError::Netlink(e.to_string()))?
    {
        handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| LinuxError::Netlink(format!("remove {}: {e}", vip.address)))?;
    }
    Ok(())
}

/// Sends one gratuitous ARP (IPv4) or unsolicited neighbour advertisement
/// (IPv6) for the VIP from interface `ifindex` with MAC `mac`.
fn announce(vip: &LinuxVip, ifindex: u32, mac: &[u8; 6]) -> Result<(), LinuxError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let io =
        |what: &str| LinuxError::Netlink(format!("{what}: {}", std::io::Error::last_os_error()));
    match vip.address {
        IpAddr::V4(ip) => {
            use nva_common::ETH_P_ARP;
            // SAFETY: plain socket(2).
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (ETH_P_ARP.to_be()) as i32)
            };
            if fd < 0 {
                return Err(io("packet socket"));
            }
            // SAFETY: a new descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut frame = Vec::with_capacity(42);
            frame.extend_from_slice(&[0xff; 6]);
            frame.extend_from_slice(mac);
            frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
            // Ethernet, IPv4, lengths 6 and 4, request.
            frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            frame.extend_from_slice(mac);
            frame.extend_from_slice(&ip.octets());
            frame.extend_from_slice(&[0; 6]);
            frame.extend_from_slice(&ip.octets());
            // SAFETY: zeroed sockaddr_ll is valid; fields set below.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ARP.to_be();
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            // SAFETY: frame and addr outlive the call.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc < 0 {
                return Err(io("gratuitous ARP"));
            }
        }
        IpAddr::V6(ip) => {
            // SAFETY: plain socket(2).
            let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) };
            if fd < 0 {
                return Err(io("ICMPv6 socket"));
            }
            // SAFETY: a new descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let hops: libc::c_int = 255;
            let index = ifindex as libc::c_int;
            // SAFETY: option values are valid for their sizes.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MULTICAST_HOPS,
                    (&hops as *const libc::c_int).cast(),
                    4,
                );
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MULTICAST_IF,
                    (&index as *const libc::c_int).cast(),
                    4,
                );
            }
            // Neighbour advertisement, override flag, target, and the
            // target link-layer address option; the kernel fills the
            // checksum of ICMPv6 raw sockets.
            let mut na = vec![136u8, 0, 0, 0, 0x20, 0, 0, 0];
            na.extend_from_slice(&ip.octets());
            na.extend_from_slice(&[2, 1]);
            na.extend_from_slice(mac);
            // SAFETY: zeroed sockaddr_in6 is valid; fields set below.
            let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            dst.sin6_family = libc::AF_INET6 as u16;
            dst.sin6_addr.s6_addr = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
            dst.sin6_scope_id = ifindex;
            // SAFETY: na and dst outlive the call.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    na.as_ptr().cast(),
                    na.len(),
                    0,
                    (&dst as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as u32,
                )
            };
            if rc < 0 {
                return Err(io("unsolicited neighbour advertisement"));
            }
        }
    }
    Ok(())
}
