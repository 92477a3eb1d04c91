//! The sync protocol's messages: flow records in authenticated frames.
//!
//! ```text
//! frame   = length:u32 body tag[32]              (length = body + tag, ≤ MAX_FRAME)
//! body    = "NVAS" version:u8 kind:u8 session[16] seq:u64 payload
//! tag     = HMAC-SHA256(key, challenge[16] ‖ body)
//! ```
//!
//! The receiver opens every connection with a fresh random `challenge` (a
//! `Hello` sent in the clear); each frame of that connection is
//! authenticated over it, and carries a strictly increasing `seq`. A frame
//! recorded on one connection therefore fails on any other (another
//! challenge) and on its own once seen (its `seq`); a frame without a valid
//! tag for the shared key fails too. Records describe flows by role
//! (originator, responder, the index of the interface in
//! `agent.interfaces`) and by ages, never by ifindex or kernel timestamps.

use std::net::IpAddr;

use ring::hmac;

pub const MAGIC: [u8; 4] = *b"NVAS";
pub const VERSION: u8 = 1;
pub const TAG_LEN: usize = 32;
pub const CHALLENGE_LEN: usize = 16;
/// Largest frame (length field included): bounds what a peer can make us
/// buffer.
pub const MAX_FRAME: usize = 256 * 1024;
/// Largest NAT entry name in a record (the config allows 63 bytes).
const MAX_NAME: usize = 63;
const BODY_HEADER: usize = 4 + 1 + 1 + 16 + 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("not an nva sync frame (bad magic)")]
    Magic,
    #[error("unsupported sync protocol version {0}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("authentication failed (wrong key, or not for this connection)")]
    Tag,
    #[error("replayed or reordered frame (seq {seq} after {last})")]
    Replay { seq: u64, last: u64 },
    #[error("malformed record: {0}")]
    Record(&'static str),
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Changed and new flows (and ends).
    Flows = 1,
    /// The sender's whole table follows in `Flows` frames; `ResyncDone` ends it.
    Resync = 2,
    ResyncDone = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Result<Kind, CodecError> {
        match v {
            1 => Ok(Kind::Flows),
            2 => Ok(Kind::Resync),
            3 => Ok(Kind::ResyncDone),
            n => Err(CodecError::Kind(n)),
        }
    }
}

/// How a synced flow is translated, by the names of the NAT entries that
/// translate it: the receiver maps the translated addresses to its own
/// through its entries of the same names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatRecord {
    /// DNAT entry name and the new destination.
    pub dnat: Option<(String, IpAddr, u16)>,
    /// SNAT entry name and the new source.
    pub snat: Option<(String, IpAddr, u16)>,
}

