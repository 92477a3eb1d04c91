//! The `[sync]` table: where this agent receives its peer's flows, where it
//! sends its own, the shared key and how often changes go out.

use serde::Deserialize;
use toml::Spanned;

use super::Ctx;
use crate::policy::model::SyncSettings;

/// Default `sync.interval_ms`.
pub const DEFAULT_SYNC_INTERVAL_MS: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    listen: Option<Spanned<String>>,
    peer: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    interval_ms: Option<Spanned<i64>>,
}

impl Ctx<'_> {
    pub(super) fn sync(&mut self, raw: Spanned<RawSync>) -> Option<SyncSettings> {
        let span = raw.span();
        let raw = raw.into_inner();
        let mark = self.c.mark();
        let hint = "like \"10.99.1.11:7800\", on the management network";
        let listen = self
            .c
            .required(
                &raw.listen,
                span.clone(),
                "sync.listen is required: where this agent receives its peer's flows",
            )
            .and_then(|v| self.c.socket_addr("sync.listen", v, hint));
        let peer = self
            .c
            .required(
                &raw.peer,
                span.clone(),
                "sync.peer is required: where the peer receives this agent's flows",
            )
            .and_then(|v| self.c.socket_addr("sync.peer", v, hint));
        let key_file = self
            .c
            .required(
                &raw.key_file,
                span,
                "sync.key_file is required: the pair's shared secret",
            )
            .map(|v| std::path::PathBuf::from(v.get_ref()));
        let interval_ms = self.c.int_or(
            "sync.interval_ms",
            raw.interval_ms.as_ref(),
            DEFAULT_SYNC_INTERVAL_MS,
            10..=10_000,
        );
        if self.c.failed_since(mark) {
            return None;
        }
        Some(SyncSettings {
            listen: listen?,
            peer: peer?,
            key_file: key_file?,
            interval_ms,
        })
    }
}
