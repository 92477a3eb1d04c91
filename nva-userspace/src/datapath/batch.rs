//! Batched map reads, writes, deletes and drains (BPF_MAP_LOOKUP_BATCH,
//! BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH,
//! BPF_MAP_LOOKUP_AND_DELETE_BATCH), which aya 0.14 does not wrap: a rule
//! set of 10,000 random rules has hundreds of thousands of table entries, and
//! one syscall per entry would make reloads take many seconds.
//!
//! Also one single-entry write on a borrowed fd ([`update_one`]): aya's
//! writes go through its map object, which cannot be shared by the threads
//! that put a slot's tables in their maps of maps at once.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// Keys and values cross into the kernel as raw bytes, both ways: only types
// whose every byte is a defined field (no padding) may be used.
use aya::Pod;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per syscall.
const CHUNK: usize = 16_384;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix whose
    // pointers reference live buffers for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The element members of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Writes one entry (insert or replace) through a borrowed fd, so threads
/// can each write one (see `DataPath::put_pending_in_slots`).
pub fn update_one<K: Pod, V: Pod>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_MAP_UPDATE_ELEM whose
    // key and value pointers reference live values of the map's sizes for
    // the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `entries` (insert or replace) in chunks.
pub fn update<K: Pod, V: Pod>(map: BorrowedFd<'_>, entries: &[(K, V)]) -> io::Result<()> {
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        if attr.count as usize != chunk.len() {
            return Err(io::Error::other(format!(
                "batch update wrote {} of {} entries",
                attr.count,
                chunk.len()
            )));
        }
    }
    Ok(())
}

/// Deletes every entry of a hash map; returns how many were deleted.
pub fn drain<K: Pod + Default, V: Pod + Default>(map: BorrowedFd<'_>) -> io::Result<usize> {
    let mut total = 0;
    walk::<K, V>(map, BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut |chunk| {
        total += chunk.len()
    })?;
    Ok(total)
}

/// Called with each chunk of entries a walk reads.
pub type EntryVisitor<'a, K, V> = dyn FnMut(&[(K, V)]) + 'a;

/// Reads every entry of a hash map, a chunk at a time (entries changed
/// meanwhile may be seen in either version, as with any map walk).
pub fn for_each<K: Pod + Default, V: Pod + Default>(
    map: BorrowedFd<'_>,
    f: &mut EntryVisitor<'_, K, V>,
) -> io::Result<()> {
    walk::<K, V>(map, BPF_MAP_LOOKUP_BATCH, f)
}

