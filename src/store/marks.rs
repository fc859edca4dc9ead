//! Invalidation marks: what a tag purge leaves behind, shared by the memory and Redis stores.

/// The latest hard and soft purge of a tag (or the maxima over an entry's tags), in
/// microseconds since the epoch; 0 means none.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct TagMarks {
    pub hard: u64,
    pub soft: u64,
}

/// What the marks say of an entry.
pub(crate) enum Verdict {
    Valid,
    /// Soft-purged at this time: serve stale within grace.
    Soft(u64),
    Invalid,
}

impl TagMarks {
    /// A hard or a soft mark at `at`.
    #[cfg(feature = "redis")]
    pub(crate) fn at(at: u64, soft: bool) -> Self {
        if soft {
            TagMarks { hard: 0, soft: at }
        } else {
            TagMarks { hard: at, soft: 0 }
        }
    }

    /// The verdict of these marks (the maxima over an entry's tags) on an entry stored at
    /// `stored` (microseconds).
    pub(crate) fn verdict(self, stored: u64) -> Verdict {
        if self.hard >= stored {
            Verdict::Invalid
        } else if self.soft >= stored {
            Verdict::Soft(self.soft)
        } else {
            Verdict::Valid
        }
    }

    pub(crate) fn raise(&mut self, other: TagMarks) {
        self.hard = self.hard.max(other.hard);
        self.soft = self.soft.max(other.soft);
    }

    #[cfg(feature = "memory")]
    pub(crate) fn latest(self) -> u64 {
        self.hard.max(self.soft)
    }
}
