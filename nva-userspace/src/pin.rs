//! The bpffs layout of one agent: everything that must outlive the agent
//! process (maps, links) is pinned under `agent.bpffs/v1`. The version
//! changes whenever a map's layout does, so a new binary never adopts maps it
//! would misread.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Version of the pinned layout.
pub const LAYOUT_VERSION: &str = "v1";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(bpffs: &Path) -> PinLayout {
        PinLayout {
            root: bpffs.join(LAYOUT_VERSION),
        }
    }

    /// Directory of the pinned maps, one file per map name.
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Pinned XDP link of an interface.
    pub fn link(&self, iface: &str) -> PathBuf {
        self.root.join("links").join(iface)
    }

    pub fn create_dirs(&self) -> anyhow::Result<()> {
        for dir in [self.maps(), self.root.join("links")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Removes every pin (maps and links: this detaches the program).
    pub fn remove_all(&self, bpffs: &Path) {
        let _ = std::fs::remove_dir_all(&self.root);
        // Only if empty: the directory may hold an operator's other pins.
        let _ = std::fs::remove_dir(bpffs);
    }
}

/// Where the agent using `bpffs` keeps its state files (bpffs holds only
/// BPF objects).
pub fn state_dir(bpffs: &Path) -> PathBuf {
    let key: String = bpffs
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from("/run/nva").join(key)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs at /sys/fs/bpf when `bpffs` is below it and it is not
/// mounted yet; other locations must already be on a bpffs.
pub fn ensure_bpffs(bpffs: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if bpffs.starts_with(root) && !is_bpffs(root) {
        let none: Option<&str> = None;
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            none,
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
    if !is_bpffs(bpffs) {
        bail!(
            "agent.bpffs = {} is not on a bpf filesystem",
            bpffs.display()
        );
    }
    Ok(())
}
