//! An identity provider that cannot be reached: when it has been failing since, how many
//! fetches in a row failed, and which of those failures are worth a warning in the log.
//!
//! The key refresh retries an unreachable provider every few seconds (backing off to a
//! minute). Warning on each attempt fills the log of a gateway whose policy names a provider
//! that is down, or that nobody has (the example policy's `idp.corp.example`). So the first
//! failure is warned about, then the 2nd, 4th, 8th, … (the warnings back off exponentially),
//! and the whole outage is in `callgate status`: provider, last error, since when, failures.

/// An outage in progress: no fetch has succeeded since `since_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// Unix milliseconds of the first failed fetch of this outage.
    pub since_ms: u64,
    /// Fetches in a row that failed.
    pub failures: u64,
}

impl Outage {
    /// The outage after one more failed fetch at `now_ms` (a new one when `prev` is None).
    pub fn failed(prev: Option<Outage>, now_ms: u64) -> Outage {
        match prev {
            Some(o) => Outage {
                failures: o.failures.saturating_add(1),
                ..o
            },
            None => Outage {
                since_ms: now_ms,
                failures: 1,
            },
        }
    }

    /// Whether this failure is warned about: the 1st, 2nd, 4th, 8th, … of the outage.
    pub fn warn_now(&self) -> bool {
        self.failures.is_power_of_two()
    }

    /// The failure count of the next warning, for the warning to say when it comes back.
    pub fn next_warning(&self) -> u64 {
        self.failures
            .checked_add(1)
            .and_then(u64::checked_next_power_of_two)
            .unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::Outage;

    #[test]
    fn an_outage_is_warned_about_once_then_at_a_falling_rate() {
        let mut o = None;
        let mut warned = Vec::new();
        for t in 0..1000u64 {
            let now = Outage::failed(o, 1_000 + t);
            if now.warn_now() {
                warned.push(now.failures);
            }
            o = Some(now);
        }
        // 1000 failures in a row give 10 warnings, each gap twice the last.
        assert_eq!(warned, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
        let o = o.unwrap();
        assert_eq!(o.since_ms, 1_000, "the outage keeps its start");
        assert_eq!(o.failures, 1000);
        assert_eq!(o.next_warning(), 1024);
        assert_eq!(
            Outage {
                since_ms: 0,
                failures: 4
            }
            .next_warning(),
            8
        );
        let end = Outage {
            since_ms: 0,
            failures: u64::MAX,
        };
        assert_eq!(Outage::failed(Some(end), 5).failures, u64::MAX);
        assert_eq!(end.next_warning(), u64::MAX);
    }
}
