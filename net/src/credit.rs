//! Credit-based flow control bookkeeping, sans IO.
//!
//! One credit is one batch (one data frame) the receiver has a buffer for.
//! Both ends of a channel start from the same window (the receiver's
//! buffers for that channel, [`DEFAULT_CREDIT_WINDOW`] unless configured),
//! so no credit frame is needed before the first batch.
//!
//! * The sender keeps a [`SendCredits`] per channel: it may send a data
//!   frame only after [`SendCredits::try_consume`] succeeds, and adds the
//!   grant of each [`Kind::Credit`](crate::frame::Kind::Credit) frame with
//!   [`SendCredits::on_grant`]. With no credits it stops pulling from its
//!   bounded queue, so a slow receiver slows the sender.
//! * The receiver keeps a [`RecvCredits`] per channel: it counts arriving
//!   data frames with [`RecvCredits::on_receive`] (a peer that overruns its
//!   credits is a protocol error), reports freed buffers with
//!   [`RecvCredits::release`], and sends a credit frame whenever
//!   [`RecvCredits::take_grant`] returns a count. Grants are batched to a
//!   quarter window so credit traffic stays small; [`RecvCredits::flush_grant`]
//!   sends whatever is pending (when idle).
//!
//! Invariant, per channel: sender available + frames in flight + receiver
//! buffers held + pending grants = window.

use std::fmt;

/// Default per-channel window: batches in flight (or buffered at the
/// receiver) before the sender must wait for a grant.
pub const DEFAULT_CREDIT_WINDOW: u32 = 16;

/// A flow-control protocol violation by the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditError {
    /// A grant would raise the sender's credits above the window.
    Overgrant {
        /// Credits available before the grant.
        available: u32,
        /// Credits granted.
        granted: u32,
        /// The window.
        window: u32,
    },
    /// A data frame arrived while the peer held no credit.
    Overrun {
        /// The window.
        window: u32,
    },
    /// More buffers released than were held.
    OverRelease {
        /// Buffers held.
        held: u32,
        /// Buffers released.
        released: u32,
    },
}

impl fmt::Display for CreditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreditError::Overgrant { available, granted, window } => write!(
                f,
                "credit grant of {granted} with {available} available exceeds the window of {window}"
            ),
            CreditError::Overrun { window } => {
                write!(f, "peer sent a batch without credit (window {window})")
            }
            CreditError::OverRelease { held, released } => {
                write!(f, "released {released} buffers but only {held} were held")
            }
        }
    }
}

impl std::error::Error for CreditError {}

/// Sender side of one channel: the credits it may still spend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendCredits {
    available: u32,
    window: u32,
}

impl Default for SendCredits {
    fn default() -> Self {
        Self::new(DEFAULT_CREDIT_WINDOW)
    }
}

impl SendCredits {
    /// A channel with the full `window` available.
    pub fn new(window: u32) -> Self {
        Self { available: window, window }
    }

    /// Credits available now.
    pub fn available(&self) -> u32 {
        self.available
    }

    /// The window.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Batches sent and not yet credited back.
    pub fn in_flight(&self) -> u32 {
        self.window - self.available
    }

    /// Whether a batch may be sent now.
    pub fn can_send(&self) -> bool {
        self.available > 0
    }

    /// Spends one credit for a batch about to be sent; `false` (and nothing
    /// spent) when none is available: the sender must wait for a grant.
    pub fn try_consume(&mut self) -> bool {
        if self.available == 0 {
            return false;
        }
        self.available -= 1;
        true
    }

    /// Adds the grant of a credit frame. A grant beyond the window is a
    /// protocol error (and changes nothing).
    pub fn on_grant(&mut self, granted: u32) -> Result<(), CreditError> {
        match self.available.checked_add(granted) {
            Some(a) if a <= self.window => {
                self.available = a;
                Ok(())
            }
            _ => Err(CreditError::Overgrant { available: self.available, granted, window: self.window }),
        }
    }
}

/// Receiver side of one channel: buffers held, grants owed to the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvCredits {
    window: u32,
    /// Credits the sender holds (may still spend).
    outstanding: u32,
    /// Received batches whose buffers are not yet released.
    held: u32,
    /// Released buffers not yet granted back.
    pending: u32,
    /// Grant once `pending` reaches this.
    threshold: u32,
}

impl Default for RecvCredits {
    fn default() -> Self {
        Self::new(DEFAULT_CREDIT_WINDOW)
    }
}

impl RecvCredits {
    /// A channel whose sender starts with the full `window`; grants are
    /// batched to a quarter of it (at least 1).
    pub fn new(window: u32) -> Self {
        Self::with_threshold(window, (window / 4).max(1))
    }

    /// As [`new`](Self::new), granting once `threshold` buffers are free
    /// (clamped to 1..=window; 1 grants every buffer at once).
    pub fn with_threshold(window: u32, threshold: u32) -> Self {
        Self {
            window,
            outstanding: window,
            held: 0,
            pending: 0,
            threshold: threshold.clamp(1, window.max(1)),
        }
    }

