//! The handshake's messages, sans IO: the payload of a
//! [`Kind::Hello`](crate::frame::Kind::Hello) frame and of a
//! [`Kind::Goodbye`](crate::frame::Kind::Goodbye) frame.
//!
//! ```text
//! Hello   = | cluster: u64 LE | credit_window: u32 LE | name_len: u8 | name: UTF-8 | auth |
//! auth    = nothing                  (no cluster secret)
//!         | nonce: 16 bytes          (a connector's hello, with a secret)
//!         | nonce: 16 | proof: 32    (an acceptor's hello: its challenge and proof)
//! Goodbye = | reason: u8 |
//! ```
//!
//! The challenge-response is [`crate::auth`]'s; the connector's proof goes
//! in the [`Kind::Auth`](crate::frame::Kind::Auth) frame after the
//! acceptor's hello.
//!
//! Both ends of a new connection send one `Hello` (the connecting side
//! first; the accepting side answers once it has checked the caller's) with
//! the node's name, the cluster (job) id both must share, and the credit
//! window the sender of the hello grants per channel: the peer's senders
//! start with that many credits, so the receiver, which owns the buffers,
//! decides the window. An accepting side that refuses a peer answers with a
//! `Goodbye` naming the reason instead, and closes.

use std::fmt;

use crate::auth::{Nonce, Proof, NONCE_BYTES, PROOF_BYTES};

/// Bytes of a hello payload before the name.
pub const HELLO_FIXED_BYTES: usize = 8 + 4 + 1;

/// Longest node name in a `Hello` frame, in bytes of UTF-8.
pub const NODE_NAME_BYTES_MAX: usize = 255;

/// Most bytes of a hello's `auth` field.
pub const HELLO_AUTH_BYTES_MAX: usize = NONCE_BYTES + PROOF_BYTES;

/// The authentication a hello carries (see [`crate::auth`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloAuth {
    /// None: the sender has no cluster secret.
    None,
    /// A connector's nonce.
    Nonce(Nonce),
    /// An acceptor's nonce and its proof over both nonces.
    Challenge {
        /// The acceptor's nonce.
        nonce: Nonce,
        /// The acceptor's proof.
        proof: Proof,
    },
}

/// A node's introduction, the first frame on a connection in each
/// direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sending node's name (1 to [`NODE_NAME_BYTES_MAX`] bytes).
    pub node: String,
    /// The cluster (job) id; both ends must agree.
    pub cluster: u64,
    /// Credits per channel the sender of the hello grants its peer: the
    /// batches it buffers per channel.
    pub credit_window: u32,
    /// Its challenge-response part.
    pub auth: HelloAuth,
}

/// Why a hello payload is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloError {
    /// Shorter than the fixed fields.
    Short {
        /// Payload bytes present.
        payload: usize,
    },
    /// The name length is zero or longer than the payload.
    NameLength {
        /// The name length field.
        name_len: usize,
        /// Bytes present after the fixed fields.
        present: usize,
    },
    /// The name is not UTF-8.
    NameNotUtf8,
    /// A window of zero credits: the peer could never send.
    ZeroWindow,
    /// The bytes after the name are none of the `auth` forms.
    AuthLength {
        /// Bytes present after the name.
        bytes: usize,
    },
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloError::Short { payload } => {
                write!(f, "hello of {payload} bytes is shorter than its {HELLO_FIXED_BYTES} fixed bytes")
            }
            HelloError::NameLength { name_len, present } => {
                write!(f, "hello names a node of {name_len} bytes but carries {present}")
            }
            HelloError::NameNotUtf8 => write!(f, "hello's node name is not UTF-8"),
            HelloError::ZeroWindow => write!(f, "hello grants a credit window of 0"),
            HelloError::AuthLength { bytes } => write!(
                f,
                "hello carries {bytes} bytes of authentication, expected 0, {NONCE_BYTES} or {}",
                NONCE_BYTES + PROOF_BYTES
            ),
        }
    }
}

impl std::error::Error for HelloError {}

