//! The traffic generator of the end-to-end benchmark: one thread pinned to
//! a CPU sends the same 64-byte frame through an AF_PACKET socket with
//! `sendmmsg`, bypassing the qdisc, as fast as it can. A full receive ring
//! (the receiver is slower) makes a send fail; the generator counts that and
//! goes on, where trafgen would stop.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use nva_tests::{in_netns, Netns};

/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// A 64-byte frame on the wire is 60 bytes without the FCS.
const FRAME_LEN: usize = 60;

/// An Ethernet + IPv4 + UDP frame, 60 bytes, with a valid IPv4 header
/// checksum (the kernel checks it before forwarding) and no UDP checksum.
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (FRAME_LEN - 14) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let checksum = !ones_complement_sum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(total - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(FRAME_LEN, 0);
    f
}

/// The 16-bit one's complement sum of `bytes` (an even number of them).
fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = s
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC address {s:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC address {s:?}"))
}

/// A running flood; stops when dropped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// An AF_PACKET socket of namespace `ns`, bound to `dev`, qdisc bypassed.
fn packet_socket(ns: &Netns, dev: &str) -> Result<(OwnedFd, i32)> {
    let dev = std::ffi::CString::new(dev)?;
    in_netns(ns, || -> Result<(OwnedFd, i32)> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                // Protocol 0: a socket that only sends (with ETH_P_ALL it
                // would also tap every frame the namespace receives).
                0,
            )
        };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("no interface {dev:?} in {}", ns.name);
        }
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with an int value (PACKET_QDISC_BYPASS = 20).
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                20,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok((fd, ifindex))
    })
}

impl Flood {
    /// Starts sending `frame` out of `dev` in `ns` from a thread pinned to `cpu`.
    pub fn start(ns: &Netns, dev: &str, frame: Vec<u8>, cpu: usize) -> Result<Flood> {
        let (fd, ifindex) = packet_socket(ns, dev)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            crate::endtoend::pin_to_cpu(cpu);
            // SAFETY: zeroed sockaddr_ll, then the fields sendto needs.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = ifindex;
            to.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            let mut iov = libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            };
            // The mmsghdr entries all point at the same frame and address,
            // which outlive the loop.
            let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
                .map(|_| {
                    // SAFETY: mmsghdr is a C struct of integers and pointers:
                    // all zeroes (null pointers) is a valid value.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_name = &mut to as *mut libc::sockaddr_ll as *mut libc::c_void;
                    m.msg_hdr.msg_namelen =
                        std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    m.msg_hdr.msg_iov = &mut iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            while !st.load(Ordering::Relaxed) {
                // SAFETY: msgs holds BATCH valid headers.
                let n =
                    unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
                if n > 0 {
                    se.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Ok(Flood {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Frames the socket accepted so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_64_bytes_on_the_wire_with_a_valid_ip_checksum() {
        let f = udp_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            1,
            2,
        );
        assert_eq!(f.len() + 4, 64);
        assert_eq!(
            ones_complement_sum(&f[14..34]),
            0xFFFF,
            "one's complement sum of a valid header"
        );
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 26, "UDP length");
    }
}