/// Deletes `keys`; returns how many existed.
pub fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    // A loop, not recursion past each missing key: after a failed write,
    // most of the keys remembered for a trie may be missing.
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(CHUNK)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => {
                deleted += chunk.len();
                rest = &rest[chunk.len()..];
            }
            // A key that is gone already (expired, evicted) stops the batch
            // there: count what was done and go on past it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let done = (attr.count as usize).min(chunk.len() - 1);
                deleted += done;
                rest = &rest[done + 1..];
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// One lookup-style batch call (`cmd`) of up to `count` entries into `keys`
/// and `values`, continuing after `token` (None: from the start) and
/// leaving the next token there. Returns the entries read and whether the
/// map has no more.
fn lookup_step<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    cmd: libc::c_long,
    token: &mut Option<u64>,
    keys: &mut [K],
    values: &mut [V],
    count: usize,
) -> io::Result<(usize, bool)> {
    // A hash map's token is a bucket index, an array's an index (u32 both);
    // a u64 keeps room.
    let mut token_in = token.unwrap_or(0);
    let mut token_out = 0u64;
    let mut attr = BatchAttr {
        in_batch: if token.is_some() {
            &mut token_in as *mut u64 as u64
        } else {
            0
        },
        out_batch: &mut token_out as *mut u64 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: count as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    let result = bpf(cmd, &mut attr);
    *token = Some(token_out);
    let n = attr.count as usize;
    match result {
        Ok(()) => Ok((n, n == 0)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((n, true)),
        Err(e) => Err(e),
    }
}

fn walk<K: Pod + Default, V: Pod + Default>(
    map: BorrowedFd<'_>,
    cmd: libc::c_long,
    f: &mut EntryVisitor<'_, K, V>,
) -> io::Result<()> {
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    let mut token = None;
    loop {
        let (n, done) = lookup_step(map, cmd, &mut token, &mut keys, &mut values, CHUNK)?;
        let chunk: Vec<(K, V)> = keys[..n]
            .iter()
            .copied()
            .zip(values[..n].iter().copied())
            .collect();
        f(&chunk);
        if done {
            return Ok(());
        }
    }
}

/// Reads entries `0..len` of a per-CPU array, `ncpus` values each (entry
/// `i` of CPU `c` at `i * ncpus + c`), a chunk per syscall: reading rule
/// counters one syscall per rule made `/metrics` slow for large rule sets.
pub fn percpu_array_prefix<V: Pod + Default>(
    map: BorrowedFd<'_>,
    len: u32,
    ncpus: usize,
) -> io::Result<Vec<V>> {
    // The kernel lays per-CPU values out 8-byte aligned; ours need no gaps.
    assert_eq!(std::mem::size_of::<V>() % 8, 0, "per-CPU value size");
    let mut out: Vec<V> = Vec::with_capacity(len as usize * ncpus);
    let mut token = None;
    while out.len() < len as usize * ncpus {
        let want = (len as usize - out.len() / ncpus).min(CHUNK);
        let mut keys = vec![0u32; want];
        let mut values = vec![V::default(); want * ncpus];
        let (n, done) = lookup_step(
            map,
            BPF_MAP_LOOKUP_BATCH,
            &mut token,
            &mut keys,
            &mut values,
            want,
        )?;
        out.extend_from_slice(&values[..n * ncpus]);
        if done {
            break;
        }
    }
    Ok(out)
}

/// Batched writes queued to run on several threads at once: a large rule
/// set's tables take about 0.6 s to write one after another, most of it in
/// the kernel (a trie insert or a hash insert each), and the tables are
/// independent maps.
#[derive(Default)]
pub struct WriteQueue {
    jobs: Vec<WriteJob>,
}

type WriteFn = Box<dyn FnOnce() -> io::Result<()> + Send>;

struct WriteJob {
    /// For errors: the map's name.
    name: String,
    /// Entries to write, for scheduling the largest first.
    cost: usize,
    write: WriteFn,
}

impl WriteQueue {
    /// Queues writing `entries` to `map`. With `split`, in chunks that may
    /// run at once: hash maps and arrays take concurrent writes (per-bucket
    /// locks or none), while an LPM trie holds one lock for each insert, so
    /// splitting it would only make its writers wait for each other.
    pub fn update<K: Pod + Send, V: Pod + Send>(
        &mut self,
        name: &str,
        map: std::os::fd::OwnedFd,
        entries: Vec<(K, V)>,
        split: bool,
    ) {
        let map = std::sync::Arc::new(map);
        let parts: Vec<Vec<(K, V)>> = if split && entries.len() > CHUNK {
            entries.chunks(CHUNK).map(<[_]>::to_vec).collect()
        } else {
            vec![entries]
        };
        for part in parts {
            let map = map.clone();
            self.jobs.push(WriteJob {
                name: name.to_string(),
                cost: part.len(),
                write: Box::new(move || {
                    use std::os::fd::AsFd;
                    update(map.as_fd(), &part)
                }),
            });
        }
    }

    /// Runs the queued writes on up to `threads` threads, the largest
    /// first, and empties the queue. The first error is returned with the
    /// map's name; the other writes still run to their end.
    pub fn run(&mut self, threads: usize) -> Result<(), (String, io::Error)> {
        let mut jobs = std::mem::take(&mut self.jobs);
        // Popped from the end: the largest last here.
        jobs.sort_by_key(|j| j.cost);
        let threads = threads.clamp(1, jobs.len().max(1));
        let queue = std::sync::Mutex::new(jobs);
        let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let work = || -> Result<(), (String, io::Error)> {
            let mut first = Ok(());
            while let Some(job) = next() {
                let result = (job.write)();
                if let (Ok(()), Err(e)) = (&first, result) {
                    first = Err((job.name, e));
                }
            }
            first
        };
        if threads == 1 {
            return work();
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("map write thread"))
                .fold(Ok(()), Result::and)
        })
    }
}
