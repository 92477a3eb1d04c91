//! The bpffs layout of one agent: everything that must outlive the agent
//! process (maps, links) is pinned under `agent.bpffs/LAYOUT_VERSION`. The
//! version changes whenever a pinned map's layout does, so a new binary never
//! adopts maps it would misread; pins of another version are refused with
//! the fix (`nva detach`), and `nva detach` removes every version.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Version of the pinned layout (defined beside the shared types).
pub use nva_common::LAYOUT_VERSION;
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The fingerprint of each layout version's pinned maps (name, map type,
/// key size, value size of every map pinned under the version), checked by
/// the layout test against the program. Append only: a recorded entry is
/// never edited; a layout change adds a version.
pub const LAYOUT_FINGERPRINTS: &[(&str, u64)] = &[
    ("v2", 0x7ac80a701a05698d),
    ("v3", 0x58aa8ab71a5cc7df),
    ("v4", 0x1edcb3032386847a),
    ("v5", 0x4083a20a76bdfea0),
    // From v6 on, the fingerprint also covers the configuration's field
    // offsets (`prefix_rules`, the short path, moved the timeouts); the
    // join tables became maps of maps, sized per rule set; the hashed
    // short path (PREFIXES, prefix_lens).
    ("v6", 0x42a963e7fd1e271e),
    // v7: the address tries hold a class per rule group (16-byte values);
    // the configuration has the pair tables of each group, and `no_class`.
    ("v7", 0x822f5e7b916f0a64),
    // v8: the log budgets are an LRU per-CPU hash (4,096 slots) instead of
    // an array of every rule; the port and ICMP class arrays hold one u64
    // per port or type with a 16-bit class per slot.
    ("v8", 0xe902b118b2ecde5c),
    // v9: rule actions and rule counters are maps of maps, one array per
    // slot at its rule set's length (a rule's count: the sum over slots);
    // the tries' class ids carry CLASS_IN_PAIRS and CLASS_IN_SINGLE flags.
    ("v9", 0xcb3e2340347fdca2),
    // v10: the join tables are preallocated (inner templates without
    // BPF_F_NO_PREALLOC); from v10 on, the fingerprint covers the inner
    // templates' flags.
    ("v10", 0x21dbba33fefaec28),
    // v11: a pair entry names the L4 patterns its pair class has verdicts
    // through (`PairMatch::verdict_patterns`, 28 bytes); from v11 on, the
    // fingerprint covers the inner templates' key and value sizes.
    ("v11", 0xc380dddb69229fda),
    // v12: IPv4 range arrays (directory of /16 blocks, ranges, classes) in
    // maps of maps, looked up instead of the IPv4 tries for large rule
    // sets; the configuration says which sides (`v4_ranges`, 120 bytes).
    ("v12", 0xc97ce8cf3bb89471),
    // v13: rule checks: a verdict entry (8 bytes) and an L4 entry's
    // wildcards (12 bytes) point into a new per-slot array of checks
    // (`RULE_CHECKS`, a map of maps) for rules that left fields out of the
    // join.
    ("v13", 0x43962fafa912f231),
];

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

    /// Removes every pin of every layout version (maps and links: this
    /// detaches the program).
    pub fn remove_all(&self, bpffs: &Path) {
        let _ = std::fs::remove_dir_all(&self.root);
        for other in other_versions(bpffs) {
            let _ = std::fs::remove_dir_all(bpffs.join(other));
        }
        // Only if empty: the directory may hold an operator's other pins.
        let _ = std::fs::remove_dir(bpffs);
    }
}

/// Layout versions other than this binary's pinned under `bpffs`
/// (directories named `v` and a number).
pub fn other_versions(bpffs: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(bpffs) else {
        return Vec::new();
    };
    let mut found: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n != LAYOUT_VERSION
                && n.len() > 1
                && n.starts_with('v')
                && n[1..].bytes().all(|b| b.is_ascii_digit())
        })
        .collect();
    found.sort();
    found
}

