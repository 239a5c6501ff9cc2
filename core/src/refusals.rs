//! [`RefusalLog`]: refused and dropped connections, logged once each with
//! the peer and the reason, rate-limited (decision 47), so that a flood of
//! junk costs a line a second, not a line a connection.

use std::time::{Duration, Instant};

/// Lines a [`RefusalLog`] writes per [`WINDOW`] at most.
pub const LINES_PER_WINDOW: u32 = 8;

/// The rate limit's window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Counts refusals and says which lines to print: the first
/// [`LINES_PER_WINDOW`] of each [`WINDOW`], then, with the next one
/// printed, how many were left out.
#[derive(Debug)]
pub struct RefusalLog {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
    total: u64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new()
    }
}

impl RefusalLog {
    /// An empty log.
    pub const fn new() -> Self {
        RefusalLog { window_start: None, in_window: 0, suppressed: 0, total: 0 }
    }

    /// A refusal at `now` described by `line` (made only when printed):
    /// the line to print, if any.
    pub fn refused(&mut self, now: Instant, line: impl FnOnce() -> String) -> Option<String> {
        self.total += 1;
        let fresh = self.window_start.is_none_or(|s| now.saturating_duration_since(s) >= WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= LINES_PER_WINDOW {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        let mut s = line();
        if self.suppressed > 0 {
            s.push_str(&format!(" ({} more refused connections not shown)", self.suppressed));
            self.suppressed = 0;
        }
        Some(s)
    }

    /// Every refusal counted so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_prints_a_few_lines_a_window_and_counts_the_rest() {
        let mut log = RefusalLog::new();
        let t = Instant::now();
        let printed = (0..1000).filter(|_| log.refused(t, || "x".into()).is_some()).count();
        assert_eq!(printed, LINES_PER_WINDOW as usize);
        let next = log.refused(t + WINDOW, || "peer 1.2.3.4: bad".into()).unwrap();
        assert_eq!(next, format!("peer 1.2.3.4: bad ({} more refused connections not shown)", 1000 - 8));
        assert_eq!(log.total(), 1001);
    }
}
