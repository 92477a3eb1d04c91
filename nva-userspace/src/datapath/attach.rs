//! Attaching the program: adopting a pinned link that is still bound to its
//! interface, dropping one that was severed or whose interface was
//! recreated, attaching afresh, and reading a pinned link's target.

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::XdpMode;

use super::pin::PinLayout;
use super::{ifindex_by_name, DataPath, DataPathError};
use crate::policy::model::XdpModeSetting;

/// Why a pinned link was not adopted.
enum NotAdopted {
    /// Severed or bound to another interface: drop it and attach afresh.
    Dead(String),
    /// Something else failed: the link may be good, so it stays.
    Failed(DataPathError),
}

/// Whether `error` or one of its sources is the OS error `code`.
fn has_os_error(error: &(dyn std::error::Error + 'static), code: i32) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(code))
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// How an interface got its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    Attached(XdpMode),
    /// A pinned link existed: the program was replaced on it atomically.
    Adopted,
    /// The pinned link was severed or defunct: dropped, then attached anew.
    Reattached(XdpMode),
}

/// (ifindex, program id) of a pinned XDP link, from the kernel. A link whose
/// interface was detached or removed reports ifindex 0.
pub fn pinned_link_target(path: &std::path::Path) -> std::io::Result<(u32, u32)> {
    // BPF_OBJ_GET then BPF_OBJ_GET_INFO_BY_FD: aya 0.14 does not expose the
    // XDP part of bpf_link_info.
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut get = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: valid bpf_attr prefix for BPF_OBJ_GET (7).
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 7, &mut get as *mut ObjGet, 24usize) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor we now own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, (pad), union at 16; for XDP
    // the union starts with ifindex.
    let mut info = [0u8; 64];
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: valid bpf_attr prefix for BPF_OBJ_GET_INFO_BY_FD (15).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 15, &mut attr as *mut InfoByFd, 16usize) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let word = |o: usize| u32::from_ne_bytes([info[o], info[o + 1], info[o + 2], info[o + 3]]);
    Ok((word(16), word(8)))
}