impl Hello {
    /// Appends the payload to `out`. Panics if the name is empty or longer
    /// than [`NODE_NAME_BYTES_MAX`] (callers validate names first, see
    /// [`NetConfig::validate`](crate::conn::NetConfig::validate)).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let name = self.node.as_bytes();
        assert!(
            !name.is_empty() && name.len() <= NODE_NAME_BYTES_MAX,
            "node name must be 1 to {NODE_NAME_BYTES_MAX} bytes"
        );
        out.extend_from_slice(&self.cluster.to_le_bytes());
        out.extend_from_slice(&self.credit_window.to_le_bytes());
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        match &self.auth {
            HelloAuth::None => {}
            HelloAuth::Nonce(n) => out.extend_from_slice(n),
            HelloAuth::Challenge { nonce, proof } => {
                out.extend_from_slice(nonce);
                out.extend_from_slice(proof);
            }
        }
    }

    /// Parses a payload written by [`encode`](Self::encode).
    pub fn decode(payload: &[u8]) -> Result<Hello, HelloError> {
        if payload.len() < HELLO_FIXED_BYTES {
            return Err(HelloError::Short { payload: payload.len() });
        }
        let mut cluster = [0u8; 8];
        cluster.copy_from_slice(&payload[0..8]);
        let mut window = [0u8; 4];
        window.copy_from_slice(&payload[8..12]);
        let name_len = usize::from(payload[12]);
        let rest = &payload[HELLO_FIXED_BYTES..];
        if name_len == 0 || rest.len() < name_len {
            return Err(HelloError::NameLength { name_len, present: rest.len() });
        }
        let (name, auth) = rest.split_at(name_len);
        let auth = match auth.len() {
            0 => HelloAuth::None,
            NONCE_BYTES => HelloAuth::Nonce(to_array(auth)),
            n if n == NONCE_BYTES + PROOF_BYTES => {
                let (nonce, proof) = auth.split_at(NONCE_BYTES);
                HelloAuth::Challenge { nonce: to_array(nonce), proof: to_array(proof) }
            }
            bytes => return Err(HelloError::AuthLength { bytes }),
        };
        let credit_window = u32::from_le_bytes(window);
        if credit_window == 0 {
            return Err(HelloError::ZeroWindow);
        }
        let node = std::str::from_utf8(name).map_err(|_| HelloError::NameNotUtf8)?.to_owned();
        Ok(Hello { node, cluster: u64::from_le_bytes(cluster), credit_window, auth })
    }
}

/// The array of a slice of exactly its length (the caller checked it).
fn to_array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    a
}

/// Why an accepting node refuses a peer (the answer of a listener's admit
/// callback, see [`Listener::poll_accept_with`](crate::conn::Listener::poll_accept_with)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The name is not a node of this deployment.
    UnknownNode,
    /// A node of that name is already connected.
    DuplicateNode,
    /// The peer did not prove the cluster secret.
    Unauthenticated,
    /// This node has more handshakes pending than it serves (or more from
    /// the peer's address): the oldest was dropped.
    Busy,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::UnknownNode => write!(f, "unknown node name"),
            Rejection::DuplicateNode => write!(f, "duplicate node name (already connected)"),
            Rejection::Unauthenticated => write!(f, "not authenticated (no or wrong cluster secret)"),
            Rejection::Busy => write!(f, "too many pending handshakes"),
        }
    }
}

/// Why a node closes a connection: the payload of a goodbye frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoodbyeReason {
    /// An orderly close.
    Orderly,
    /// The handshake was refused.
    Rejected(Rejection),
    /// The peer belongs to another cluster (job).
    WrongCluster,
    /// A reason code this build does not know.
    Other(u8),
}

impl GoodbyeReason {
    /// The payload byte.
    pub fn code(self) -> u8 {
        match self {
            GoodbyeReason::Orderly => 0,
            GoodbyeReason::Rejected(Rejection::UnknownNode) => 1,
            GoodbyeReason::Rejected(Rejection::DuplicateNode) => 2,
            GoodbyeReason::WrongCluster => 3,
            GoodbyeReason::Rejected(Rejection::Unauthenticated) => 4,
            GoodbyeReason::Rejected(Rejection::Busy) => 5,
            GoodbyeReason::Other(c) => c,
        }
    }

