//! Frames sent as they are from a namespace's interface (an AF_PACKET
//! socket): floods with spoofed sources, which no socket API can make. Only
//! into the veths of namespaces a test created.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{in_netns, Netns};

/// An AF_PACKET socket bound to one interface of a namespace.
pub struct RawSender {
    fd: OwnedFd,
    /// The interface's own MAC address, and its peer's (the next hop).
    pub mac: [u8; 6],
    pub peer_mac: [u8; 6],
}

impl RawSender {
    /// A sender on `ns`'s interface `dev`, whose frames go to
    /// `peer_ns`'s interface `peer_dev` (the other end of the veth).
    pub fn open(ns: &Netns, dev: &str, peer_ns: &Netns, peer_dev: &str) -> RawSender {
        let fd = in_netns(ns, || {
            // SAFETY: socket() has no memory preconditions; the result is checked below.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    (libc::ETH_P_ALL as u16).to_be() as i32,
                )
            };
            assert!(
                raw >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `raw` is a new descriptor this function owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let name = std::ffi::CString::new(dev).unwrap();
            // SAFETY: `name` is a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(ifindex != 0, "no interface {dev}");
            // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set next.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = ifindex as i32;
            // SAFETY: `addr` is a valid sockaddr_ll and the length is its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            fd
        });
        RawSender {
            fd,
            mac: mac_of(ns, dev),
            peer_mac: mac_of(peer_ns, peer_dev),
        }
    }

    /// Sends `frame` with this interface's MAC as source and the peer's as
    /// destination (the first 12 bytes are overwritten). False when the
    /// kernel refused it (a full queue): the caller counts or retries.
    pub fn send(&self, frame: &mut [u8]) -> bool {
        frame[..6].copy_from_slice(&self.peer_mac);
        frame[6..12].copy_from_slice(&self.mac);
        // SAFETY: the buffer is valid for `frame.len()` bytes for the call.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        n == frame.len() as isize
    }
}

/// The MAC address of interface `dev` in `ns`.
pub fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns.exec_ok(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let bytes: Vec<u8> = out
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC address"))
        .collect();
    bytes.try_into().expect("six bytes")
}
