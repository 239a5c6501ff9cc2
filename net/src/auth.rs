//! Cluster authentication, sans IO: the shared secret ([`ClusterSecret`]),
//! the nonces and the proofs of the handshake's challenge-response
//! (docs/ARCHITECTURE.md, decision 46).
//!
//! With a secret configured, a handshake is three messages instead of two:
//!
//! ```text
//! connector -> acceptor   Hello { name, cluster, window, nonce Nc }
//! acceptor  -> connector  Hello { name', cluster, window', nonce Na, proof A }
//! connector -> acceptor   Auth  { proof C }
//!
//! proof R = HMAC-SHA256(secret, "spate-auth-1" | R | cluster u64 LE | Nc | Na | len u8 | name)
//!           R = b'A' (acceptor) or b'C' (connector); name = the connector's hello name
//! ```
//!
//! Each side proves it holds the secret over a nonce the *other* side just
//! drew, so the secret never crosses the wire, a recorded transcript
//! replayed later fails (the other side's nonce is new), and the role byte
//! stops a proof from being reflected back to its sender. The connector's
//! hello name — which says what the connection is for (`ctl:<node>`,
//! `<from>><to>@<epoch>`, `bak:w<W>@<epoch>`, `fetch:w<W>`) — is inside
//! the proof, so it cannot be swapped under a valid one. Proofs are
//! compared in constant time (`hmac`'s `verify_slice`).
//!
//! *Not* provided: confidentiality or integrity of what follows the
//! handshake. Frames are crc-checked, not MACed, and nothing is encrypted;
//! an attacker on the path who can inject into an authenticated TCP
//! stream is outside this model (README, *Threat model*).

use std::fmt;
use std::sync::{Arc, OnceLock};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 16;

/// Bytes of a proof (an HMAC-SHA256 tag).
pub const PROOF_BYTES: usize = 32;

/// Fewest bytes of a secret (a 128-bit key written as text is longer).
pub const SECRET_BYTES_MIN: usize = 16;

/// Most bytes of a secret file or variable that are read.
pub const SECRET_BYTES_MAX: usize = 4096;

/// The environment variable a node reads its secret from when the config
/// names no `secret_file`.
pub const SECRET_ENV: &str = "SPATE_CLUSTER_SECRET";

/// Domain separation: this protocol's proofs are never valid elsewhere.
const LABEL: &[u8] = b"spate-auth-1";

/// A handshake nonce.
pub type Nonce = [u8; NONCE_BYTES];

/// A proof of the secret.
pub type Proof = [u8; PROOF_BYTES];

/// Which side of a handshake proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that accepted the TCP connection.
    Acceptor,
    /// The side that connected.
    Connector,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Acceptor => b'A',
            Role::Connector => b'C',
        }
    }
}

/// The cluster's shared secret. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Arc<[u8]>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret({} bytes)", self.0.len())
    }
}

/// Why a secret is not usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretError {
    /// Fewer than [`SECRET_BYTES_MIN`] bytes (after trimming whitespace).
    TooShort {
        /// Bytes present.
        bytes: usize,
    },
    /// More than [`SECRET_BYTES_MAX`] bytes.
    TooLong {
        /// Bytes present.
        bytes: usize,
    },
    /// The operating system gave no random bytes.
    NoRandom(String),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::TooShort { bytes } => {
                write!(f, "cluster secret of {bytes} bytes is shorter than {SECRET_BYTES_MIN}")
            }
            SecretError::TooLong { bytes } => {
                write!(f, "cluster secret of {bytes} bytes is longer than {SECRET_BYTES_MAX}")
            }
            SecretError::NoRandom(e) => write!(f, "no random bytes from the operating system: {e}"),
        }
    }
}

impl std::error::Error for SecretError {}

impl ClusterSecret {
    /// A secret from the bytes of a file or variable, surrounding
    /// whitespace (a trailing newline) trimmed.
    pub fn from_bytes(bytes: &[u8]) -> Result<ClusterSecret, SecretError> {
        if bytes.len() > SECRET_BYTES_MAX {
            return Err(SecretError::TooLong { bytes: bytes.len() });
        }
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
        let key = &bytes[start..end];
        if key.len() < SECRET_BYTES_MIN {
            return Err(SecretError::TooShort { bytes: key.len() });
        }
        Ok(ClusterSecret(key.into()))
    }