impl DataPath {
    /// Attaches to `iface`. With `pins`, an existing pinned link that is
    /// still bound to `iface` is adopted (the program on it replaced
    /// atomically, no gap); a pinned link that was severed (detached behind
    /// the agent's back) or whose interface was deleted and created again is
    /// dropped and the program attached afresh. A new link is pinned so it
    /// survives this process. `auto` tries driver mode, then generic (skb).
    pub fn attach(
        &mut self,
        iface: &str,
        mode: XdpModeSetting,
        pins: Option<&PinLayout>,
    ) -> Result<Attachment, DataPathError> {
        let pin_path = pins.map(|p| p.link(iface));
        let mut repaired = false;
        if let Some(path) = pin_path.as_ref().filter(|p| p.exists()) {
            match self.adopt(iface, path) {
                Ok(()) => return Ok(Attachment::Adopted),
                // The link may still be good: leave it (and its pin) alone.
                Err(NotAdopted::Failed(e)) => return Err(e),
                Err(NotAdopted::Dead(why)) => {
                    tracing::warn!(iface, pin = %path.display(), why, "dropping the pinned link; attaching afresh");
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(DataPathError::Pin {
                                path: path.display().to_string(),
                                message: format!("removing a severed link: {e}"),
                            })
                        }
                    }
                    repaired = true;
                }
            }
        }
        let attached = self.attach_new(iface, mode, pin_path.as_deref())?;
        Ok(if repaired {
            Attachment::Reattached(attached)
        } else {
            Attachment::Attached(attached)
        })
    }

    /// Replaces the program on the pinned link of `iface` if that link is
    /// still bound to `iface`. The pin keeps naming the same link, so it is
    /// never removed here: a SIGKILL at any point leaves a link in place.
    fn adopt(&mut self, iface: &str, path: &std::path::Path) -> Result<(), NotAdopted> {
        let pin_err = |message: String| {
            NotAdopted::Failed(DataPathError::Pin {
                path: path.display().to_string(),
                message,
            })
        };
        let want = ifindex_by_name(iface).ok_or_else(|| {
            NotAdopted::Failed(DataPathError::Interface {
                iface: iface.to_string(),
                message: "no such interface".into(),
            })
        })?;
        match pinned_link_target(path) {
            // bpf_link_info reports ifindex 0 once the link lost its device:
            // detached (BPF_LINK_DETACH) or the interface unregistered.
            Ok((0, _)) => {
                return Err(NotAdopted::Dead(
                    "the link was severed (detached, or its interface deleted)".into(),
                ))
            }
            Ok((got, _)) if got != want => {
                return Err(NotAdopted::Dead(format!(
                    "the link is bound to ifindex {got}, the interface is now {want}"
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(pin_err(format!("reading the pinned link: {e}"))),
        }
        let pinned =
            PinnedLink::from_pin(path).map_err(|e| pin_err(format!("opening the pin: {e}")))?;
        let fd: FdLink = pinned.into();
        let link = fd
            .try_into()
            .map_err(|e| NotAdopted::Failed(DataPathError::Link(e)))?;
        let prog = self.program_mut().map_err(NotAdopted::Failed)?;
        // bpf_link_update fails with ENOLINK if the link was severed since
        // it was looked at.
        let id = match prog.attach_to_link(link) {
            Ok(id) => id,
            Err(e) if has_os_error(&e, libc::ENOLINK) => {
                return Err(NotAdopted::Dead(format!(
                    "the link was severed while being adopted ({e})"
                )))
            }
            Err(e) => return Err(NotAdopted::Failed(e.into())),
        };
        // The link outlives this handle through its pin; keep a handle
        // opened from the pin, which `detach_all` can unpin.
        drop(
            prog.take_link(id)
                .map_err(|e| NotAdopted::Failed(e.into()))?,
        );
        let pinned = PinnedLink::from_pin(path)
            .map_err(|e| pin_err(format!("opening the pin again: {e}")))?;
        self.set_link(iface, Some(pinned));
        Ok(())
    }

    /// Remembers the link of `iface`, replacing one it had before.
    fn set_link(&mut self, iface: &str, link: Option<PinnedLink>) {
        self.links.retain(|(i, _)| i != iface);
        self.links.push((iface.to_string(), link));
    }

    /// Attaches with a new link (pinned at `pin_path`, if given).
    fn attach_new(
        &mut self,
        iface: &str,
        mode: XdpModeSetting,
        pin_path: Option<&std::path::Path>,
    ) -> Result<XdpMode, DataPathError> {
        let attempts: &[XdpMode] = match mode {
            XdpModeSetting::Auto => &[XdpMode::Driver, XdpMode::Skb],
            XdpModeSetting::Driver => &[XdpMode::Driver],
            XdpModeSetting::Skb => &[XdpMode::Skb],
        };
        let mut last = String::new();
        for &m in attempts {
            let prog = self.program_mut()?;
            match prog.attach(iface, m) {
                Ok(id) => {
                    let pinned = match pin_path {
                        Some(path) => {
                            let link = prog.take_link(id)?;
                            let fd: FdLink = link.try_into()?;
                            Some(fd.pin(path).map_err(|e| DataPathError::Pin {
                                path: path.display().to_string(),
                                message: e.to_string(),
                            })?)
                        }
                        None => None,
                    };
                    self.set_link(iface, pinned);
                    return Ok(m);
                }
                Err(e) => {
                    last = format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    )
                }
            }
        }
        Err(DataPathError::Interface {
            iface: iface.to_string(),
            message: format!("cannot attach XDP ({last})"),
        })
    }

    /// Detaches from every interface: unpins the links and drops them.
    pub fn detach_all(&mut self) {
        for (iface, pinned) in self.links.drain(..) {
            if let Some(p) = pinned {
                match p.unpin() {
                    Ok(fd) => drop(fd),
                    Err(e) => tracing::warn!(iface, error = %e, "unpinning link"),
                }
            }
        }
    }
}
