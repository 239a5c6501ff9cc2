//! The hello exchange, shared by both sides: a [`Handshake`] sends our
//! hello (or a goodbye) and reads the peer's, under a deadline; with a
//! cluster secret, it also carries the challenge-response of
//! [`crate::auth`] (the acceptor's challenge in its hello, the
//! connector's proof in the frame after).

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Instant;

use super::write::OutBuf;
use crate::auth::{AuthFailure, Nonce, PROOF_BYTES};
use crate::error::{HandshakeStage, NetErrorKind};
use crate::frame::{encode_control, Frame, FrameDecoder, FrameError, Kind, FRAME_OVERHEAD, LEN_BYTES};
use crate::hello::{GoodbyeReason, Hello};
use crate::limits::HELLO_FRAME_BYTES_MAX;

/// Sets the options every connection socket gets.
pub(super) fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)
}

/// A fresh nonce, or the I/O error of a system without randomness.
pub(super) fn fresh_nonce() -> Result<Nonce, NetErrorKind> {
    crate::auth::nonce().map_err(|e| NetErrorKind::Io(io::Error::other(e.to_string())))
}

/// One side of a handshake in progress: our hello (or goodbye) going out,
/// the peer's hello (and, on the accepting side with a secret, its proof)
/// coming in.
#[derive(Debug)]
pub(super) struct Handshake {
    pub(super) stream: TcpStream,
    pub(super) addr: SocketAddr,
    pub(super) out: OutBuf,
    pub(super) decoder: FrameDecoder,
    started: Instant,
    deadline: Instant,
    /// The nonce this side drew, once it sent it.
    pub(super) nonce: Option<Nonce>,
    /// Accepting side: the peer's hello was read and answered with a
    /// challenge; its proof is awaited (its hello, its nonce, ours).
    pub(super) awaiting_proof: Option<Box<(Hello, Nonce, Nonce)>>,
}

impl Handshake {
    pub(super) fn new(stream: TcpStream, addr: SocketAddr, started: Instant, deadline: Instant) -> Self {
        Handshake {
            stream,
            addr,
            out: OutBuf::default(),
            decoder: FrameDecoder::new(),
            started,
            deadline,
            nonce: None,
            awaiting_proof: None,
        }
    }

    pub(super) fn queue_hello(&mut self, hello: &Hello) {
        let mut payload = Vec::with_capacity(
            crate::hello::HELLO_FIXED_BYTES + hello.node.len() + crate::hello::HELLO_AUTH_BYTES_MAX,
        );
        hello.encode(&mut payload);
        let out = self.out.prepare(FRAME_OVERHEAD + payload.len());
        // A hello is far below the frame limit (HELLO_FRAME_BYTES_MAX).
        let _ = encode_control(Kind::Hello, 0, 0, &payload, out);
    }

    /// Queues the connector's proof.
    pub(super) fn queue_proof(&mut self, proof: &[u8; PROOF_BYTES]) {
        let out = self.out.prepare(FRAME_OVERHEAD + PROOF_BYTES);
        let _ = encode_control(Kind::Auth, 0, 0, proof, out);
    }

    /// Best effort: tells the peer why it is refused, then closes.
    pub(super) fn goodbye(mut self, reason: GoodbyeReason) {
        let out = self.out.prepare(FRAME_OVERHEAD + 1);
        let _ = encode_control(Kind::Goodbye, 0, 0, &[reason.code()], out);
        let _ = self.out.write_to(&mut self.stream);
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    pub(super) fn flush(&mut self) -> Result<(), NetErrorKind> {
        self.out.write_to(&mut self.stream).map(|_| ()).map_err(NetErrorKind::Io)
    }

    /// Reads what has arrived; the next frame once it is complete (at
    /// most a hello's size: nothing larger is read during a handshake).
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, NetErrorKind> {
        let max = LEN_BYTES + HELLO_FRAME_BYTES_MAX as usize;
        while self.decoder.needed() > 0 {
            let announced = self.decoder.buffered() + self.decoder.needed();
            if announced > max {
                return Err(NetErrorKind::OversizedHello { len: announced, max });
            }
            let buf = self.decoder.read_buf(max);
            match self.stream.read(buf) {
                Ok(0) => {
                    return Err(match self.decoder.finish() {
                        Ok(()) => NetErrorKind::PeerClosed,
                        Err(e) => NetErrorKind::Frame(e),
                    })
                }
                Ok(n) => self.decoder.commit(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NetErrorKind::Io(e)),
            }
        }
        match self.decoder.next_frame() {
            Ok(f) => Ok(f),
            Err(FrameError::TooLarge { len, .. }) => {
                Err(NetErrorKind::OversizedHello { len: (len as usize).saturating_add(LEN_BYTES), max })
            }
            Err(e) => Err(NetErrorKind::Frame(e)),
        }
    }

    /// The peer's hello once it is complete.
    pub(super) fn read_hello(&mut self) -> Result<Option<Hello>, NetErrorKind> {
        match self.next_frame()? {
            None => Ok(None),
            Some(f) => match f.header.kind {
                Kind::Hello => Hello::decode(f.payload).map(Some).map_err(NetErrorKind::BadHello),
                Kind::Goodbye => Err(NetErrorKind::RejectedByPeer(GoodbyeReason::decode(f.payload))),
                k => Err(NetErrorKind::NotHello(k)),
            },
        }
    }

    /// The connector's proof once it is complete.
    pub(super) fn read_proof(&mut self) -> Result<Option<[u8; PROOF_BYTES]>, NetErrorKind> {
        match self.next_frame()? {
            None => Ok(None),
            Some(f) => match f.header.kind {
                Kind::Auth if f.payload.len() == PROOF_BYTES => {
                    let mut p = [0u8; PROOF_BYTES];
                    p.copy_from_slice(f.payload);
                    Ok(Some(p))
                }
                Kind::Auth => {
                    Err(NetErrorKind::Unauthenticated(AuthFailure::MalformedProof { bytes: f.payload.len() }))
                }
                Kind::Goodbye => Err(NetErrorKind::RejectedByPeer(GoodbyeReason::decode(f.payload))),
                k => Err(NetErrorKind::UnexpectedFrame(k)),
            },
        }
    }

    pub(super) fn timeout(&self, now: Instant) -> Option<NetErrorKind> {
        if now < self.deadline {
            return None;
        }
        let stage = if self.out.unsent() > 0 {
            HandshakeStage::SendingHello
        } else if self.awaiting_proof.is_some() {
            HandshakeStage::AwaitingProof
        } else {
            HandshakeStage::AwaitingHello
        };
        Some(NetErrorKind::HandshakeTimeout { waited: now - self.started, stage })
    }

    /// When the handshake was accepted (or started).
    pub(super) fn started(&self) -> Instant {
        self.started
    }
}