    /// A fresh random secret (32 random bytes as 64 hex digits), for
    /// `spate cluster` to hand to the nodes it starts.
    pub fn generate() -> Result<(ClusterSecret, String), SecretError> {
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw).map_err(|e| SecretError::NoRandom(e.to_string()))?;
        let text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let secret = ClusterSecret::from_bytes(text.as_bytes())?;
        Ok((secret, text))
    }

    /// The proof of `role` for a handshake of the connector's hello name
    /// `name` in cluster `cluster` with nonces `nc` (connector's) and `na`
    /// (acceptor's).
    pub fn prove(&self, role: Role, cluster: u64, nc: &Nonce, na: &Nonce, name: &str) -> Proof {
        let mut out = [0u8; PROOF_BYTES];
        out.copy_from_slice(&self.mac(role, cluster, nc, na, name).finalize().into_bytes());
        out
    }

    /// Whether `proof` is `role`'s proof for this handshake (constant
    /// time in the proof's bytes).
    pub fn verify(&self, role: Role, cluster: u64, nc: &Nonce, na: &Nonce, name: &str, proof: &[u8]) -> bool {
        self.mac(role, cluster, nc, na, name).verify_slice(proof).is_ok()
    }

    fn mac(&self, role: Role, cluster: u64, nc: &Nonce, na: &Nonce, name: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut m = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts every key length"),
        };
        m.update(LABEL);
        m.update(&[role.byte()]);
        m.update(&cluster.to_le_bytes());
        m.update(nc);
        m.update(na);
        let name = name.as_bytes();
        m.update(&[name.len().min(255) as u8]);
        m.update(name);
        m
    }
}

/// A fresh nonce from the operating system's generator.
pub fn nonce() -> Result<Nonce, SecretError> {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut n).map_err(|e| SecretError::NoRandom(e.to_string()))?;
    Ok(n)
}

static PROCESS_SECRET: OnceLock<Option<ClusterSecret>> = OnceLock::new();

/// Sets the secret of this process's node, once, before its first
/// connection: every [`NetConfig::new`](crate::conn::NetConfig::new) made
/// afterwards carries it. A node process is one cluster member with one
/// identity, as it has one incarnation; a later call is ignored and
/// returns `false`.
pub fn install(secret: Option<ClusterSecret>) -> bool {
    PROCESS_SECRET.set(secret).is_ok()
}

/// The secret [`install`] set, if any.
pub fn installed() -> Option<ClusterSecret> {
    PROCESS_SECRET.get().cloned().flatten()
}

/// Why a handshake was not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// This side has a secret and the peer offered no challenge-response.
    PeerOfferedNone,
    /// The peer's proof does not match: it holds another secret (or
    /// replays an old transcript).
    BadProof,
    /// The peer asks for authentication and this side has no secret.
    NoSecretHere,
    /// The proof message is malformed (its length).
    MalformedProof {
        /// Bytes present.
        bytes: usize,
    },
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthFailure::PeerOfferedNone => {
                write!(f, "peer did not authenticate (it has no cluster secret configured)")
            }
            AuthFailure::BadProof => write!(f, "peer's proof of the cluster secret is wrong"),
            AuthFailure::NoSecretHere => {
                write!(f, "peer requires a cluster secret and this node has none configured")
            }
            AuthFailure::MalformedProof { bytes } => {
                write!(f, "peer's proof is {bytes} bytes, expected {PROOF_BYTES}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn proofs_bind_role_nonces_name_cluster_and_secret() {
        let k = secret("0123456789abcdef0123");
        let (nc, na) = ([1u8; NONCE_BYTES], [2u8; NONCE_BYTES]);
        let p = k.prove(Role::Connector, 7, &nc, &na, "bak:w0@3");
        assert!(k.verify(Role::Connector, 7, &nc, &na, "bak:w0@3", &p));
        assert!(!k.verify(Role::Acceptor, 7, &nc, &na, "bak:w0@3", &p), "reflected");
        assert!(!k.verify(Role::Connector, 8, &nc, &na, "bak:w0@3", &p), "other cluster");
        assert!(!k.verify(Role::Connector, 7, &na, &na, "bak:w0@3", &p), "other nonce");
        assert!(!k.verify(Role::Connector, 7, &nc, &nc, "bak:w0@3", &p), "other nonce");
        assert!(!k.verify(Role::Connector, 7, &nc, &na, "bak:w0@99", &p), "other name");
        assert!(!secret("0123456789abcdef0124").verify(Role::Connector, 7, &nc, &na, "bak:w0@3", &p));
        assert!(!k.verify(Role::Connector, 7, &nc, &na, "bak:w0@3", &p[..31]));
    }

    #[test]
    fn secrets_are_trimmed_and_bounded() {
        assert_eq!(secret("  0123456789abcdef\n"), secret("0123456789abcdef"));
        assert_eq!(ClusterSecret::from_bytes(b"short\n"), Err(SecretError::TooShort { bytes: 5 }));
        assert_eq!(ClusterSecret::from_bytes(b" \n"), Err(SecretError::TooShort { bytes: 0 }));
        let long = vec![b'x'; SECRET_BYTES_MAX + 1];
        assert_eq!(ClusterSecret::from_bytes(&long), Err(SecretError::TooLong { bytes: long.len() }));
        let (a, text) = ClusterSecret::generate().unwrap();
        assert_eq!(text.len(), 64);
        assert_eq!(a, secret(&text));
        assert_ne!(a, ClusterSecret::generate().unwrap().0);
        assert!(!format!("{a:?}").contains(&text[..8]));
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