/// Refuses to start over pins of another layout version: this binary would
/// misread their maps, and attaching beside them would leave two programs
/// fighting over the interfaces.
pub fn refuse_other_versions(bpffs: &Path) -> anyhow::Result<()> {
    let others = other_versions(bpffs);
    if !others.is_empty() {
        bail!(
            "agent.bpffs = {} holds pins of layout {} left by another nva version; this binary uses layout {LAYOUT_VERSION} and cannot adopt them: stop the old agent and run `nva detach --config FILE` (it removes every layout version, detaching the old program), then start this agent",
            bpffs.display(),
            others.join(", ")
        );
    }
    Ok(())
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
    // SAFETY: statfs is a C struct of integers: all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` writable, both for the whole call; `st` is read only when the call succeeded.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// The mount namespace of a process, as `mnt:[INODE]`.
fn mount_ns(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The parent of process `pid`, from `/proc/PID/stat` (0 at the top).
fn parent_of(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .filter(|p| p != "0")
}

/// The process whose mount namespace stands for the host's: the oldest
/// ancestor whose namespace can be read (init, where permitted). `ip netns
/// exec` (and `unshare -m`) give only the command and what it starts a new
/// mount namespace, never an ancestor of theirs; walking up the ancestors
/// (not taking pid 1 as given) also keeps a shared pid namespace's init, a
/// stranger in another container, out of it.
fn reference_process() -> Option<String> {
    let mut reference = None;
    let mut pid = "self".to_string();
    // Bounded: pid chains are short, and a loop must not hang the agent.
    for _ in 0..64 {
        let Some(parent) = parent_of(&pid) else {
            break;
        };
        if mount_ns(&parent).is_some() {
            reference = Some(parent.clone());
        }
        pid = parent;
    }
    reference
}

/// When this process runs in a mount namespace of its own (not the
/// reference process's), the reference process's pid.
fn private_mount_ns() -> Option<String> {
    let reference = reference_process()?;
    (mount_ns("self")? != mount_ns(&reference)?).then_some(reference)
}

/// Whether this process runs in a mount namespace of its own, where the
/// host's bpffs may not be visible.
pub fn in_private_mount_ns() -> bool {
    private_mount_ns().is_some()
}

/// Whether the filesystem at `path` is also mounted in the mount namespace
/// of process `pid` (same device number in its mountinfo), so it outlives
/// this process's namespace.
fn mounted_in(pid: &str, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::metadata(path).map(|m| m.dev()) else {
        return false;
    };
    let want = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map(|info| {
            info.lines()
                .any(|l| l.split_whitespace().nth(2) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

const PRIVATE_NS_HELP: &str = "this process runs in a mount namespace of its own (as `ip netns exec` makes one), where the host's bpffs is not visible: pins made here die with the process";
const PRIVATE_NS_FIX: &str = "run it with `nsenter --net=/run/netns/NAME nva ...`, which enters only the network namespace and keeps the host's mounts, or set agent.bpffs to a directory of a bpffs mounted in the host namespace outside /sys (for example `mount -t bpf bpf /var/lib/nva-bpf`)";

/// Mounts bpffs at /sys/fs/bpf when `bpffs` is below it and it is not
/// mounted yet; other locations must already be on a bpffs. Refuses a bpffs
/// that would not outlive the agent: one that only exists in a mount
/// namespace of the agent's own (SIGKILL would then leave nothing attached).
pub fn ensure_bpffs(bpffs: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    let private = private_mount_ns();
    if bpffs.starts_with(root) && !is_bpffs(root) {
        if private.is_some() {
            bail!(
                "agent.bpffs = {}: no bpffs is mounted at /sys/fs/bpf and {PRIVATE_NS_HELP}, so the data path would not survive a restart; {PRIVATE_NS_FIX}",
                bpffs.display()
            );
        }
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
    if let Some(reference) = private {
        if !mounted_in(&reference, bpffs) {
            bail!(
                "agent.bpffs = {}: {PRIVATE_NS_HELP}, and this bpffs is not mounted in the namespace the agent was started from, so the data path would not survive a restart; {PRIVATE_NS_FIX}",
                bpffs.display()
            );
        }
    }
    Ok(())
}

/// For the commands that read an agent's pins (`rules`, `conntrack`,
/// `detach`): fails, saying why, when nothing is pinned under `bpffs` as
/// seen from here.
pub fn require_pins(bpffs: &Path) -> anyhow::Result<PinLayout> {
    let layout = PinLayout::new(bpffs);
    let why = if !is_bpffs(bpffs) {
        format!("{} is not on a mounted bpf filesystem", bpffs.display())
    } else if !layout.root.exists() {
        format!("nothing is pinned under {}", layout.root.display())
    } else {
        return Ok(layout);
    };
    match private_mount_ns() {
        Some(_) => bail!("no agent found: {why}; {PRIVATE_NS_HELP}; {PRIVATE_NS_FIX}"),
        None => bail!(
            "no agent found: {why} (is an agent running, or did one run, with agent.bpffs = {}?)",
            bpffs.display()
        ),
    }
}
