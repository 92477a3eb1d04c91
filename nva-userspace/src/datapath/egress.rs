//! Whether an interface can take redirected frames (`forward = "xdp"`):
//! its driver must implement `ndo_xdp_xmit`, which the kernel reports as
//! the `ndo-xmit` XDP feature of the `netdev` generic netlink family. A veth
//! advertises it only while its peer has GRO on or an XDP program of its
//! own: without either, every redirect into it fails and the frame is
//! lost.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkMessage, NetlinkPayload, NlasIterator,
    ParseableParametrized, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::{ifindex_by_name, DataPathError};

/// `netdev` family (include/uapi/linux/netdev.h).
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_NDO_XMIT`: the driver takes redirected frames.
const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// A `netdev` family message: the attributes of one device.
#[derive(Clone, Debug)]
struct NetdevDev {
    cmd: u8,
    /// (kind, value) of each attribute.
    attrs: Vec<(u16, Vec<u8>)>,
}

impl GenlFamily for NetdevDev {
    fn family_name() -> &'static str {
        "netdev"
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        1
    }
}

impl NetdevDev {
    fn nlas(&self) -> Vec<DefaultNla> {
        self.attrs
            .iter()
            .map(|(k, v)| DefaultNla::new(*k, v.clone()))
            .collect()
    }
}

impl Emitable for NetdevDev {
    fn buffer_len(&self) -> usize {
        self.nlas().as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.nlas().as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for NetdevDev {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.map(|n| (n.kind(), n.value().to_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NetdevDev {
            cmd: header.cmd,
            attrs,
        })
    }
}

/// Sends `msg` and returns the kernel's one answer.
fn ask<F>(socket: &Socket, msg: GenlMessage<F>) -> Result<F, String>
where
    F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
{
    let mut msg = msg;
    msg.finalize();
    let mut nl = NetlinkMessage::from(msg);
    nl.header.flags = NLM_F_REQUEST;
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    socket.send(&buf, 0).map_err(|e| e.to_string())?;
    let (reply, _) = socket.recv_from_full().map_err(|e| e.to_string())?;
    let answer =
        NetlinkMessage::<GenlMessage<F>>::deserialize(&reply).map_err(|e| e.to_string())?;
    match answer.payload {
        NetlinkPayload::InnerMessage(m) => Ok(m.payload),
        NetlinkPayload::Error(e) => Err(e.to_string()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// The XDP features of `ifindex` (`NETDEV_XDP_ACT_*` bits), or None on a
/// kernel without the `netdev` family (before Linux 6.3).
fn xdp_features(ifindex: u32) -> Result<Option<u64>, String> {
    let socket = Socket::new(NETLINK_GENERIC).map_err(|e| e.to_string())?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| e.to_string())?;
    let family = ask(
        &socket,
        GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("netdev".into())],
        }),
    );
    let Ok(family) = family else {
        return Ok(None);
    };
    let Some(id) = family.nlas.iter().find_map(|a| match a {
        GenlCtrlAttrs::FamilyId(id) => Some(*id),
        _ => None,
    }) else {
        return Ok(None);
    };
    let mut get = GenlMessage::from_payload(NetdevDev {
        cmd: NETDEV_CMD_DEV_GET,
        attrs: vec![(NETDEV_A_DEV_IFINDEX, ifindex.to_ne_bytes().to_vec())],
    });
    get.set_resolved_family_id(id);
    let dev = ask(&socket, get)?;
    Ok(dev
        .attrs
        .iter()
        .find(|(k, _)| *k == NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|(_, v)| Some(u64::from_ne_bytes(v.as_slice().try_into().ok()?))))
}

/// Refuses `forward = "xdp"` on an interface that cannot take redirected
/// frames, with what to do about it. A kernel that cannot tell is trusted.
pub fn check_redirect_target(iface: &str) -> Result<(), DataPathError> {
    let refuse = |message: String| DataPathError::Interface {
        iface: iface.to_string(),
        message,
    };
    let ifindex = ifindex_by_name(iface).ok_or_else(|| refuse("does not exist".into()))?;
    match xdp_features(ifindex) {
        Ok(Some(features)) if features & XDP_ACT_NDO_XMIT == 0 => Err(refuse(
            "cannot take redirected frames (its driver does not advertise the XDP ndo-xmit feature), so agent.forward = \"xdp\" would lose every packet routed out of it; for a veth, turn GRO on at its peer (ethtool -K PEER gro on) or attach an XDP program there; otherwise use forward = \"kernel\"".into(),
        )),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(iface, error = %e, "cannot read the interface's XDP features; assuming it takes redirected frames");
            Ok(())
        }
    }
}