    /// The window.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Credits the sender may still spend.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Received batches whose buffers are held.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// Released buffers not yet granted.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// A data frame arrived on the channel. An error if the sender had no
    /// credit (the caller closes the connection).
    pub fn on_receive(&mut self) -> Result<(), CreditError> {
        if self.outstanding == 0 {
            return Err(CreditError::Overrun { window: self.window });
        }
        self.outstanding -= 1;
        self.held += 1;
        Ok(())
    }

    /// `n` buffers of received batches were freed (the batches consumed).
    pub fn release(&mut self, n: u32) -> Result<(), CreditError> {
        if n > self.held {
            return Err(CreditError::OverRelease { held: self.held, released: n });
        }
        self.held -= n;
        self.pending += n;
        Ok(())
    }

    /// The count for a credit frame to send now, if enough buffers are free
    /// (the grant is then counted as outstanding).
    pub fn take_grant(&mut self) -> Option<u32> {
        if self.pending >= self.threshold {
            self.flush_grant()
        } else {
            None
        }
    }

    /// Like [`take_grant`](Self::take_grant) but grants any pending buffer,
    /// however few (for an idle channel, or a sender known to be blocked).
    pub fn flush_grant(&mut self) -> Option<u32> {
        if self.pending == 0 {
            return None;
        }
        let g = self.pending;
        self.pending = 0;
        self.outstanding += g;
        Some(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_consumes_and_regains() {
        let mut s = SendCredits::new(3);
        assert!(s.try_consume() && s.try_consume() && s.try_consume());
        assert!(!s.can_send());
        assert!(!s.try_consume());
        assert_eq!(s.available(), 0);
        assert_eq!(s.in_flight(), 3);
        s.on_grant(2).unwrap();
        assert_eq!(s.available(), 2);
        assert_eq!(s.on_grant(2), Err(CreditError::Overgrant { available: 2, granted: 2, window: 3 }));
        assert_eq!(s.available(), 2);
        assert!(matches!(s.on_grant(u32::MAX), Err(CreditError::Overgrant { .. })));
        assert_eq!(SendCredits::default().window(), DEFAULT_CREDIT_WINDOW);
    }

    #[test]
    fn receiver_batches_grants() {
        let mut r = RecvCredits::new(8); // threshold 2
        for _ in 0..8 {
            r.on_receive().unwrap();
        }
        assert_eq!(r.on_receive(), Err(CreditError::Overrun { window: 8 }));
        r.release(1).unwrap();
        assert_eq!(r.take_grant(), None);
        r.release(1).unwrap();
        assert_eq!(r.take_grant(), Some(2));
        assert_eq!(r.outstanding(), 2);
        r.release(1).unwrap();
        assert_eq!(r.flush_grant(), Some(1));
        assert_eq!(r.flush_grant(), None);
        assert_eq!(r.release(10), Err(CreditError::OverRelease { held: 5, released: 10 }));
    }

    #[test]
    fn threshold_clamped() {
        let mut r = RecvCredits::with_threshold(4, 0);
        r.on_receive().unwrap();
        r.release(1).unwrap();
        assert_eq!(r.take_grant(), Some(1));
        let r = RecvCredits::new(1);
        assert_eq!(r.threshold, 1);
    }

    /// Sender and receiver driven together with a slow consumer: the
    /// sender never exceeds the window, the receiver never overruns, and
    /// the invariant holds at every step.
    #[test]
    fn sender_and_receiver_conserve_the_window() {
        let window = DEFAULT_CREDIT_WINDOW;
        let mut s = SendCredits::new(window);
        let mut r = RecvCredits::new(window);
        let mut wire: std::collections::VecDeque<u32> = Default::default(); // 0 = batch, n = grant
        let mut in_flight_batches = 0u32;
        let mut in_flight_grants = 0u32;
        let mut sent = 0u32;
        let mut consumed = 0u32;
        let mut x = 12345u64;
        for step in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 4 {
                0 | 1 => {
                    if s.try_consume() {
                        wire.push_back(0);
                        in_flight_batches += 1;
                        sent += 1;
                    }
                }
                2 => {
                    if let Some(m) = wire.pop_front() {
                        if m == 0 {
                            in_flight_batches -= 1;
                            r.on_receive().unwrap();
                        } else {
                            in_flight_grants -= m;
                            s.on_grant(m).unwrap();
                        }
                    }
                }
                _ => {
                    // Slow consumer: frees one buffer every other time.
                    if step % 2 == 0 && r.held() > 0 {
                        r.release(1).unwrap();
                        consumed += 1;
                    }
                    if let Some(g) = r.take_grant() {
                        wire.push_back(g);
                        in_flight_grants += g;
                    }
                }
            }
            assert_eq!(s.available() + in_flight_batches + r.held() + r.pending() + in_flight_grants, window);
            assert!(s.in_flight() <= window);
        }
        assert!(sent > 100 && consumed > 100, "sent {sent} consumed {consumed}");
    }
}
