//! Purges by kind, mode and result, and the entries they purged.

#[cfg(feature = "metrics")]
use super::describe;
#[cfg(feature = "metrics")]
use crate::metrics::names;
use crate::store::PurgeMode;

#[cfg(feature = "purge")]
/// What a purge named, as the `kind` label spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PurgeKind {
    Key,
    Tag,
    Pattern,
    All,
}

#[cfg(feature = "purge")]
impl PurgeKind {
    #[cfg(feature = "metrics")]
    const COUNT: usize = 4;

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Key => "key",
            PurgeKind::Tag => "tag",
            PurgeKind::Pattern => "pattern",
            PurgeKind::All => "all",
        }
    }
}

#[cfg(feature = "purge")]
pub(crate) fn purge_mode_str(mode: PurgeMode) -> &'static str {
    match mode {
        PurgeMode::Hard => "hard",
        PurgeMode::Soft => "soft",
    }
}

#[cfg(feature = "purge")]
/// Purges by kind, mode and result, and the entries they purged.
#[derive(Debug)]
pub(crate) struct PurgeFigures {
    /// `[kind][soft][failed]`
    #[cfg(feature = "metrics")]
    requests: [[[metrics::Counter; 2]; 2]; PurgeKind::COUNT],
    /// `[kind][soft]`
    #[cfg(feature = "metrics")]
    entries: [[metrics::Counter; 2]; PurgeKind::COUNT],
}

#[cfg(feature = "purge")]
impl PurgeFigures {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let kinds = [
                PurgeKind::Key,
                PurgeKind::Tag,
                PurgeKind::Pattern,
                PurgeKind::All,
            ];
            let modes = [PurgeMode::Hard, PurgeMode::Soft];
            PurgeFigures {
                requests: kinds.map(|kind| {
                    modes.map(|mode| {
                        ["ok", "error"].map(|result| {
                            metrics::counter!(
                                names::PURGE_REQUESTS,
                                "kind" => kind.as_str(),
                                "mode" => purge_mode_str(mode),
                                "result" => result
                            )
                        })
                    })
                }),
                entries: kinds.map(|kind| {
                    modes.map(|mode| {
                        metrics::counter!(
                            names::PURGE_ENTRIES,
                            "kind" => kind.as_str(),
                            "mode" => purge_mode_str(mode)
                        )
                    })
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        PurgeFigures {}
    }

    /// One purge: `Some(entries)` when it succeeded.
    pub(crate) fn record(&self, kind: PurgeKind, mode: PurgeMode, purged: Option<u64>) {
        #[cfg(feature = "metrics")]
        {
            let (k, soft) = (kind as usize, usize::from(mode == PurgeMode::Soft));
            self.requests[k][soft][usize::from(purged.is_none())].increment(1);
            if let Some(n) = purged {
                self.entries[k][soft].increment(n);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (kind, mode, purged);
    }
}
