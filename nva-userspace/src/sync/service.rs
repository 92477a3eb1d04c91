//! The sync service: a sender that keeps the peer's table current (a full
//! resync on every (re)connection, then the changes every `interval_ms`),
//! and a receiver that imports what an authenticated peer sends. Both work
//! on the pinned maps from userspace: the XDP data path never waits for
//! them. A slow or absent peer costs the sender a reconnect and a resync;
//! nothing queues up.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::codec::{
    decode_flows, encode_flows, FlowRecord, Key, Kind, Opener, Sealer, CHALLENGE_LEN,
};
use super::flows::Imported;

/// Records per frame (a frame stays far below `MAX_FRAME`).
const RECORDS_PER_FRAME: usize = 1000;
/// A flow that keeps seeing packets is sent again this often, so that the
/// peer's copy does not expire.
const REFRESH: Duration = Duration::from_secs(10);
/// How long a connection may stay silent before it is dropped (the sender
/// sends at least one frame per interval).
const SILENCE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync.key_file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("sync.key_file {0} is readable by everyone (mode {1:o}): chmod 600 it")]
    KeyWorldReadable(String, u32),
    #[error("sync.key_file {0} holds {1} bytes: a shared key needs at least 16")]
    KeyTooShort(String, usize),
}

/// Reads the shared key; refuses a file others may read, and short keys.
pub fn load_key(path: &std::path::Path) -> Result<Key, SyncError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.display().to_string();
    let io = |source| SyncError::KeyFile {
        path: name.clone(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o004 != 0 {
        return Err(SyncError::KeyWorldReadable(name, mode));
    }
    let secret = std::fs::read(path).map_err(io)?;
    let secret: Vec<u8> = secret.trim_ascii().to_vec();
    if secret.len() < 16 {
        return Err(SyncError::KeyTooShort(name, secret.len()));
    }
    Ok(Key::new(&secret))
}

/// The service's counters, for the metrics and `nva status`.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Records sent.
    pub sent: AtomicU64,
    /// Records received in authenticated frames.
    pub received: AtomicU64,
    /// Frames refused (bad tag, replay, oversized, malformed).
    pub rejected: AtomicU64,
    /// Received flows not imported (the local rules refuse them, or a NAT
    /// entry they name is missing here).
    pub refused: AtomicU64,
    /// 1 while this agent's connection to the peer is up.
    pub peer_up: AtomicBool,
    /// Unix time (ms) of the newest authenticated frame received (0: none).
    pub last_received_unix_ms: AtomicU64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type FlowId = (u8, IpAddr, u16, IpAddr, u16, [u16; 2]);

fn id(r: &FlowRecord) -> FlowId {
    (r.proto, r.src, r.sport, r.dst, r.dport, r.vlan)
}

/// Exports the local table: every live flow, and whether it is the peer's
/// (called on a blocking thread).
pub type Exporter = Arc<dyn Fn() -> anyhow::Result<Vec<(FlowRecord, bool)>> + Send + Sync>;
/// Imports records into the local table (called on a blocking thread).
pub type Importer = Arc<dyn Fn(&[FlowRecord]) -> anyhow::Result<Imported> + Send + Sync>;

/// Keeps the peer's table current, reconnecting as needed.
pub async fn send(
    peer: SocketAddr,
    key: Key,
    interval: Duration,
    export: Exporter,
    stats: Arc<SyncStats>,
) {
    let random = SystemRandom::new();
    loop {
        match connect(peer).await {
            Ok(mut conn) => {
                stats.peer_up.store(true, Ordering::Relaxed);
                tracing::info!(%peer, "sync: connected to the peer; full resync");
                let result = feed(&mut conn, &key, interval, &export, &stats, &random).await;
                stats.peer_up.store(false, Ordering::Relaxed);
                tracing::warn!(%peer, error = ?result.err(), "sync: connection to the peer lost");
            }
            Err(e) => tracing::debug!(%peer, error = %e, "sync: peer not reachable"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn connect(peer: SocketAddr) -> anyhow::Result<TcpStream> {
    let conn = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(peer)).await??;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// One connection's life: challenge, full resync, then changes.
async fn feed(
    conn: &mut TcpStream,
    key: &Key,
    interval: Duration,
    export: &Exporter,
    stats: &SyncStats,
    random: &SystemRandom,
) -> anyhow::Result<()> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    tokio::time::timeout(Duration::from_secs(2), conn.read_exact(&mut challenge)).await??;
    let mut session = [0u8; 16];
    random
        .fill(&mut session)
        .map_err(|_| anyhow::anyhow!("no random numbers"))?;
    let mut sealer = Sealer::new(key.clone(), challenge, session);
    let mut sent: HashMap<FlowId, (u8, Instant)> = HashMap::new();
    let mut first = true;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let e = export.clone();
        let records = tokio::task::spawn_blocking(move || e()).await??;
        let now = Instant::now();
        let mut out: Vec<FlowRecord> = Vec::new();
        let mut live = std::collections::HashSet::with_capacity(records.len());
        for (r, imported) in records {
            let k = id(&r);
            live.insert(k);
            // The peer's own flow: it has it; not ended either.
            if imported {
                continue;
            }
            let due = match sent.get(&k) {
                None => true,
                Some((state, at)) => {
                    *state != r.state
                        || (now.duration_since(*at) > REFRESH
                            && (r.idle_ms as u128) < now.duration_since(*at).as_millis())
                }
            };
            if first || due {
                sent.insert(k, (r.state, now));
                out.push(r);
            }
        }
        // Flows that ended here end at the peer too.
        let ended: Vec<FlowId> = sent
            .keys()
            .filter(|k| !live.contains(*k))
            .copied()
            .collect();
        for k in ended {
            sent.remove(&k);
            out.push(FlowRecord {
                proto: k.0,
                src: k.1,
                sport: k.2,
                dst: k.3,
                dport: k.4,
                vlan: k.5,
                origin_iface: 0xff,
                state: 0,
                idle_ms: 0,
                age_ms: 0,
                nat: None,
            });
        }
        if first {
            write(conn, &sealer.seal(Kind::Resync, &[])?).await?;
        }
        // At least one frame per interval: the peer tells a quiet sender
        // from a dead one.
        let mut chunks = out.chunks(RECORDS_PER_FRAME).peekable();
        if chunks.peek().is_none() {
            write(conn, &sealer.seal(Kind::Flows, &encode_flows(&[]))?).await?;
        }
        for chunk in chunks {
            write(conn, &sealer.seal(Kind::Flows, &encode_flows(chunk))?).await?;
            stats.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        if first {
            write(conn, &sealer.seal(Kind::ResyncDone, &[])?).await?;
            first = false;
        }
    }
}

async fn write(conn: &mut TcpStream, frame: &[u8]) -> anyhow::Result<()> {
    tokio::time::timeout(SILENCE, conn.write_all(frame)).await??;
    Ok(())
}

/// Accepts the peer's connections and imports what they carry.
pub async fn receive(listener: TcpListener, key: Key, import: Importer, stats: Arc<SyncStats>) {
    loop {
        let Ok((conn, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (key, import, stats) = (key.clone(), import.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(conn, &key, &import, &stats).await {
                tracing::warn!(%from, error = %e, "sync: connection from the peer closed");
            }
        });
    }
}

/// One incoming connection: challenge, then authenticated frames only. The
/// first bad frame closes the connection (and is counted).
async fn serve(
    mut conn: TcpStream,
    key: &Key,
    import: &Importer,
    stats: &SyncStats,
) -> anyhow::Result<()> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    SystemRandom::new()
        .fill(&mut challenge)
        .map_err(|_| anyhow::anyhow!("no random numbers"))?;
    conn.write_all(&challenge).await?;
    let mut opener = Opener::new(key.clone(), challenge);
    let reject = |e: anyhow::Error| {
        stats.rejected.fetch_add(1, Ordering::Relaxed);
        e
    };
    loop {
        let mut len = [0u8; 4];
        tokio::time::timeout(SILENCE, conn.read_exact(&mut len)).await??;
        let total = Opener::frame_len(&len)
            .map_err(|e| reject(e.into()))?
            .expect("4 bytes are there");
        let mut frame = vec![0u8; total];
        frame[..4].copy_from_slice(&len);
        tokio::time::timeout(SILENCE, conn.read_exact(&mut frame[4..]))
            .await
            .map_err(|e| reject(e.into()))?
            .map_err(|e| reject(e.into()))?;
        let opened = opener.open(&frame).map_err(|e| reject(e.into()))?;
        stats
            .last_received_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
        if opened.kind != Kind::Flows {
            continue;
        }
        let records = decode_flows(&opened.payload).map_err(|e| reject(e.into()))?;
        if records.is_empty() {
            continue;
        }
        stats
            .received
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let i = import.clone();
        let done = tokio::task::spawn_blocking(move || i(&records)).await??;
        stats
            .refused
            .fetch_add(done.refused as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_files_others_may_read_or_short_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("nva-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sync.key");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key(&path).err().expect("refused").to_string();
        assert!(
            e.contains("readable by everyone (mode 644): chmod 600 it"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_key(&path).is_ok());
        std::fs::write(&path, "short\n").unwrap();
        let e = load_key(&path).err().expect("refused").to_string();
        assert!(
            e.contains("holds 5 bytes: a shared key needs at least 16"),
            "{e}"
        );
        let e = load_key(&dir.join("missing"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
