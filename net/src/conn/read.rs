//! The read path: [`Connection::poll_recv`] hands received frames out,
//! counting data frames against the channel's credit and taking in credit
//! grants and heartbeats itself, and the end of the stream is reported
//! once no complete frame is left.

use super::{Connection, Delivery};
use crate::credit::{RecvCredits, SendCredits};
use crate::error::{NetError, NetErrorKind};
use crate::frame::{Frame, Kind};

impl Connection {
    /// After the peer closed: once no complete frame is left, the end of
    /// the stream is the error (a partial frame makes it a truncation).
    pub(super) fn check_end(&mut self) -> Result<(), NetError> {
        if self.eof && self.decoder.error().is_none() && self.decoder.needed() > 0 {
            let kind = match self.decoder.finish() {
                Ok(()) => NetErrorKind::PeerClosed,
                Err(e) => NetErrorKind::Frame(e),
            };
            return Err(self.fail(kind));
        }
        Ok(())
    }

    /// Hands out up to `budget` received frames (data and control) to
    /// `on_frame`, in order, each borrowing the read buffer; returns how
    /// many. Credit and heartbeat frames are processed here and not handed
    /// out. For each data frame `on_frame` says whether its buffer is free
    /// ([`Delivery::Consumed`]: the credit goes back) or held
    /// ([`Delivery::Held`]: call [`release`](Self::release) later).
    /// Decodes only what [`poll_io`](Self::poll_io) has read; never blocks.
    /// A corrupt, truncated, oversized or malformed frame, or a peer
    /// breaking the credit protocol, closes the connection with an error,
    /// after the frames before it were handed out.
    pub fn poll_recv<F>(&mut self, budget: usize, mut on_frame: F) -> Result<usize, NetError>
    where
        F: FnMut(Frame<'_>) -> Delivery,
    {
        self.check_open()?;
        let mut delivered = 0;
        while delivered < budget {
            let frame = match self.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let kind = NetErrorKind::Frame(e);
                    return Err(self.fail(kind));
                }
            };
            let channel = frame.header.channel;
            match frame.header.kind {
                Kind::Data => {
                    let full = self.recv.len() >= self.channels_max;
                    let credits = match self.recv.get_mut(&channel) {
                        Some(c) => c,
                        None if full => {
                            let max = self.channels_max;
                            return Err(self.fail(NetErrorKind::TooManyChannels { max }));
                        }
                        None => self.recv.entry(channel).or_insert_with(|| {
                            RecvCredits::with_threshold(self.credit_window, self.grant_threshold)
                        }),
                    };
                    if let Err(error) = credits.on_receive() {
                        return Err(self.fail(NetErrorKind::Credit { channel, error }));
                    }
                    delivered += 1;
                    if on_frame(frame) == Delivery::Consumed {
                        // Cannot fail: on_receive just counted the frame as held.
                        let _ = credits.release(1);
                        if let Some(g) = credits.take_grant() {
                            self.out.push_credit(channel, g);
                        }
                    }
                }
                Kind::Credit => {
                    // The decoder has checked the payload size of credit frames.
                    let granted = match frame.credit_grant() {
                        Some(Ok(g)) => g,
                        Some(Err(e)) => return Err(self.fail(NetErrorKind::Frame(e))),
                        None => return Err(self.fail(NetErrorKind::UnexpectedFrame(Kind::Credit))),
                    };
                    let result = match self.send.get_mut(&channel) {
                        Some(c) => c.on_grant(granted),
                        // Nothing was ever sent on this channel: its window is full.
                        None => SendCredits::new(self.peer.credit_window).on_grant(granted),
                    };
                    if let Err(error) = result {
                        return Err(self.fail(NetErrorKind::Credit { channel, error }));
                    }
                }
                Kind::Heartbeat => {}
                k @ (Kind::Hello | Kind::Auth) => return Err(self.fail(NetErrorKind::UnexpectedFrame(k))),
                _ => {
                    delivered += 1;
                    let _ = on_frame(frame);
                }
            }
        }
        if delivered < budget {
            self.check_end()?;
        }
        Ok(delivered)
    }
}