/// One flow as the sender tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub proto: u8,
    /// The originator's tuple, as it arrived (before any translation). ICMP
    /// echo: the identifier as both ports.
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub vlan: [u16; 2],
    /// Index of the originator's ingress interface in `agent.interfaces`
    /// (0xff: not one of them).
    pub origin_iface: u8,
    /// `ConntrackState` as u8; 0 for a flow that ended.
    pub state: u8,
    /// Milliseconds since the flow's last packet, and since its creation.
    pub idle_ms: u32,
    pub age_ms: u32,
    pub nat: Option<NatRecord>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn addr(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(v4) => {
                self.u8(4);
                self.0.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.u8(6);
                self.0.extend_from_slice(&v6.octets());
            }
        }
    }
    fn translation(&mut self, t: &Option<(String, IpAddr, u16)>) {
        match t {
            None => self.u8(0),
            Some((name, addr, port)) => {
                let name = &name.as_bytes()[..name.len().min(MAX_NAME)];
                self.u8(1);
                self.u8(name.len() as u8);
                self.0.extend_from_slice(name);
                self.addr(*addr);
                self.u16(*port);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn addr(&mut self) -> Result<IpAddr, CodecError> {
        match self.u8("address family")? {
            4 => {
                let b: [u8; 4] = self.take(4, "IPv4 address")?.try_into().expect("4 bytes");
                Ok(IpAddr::from(b))
            }
            6 => {
                let b: [u8; 16] = self.take(16, "IPv6 address")?.try_into().expect("16 bytes");
                Ok(IpAddr::from(b))
            }
            _ => Err(CodecError::Record("address family")),
        }
    }
    fn translation(&mut self) -> Result<Option<(String, IpAddr, u16)>, CodecError> {
        match self.u8("translation")? {
            0 => Ok(None),
            1 => {
                let len = self.u8("name length")? as usize;
                if len == 0 || len > MAX_NAME {
                    return Err(CodecError::Record("NAT entry name length"));
                }
                let name = std::str::from_utf8(self.take(len, "name")?)
                    .map_err(|_| CodecError::Record("NAT entry name is not UTF-8"))?
                    .to_string();
                let addr = self.addr()?;
                let port = self.u16("port")?;
                Ok(Some((name, addr, port)))
            }
            _ => Err(CodecError::Record("translation flag")),
        }
    }
}

/// Encodes flow records as a payload.
pub fn encode_flows(records: &[FlowRecord]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(records.len() * 64));
    w.u32(records.len() as u32);
    for r in records {
        w.u8(r.proto);
        w.addr(r.src);
        w.u16(r.sport);
        w.addr(r.dst);
        w.u16(r.dport);
        w.u16(r.vlan[0]);
        w.u16(r.vlan[1]);
        w.u8(r.origin_iface);
        w.u8(r.state);
        w.u32(r.idle_ms);
        w.u32(r.age_ms);
        match &r.nat {
            None => w.u8(0),
            Some(n) => {
                w.u8(1);
                w.translation(&n.dnat);
                w.translation(&n.snat);
            }
        }
    }
    w.0
}

/// Decodes a payload of flow records; every byte must belong to a record.
pub fn decode_flows(payload: &[u8]) -> Result<Vec<FlowRecord>, CodecError> {
    let mut r = Reader(payload);
    let n = r.u32("record count")? as usize;
    // Each record takes at least 30 bytes: no allocation beyond the frame.
    if n > payload.len() / 30 {
        return Err(CodecError::Record("record count larger than the frame"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let proto = r.u8("protocol")?;
        let src = r.addr()?;
        let sport = r.u16("port")?;
        let dst = r.addr()?;
        let dport = r.u16("port")?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(CodecError::Record("mixed address families"));
        }
        let vlan = [r.u16("vlan")?, r.u16("vlan")?];
        let origin_iface = r.u8("interface")?;
        let state = r.u8("state")?;
        let idle_ms = r.u32("idle time")?;
        let age_ms = r.u32("age")?;
        let nat = match r.u8("nat flag")? {
            0 => None,
            1 => Some(NatRecord {
                dnat: r.translation()?,
                snat: r.translation()?,
            }),
            _ => return Err(CodecError::Record("nat flag")),
        };
        out.push(FlowRecord {
            proto,
            src,
            sport,
            dst,
            dport,
            vlan,
            origin_iface,
            state,
            idle_ms,
            age_ms,
            nat,
        });
    }
    if !r.0.is_empty() {
        return Err(CodecError::Record("trailing bytes"));
    }
    Ok(out)
}

/// The shared key, as HMAC-SHA256 uses it.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        Key(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

/// The sending side of one connection.
pub struct Sealer {
    key: Key,
    challenge: [u8; CHALLENGE_LEN],
    session: [u8; 16],
    seq: u64,
}

impl Sealer {
    /// For a connection whose receiver sent `challenge`.
    pub fn new(key: Key, challenge: [u8; CHALLENGE_LEN], session: [u8; 16]) -> Sealer {
        Sealer {
            key,
            challenge,
            session,
            seq: 0,
        }
    }

    /// A frame carrying `payload`.
    pub fn seal(&mut self, kind: Kind, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
        let total = 4 + BODY_HEADER + payload.len() + TAG_LEN;
        if total > MAX_FRAME {
            return Err(CodecError::TooLarge(total));
        }
        self.seq += 1;
        let mut f = Vec::with_capacity(total);
        f.extend_from_slice(&((total - 4) as u32).to_be_bytes());
        f.extend_from_slice(&MAGIC);
        f.push(VERSION);
        f.push(kind as u8);
        f.extend_from_slice(&self.session);
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(payload);
        let mut ctx = hmac::Context::with_key(&self.key.0);
        ctx.update(&self.challenge);
        ctx.update(&f[4..]);
        f.extend_from_slice(ctx.sign().as_ref());
        Ok(f)
    }
}

/// The receiving side of one connection.
pub struct Opener {
    key: Key,
    challenge: [u8; CHALLENGE_LEN],
    last_seq: u64,
}

/// A frame that passed every check.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    pub kind: Kind,
    pub seq: u64,
    pub payload: Vec<u8>,
}

impl Opener {
    pub fn new(key: Key, challenge: [u8; CHALLENGE_LEN]) -> Opener {
        Opener {
            key,
            challenge,
            last_seq: 0,
        }
    }

    /// Length of the frame that starts `buf` (its first 4 bytes), once
    /// they are there: how much to read before [`Opener::open`].
    pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize + 4;
        if len > MAX_FRAME {
            return Err(CodecError::TooLarge(len));
        }
        if len < 4 + BODY_HEADER + TAG_LEN {
            return Err(CodecError::Truncated("frame"));
        }
        Ok(Some(len))
    }

    /// Checks and opens one whole frame (length field included).
    pub fn open(&mut self, frame: &[u8]) -> Result<Opened, CodecError> {
        let len = Opener::frame_len(frame)?.ok_or(CodecError::Truncated("length"))?;
        if frame.len() != len {
            return Err(CodecError::Truncated("frame"));
        }
        let (body, tag) = frame[4..].split_at(len - 4 - TAG_LEN);
        let mut signed = Vec::with_capacity(CHALLENGE_LEN + body.len());
        signed.extend_from_slice(&self.challenge);
        signed.extend_from_slice(body);
        hmac::verify(&self.key.0, &signed, tag).map_err(|_| CodecError::Tag)?;
        // Authentic from here: the checks below catch a peer of another
        // version, not an attacker.
        if body[..4] != MAGIC {
            return Err(CodecError::Magic);
        }
        if body[4] != VERSION {
            return Err(CodecError::Version(body[4]));
        }
        let kind = Kind::from_u8(body[5])?;
        let seq = u64::from_be_bytes(body[22..30].try_into().expect("8 bytes"));
        if seq <= self.last_seq {
            return Err(CodecError::Replay {
                seq,
                last: self.last_seq,
            });
        }
        self.last_seq = seq;
        Ok(Opened {
            kind,
            seq,
            payload: body[BODY_HEADER..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(i: u16) -> FlowRecord {
        FlowRecord {
            proto: 6,
            src: "192.0.2.7".parse().unwrap(),
            sport: 40000 + i,
            dst: "10.0.1.4".parse().unwrap(),
            dport: 443,
            vlan: [0, 0],
            origin_iface: 0,
            state: 3,
            idle_ms: 120,
            age_ms: 5000,
            nat: Some(NatRecord {
                dnat: Some(("web-in".into(), "10.0.2.10".parse().unwrap(), 8443)),
                snat: None,
            }),
        }
    }

    fn pair() -> (Sealer, Opener) {
        let key = Key::new(b"a shared secret of the pair");
        let challenge = [7u8; CHALLENGE_LEN];
        (
            Sealer::new(key.clone(), challenge, [1; 16]),
            Opener::new(key, challenge),
        )
    }

    #[test]
    fn round_trip() {
        let (mut s, mut o) = pair();
        let records: Vec<FlowRecord> = (0..100).map(record).collect();
        let frame = s.seal(Kind::Flows, &encode_flows(&records)).unwrap();
        let opened = o.open(&frame).unwrap();
        assert_eq!(opened.kind, Kind::Flows);
        assert_eq!(decode_flows(&opened.payload).unwrap(), records);
    }

    #[test]
    fn replay_wrong_key_and_other_connection_are_refused() {
        let (mut s, mut o) = pair();
        let frame = s.seal(Kind::Flows, &encode_flows(&[record(1)])).unwrap();
        o.open(&frame).unwrap();
        assert_eq!(o.open(&frame), Err(CodecError::Replay { seq: 1, last: 1 }));
        // Another key.
        let mut other = Sealer::new(Key::new(b"not the key"), [7; CHALLENGE_LEN], [1; 16]);
        let forged = other.seal(Kind::Flows, &[0, 0, 0, 0]).unwrap();
        assert_eq!(o.open(&forged), Err(CodecError::Tag));
        // The same frame on a connection with another challenge.
        let mut o2 = Opener::new(Key::new(b"a shared secret of the pair"), [8; CHALLENGE_LEN]);
        assert_eq!(o2.open(&frame), Err(CodecError::Tag));
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        let len = (MAX_FRAME as u32).to_be_bytes();
        assert!(matches!(
            Opener::frame_len(&len),
            Err(CodecError::TooLarge(_))
        ));
        let (mut s, _) = pair();
        assert!(s.seal(Kind::Flows, &vec![0; MAX_FRAME]).is_err());
    }

    proptest! {
        /// Any truncation of a valid frame, and any single-bit change of
        /// it, is refused; nothing panics.
        #[test]
        fn truncated_or_tampered_frames_are_refused(n in 0usize..20, cut in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
            let (mut s, mut o) = pair();
            let records: Vec<FlowRecord> = (0..n as u16).map(record).collect();
            let frame = s.seal(Kind::Flows, &encode_flows(&records)).unwrap();
            let short = &frame[..cut.index(frame.len())];
            prop_assert!(o.open(short).is_err());
            let mut flipped = frame.clone();
            let b = bit.index(frame.len() * 8);
            flipped[b / 8] ^= 1 << (b % 8);
            prop_assert!(o.open(&flipped).is_err());
            prop_assert!(o.open(&frame).is_ok());
        }

        /// Decoding arbitrary payloads never panics (and what it accepts
        /// encodes back to the same bytes).
        #[test]
        fn arbitrary_payloads_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(records) = decode_flows(&bytes) {
                prop_assert_eq!(encode_flows(&records), bytes);
            }
        }
    }
}