    /// The reason of a goodbye payload (an empty payload is an orderly
    /// close; bytes after the first are ignored).
    pub fn decode(payload: &[u8]) -> GoodbyeReason {
        match payload.first() {
            None | Some(0) => GoodbyeReason::Orderly,
            Some(1) => GoodbyeReason::Rejected(Rejection::UnknownNode),
            Some(2) => GoodbyeReason::Rejected(Rejection::DuplicateNode),
            Some(3) => GoodbyeReason::WrongCluster,
            Some(4) => GoodbyeReason::Rejected(Rejection::Unauthenticated),
            Some(5) => GoodbyeReason::Rejected(Rejection::Busy),
            Some(&c) => GoodbyeReason::Other(c),
        }
    }
}

impl fmt::Display for GoodbyeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GoodbyeReason::Orderly => write!(f, "orderly close"),
            GoodbyeReason::Rejected(r) => write!(f, "{r}"),
            GoodbyeReason::WrongCluster => write!(f, "wrong cluster id"),
            GoodbyeReason::Other(c) => write!(f, "reason code {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip() {
        let h = Hello {
            node: "node-b".into(),
            cluster: 0xdead_beef_0042,
            credit_window: 64,
            auth: HelloAuth::None,
        };
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), HELLO_FIXED_BYTES + 6);
        assert_eq!(Hello::decode(&out), Ok(h.clone()));
        for auth in [
            HelloAuth::Nonce([7; NONCE_BYTES]),
            HelloAuth::Challenge { nonce: [1; NONCE_BYTES], proof: [2; PROOF_BYTES] },
        ] {
            let h = Hello { auth, ..h.clone() };
            let mut out = Vec::new();
            h.encode(&mut out);
            assert_eq!(Hello::decode(&out), Ok(h));
        }
    }

    #[test]
    fn hello_rejects_malformed() {
        let h = Hello { node: "n".into(), cluster: 1, credit_window: 1, auth: HelloAuth::None };
        let mut ok = Vec::new();
        h.encode(&mut ok);
        assert_eq!(Hello::decode(&ok[..5]), Err(HelloError::Short { payload: 5 }));
        let mut long = ok.clone();
        long.push(b'x');
        assert_eq!(Hello::decode(&long), Err(HelloError::AuthLength { bytes: 1 }));
        let mut short = ok.clone();
        short[12] = 2;
        assert_eq!(Hello::decode(&short), Err(HelloError::NameLength { name_len: 2, present: 1 }));
        let mut empty = ok.clone();
        empty[12] = 0;
        empty.pop();
        assert_eq!(Hello::decode(&empty), Err(HelloError::NameLength { name_len: 0, present: 0 }));
        let mut zero = ok.clone();
        zero[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Hello::decode(&zero), Err(HelloError::ZeroWindow));
        let mut bad = ok.clone();
        bad[13] = 0xff;
        assert_eq!(Hello::decode(&bad), Err(HelloError::NameNotUtf8));
        // Arbitrary bytes never panic.
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let _ = Hello::decode(&bytes);
        }
    }

    #[test]
    fn goodbye_codes_round_trip() {
        for r in [
            GoodbyeReason::Orderly,
            GoodbyeReason::Rejected(Rejection::UnknownNode),
            GoodbyeReason::Rejected(Rejection::DuplicateNode),
            GoodbyeReason::WrongCluster,
            GoodbyeReason::Rejected(Rejection::Unauthenticated),
            GoodbyeReason::Rejected(Rejection::Busy),
            GoodbyeReason::Other(200),
        ] {
            assert_eq!(GoodbyeReason::decode(&[r.code()]), r);
        }
        assert_eq!(GoodbyeReason::decode(&[]), GoodbyeReason::Orderly);
    }
}
