//! Credit accounting on the application's side: releasing held data
//! frames, whose credit goes back to the sender, and flushing grants.

use super::Connection;
use crate::credit::CreditError;
use crate::error::{NetError, NetErrorKind};

impl Connection {
    /// The application freed the buffers of `n` data frames it held
    /// ([`Delivery::Held`]) on `channel`; their credit goes back to the
    /// sender (batched, see [`NetConfig::grant_threshold`]). Releasing more
    /// than is held is refused with [`NetErrorKind::OverRelease`].
    ///
    /// [`Delivery::Held`]: super::Delivery::Held
    /// [`NetConfig::grant_threshold`]: super::NetConfig::grant_threshold
    pub fn release(&mut self, channel: u32, n: u32) -> Result<(), NetError> {
        self.check_open()?;
        let result = match self.recv.get_mut(&channel) {
            Some(c) => c.release(n).map(|()| c.take_grant()),
            None => Err(CreditError::OverRelease { held: 0, released: n }),
        };
        match result {
            Ok(Some(g)) => self.out.push_credit(channel, g),
            Ok(None) => {}
            Err(error) => return Err(self.error(NetErrorKind::OverRelease { channel, error })),
        }
        Ok(())
    }

    /// Grants every released buffer not yet granted, however few (for a
    /// receiver going idle). Returns whether any grant was queued.
    pub fn flush_grants(&mut self) -> Result<bool, NetError> {
        self.check_open()?;
        let mut any = false;
        for (&channel, credits) in self.recv.iter_mut() {
            if let Some(g) = credits.flush_grant() {
                self.out.push_credit(channel, g);
                any = true;
            }
        }
        Ok(any)
    }
}
