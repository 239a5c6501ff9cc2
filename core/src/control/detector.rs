//! Failure detection and fencing of node incarnations.
//!
//! The coordinator's [`FailureDetector`] hears from nodes: heartbeats, and
//! any other message, mark the sender alive
//! ([`heard_from`](FailureDetector::heard_from)). A node silent for longer
//! than `failure_timeout_ms` is declared failed at the next
//! [`tick`](FailureDetector::tick); a lost connection may declare it at once
//! ([`connection_lost`](FailureDetector::connection_lost)), if so configured.
//! Declarations come out as [`Declared`] values for the recovery planner.
//!
//! **Fencing.** Every process life of a node is an [`Incarnation`]; a
//! restart registers a greater one. Once an incarnation is declared failed,
//! it stays fenced: [`admit`](FailureDetector::admit) refuses every message
//! from it with [`Fenced`], whether the node really died or was only slow
//! (a false suspicion). A node that comes back must register as a new
//! incarnation, with empty state, so it can never double-write what its
//! replacement now owns. Receivers on other nodes keep a [`FenceSet`] fed by
//! the coordinator's fence notices, and refuse fenced senders the same way.
//!
//! A slow node is indistinguishable from a dead one; the timeout trades
//! detection latency against false suspicions, and fencing makes a false
//! suspicion cost only a needless recovery, never a wrong result.
//!
//! ```
//! use spate_core::control::detector::*;
//!
//! let mut fd = FailureDetector::new(DetectorConfig {
//!     failure_timeout_ms: 100,
//!     declare_on_connection_loss: false,
//! });
//! let (n, i1) = (NodeId(3), Incarnation(1));
//! fd.register(n, i1, 0).unwrap();
//! fd.heard_from(n, i1, 50).unwrap();
//! assert!(fd.tick(150).is_empty());
//! let declared = fd.tick(151);
//! assert_eq!(declared[0].node, n);
//! assert!(fd.admit(n, i1).is_err()); // fenced for good
//! fd.register(n, Incarnation(2), 200).unwrap(); // a restart is welcome
//! ```

use std::collections::BTreeMap;
use std::fmt;

/// A node: one process of the cluster, addressed independently of restarts
/// (its index among the config's nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// One life of a node's process. A restart is a new, greater incarnation;
/// once an incarnation is declared failed it is fenced for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "incarnation {}", self.0)
    }
}

/// Tunables of a [`FailureDetector`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// A node silent for longer than this is declared failed.
    pub failure_timeout_ms: u64,
    /// Whether a lost connection to a node declares it failed immediately,
    /// instead of waiting for the timeout.
    pub declare_on_connection_loss: bool,
}

/// Why a node incarnation was declared failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// Nothing heard for `silent_ms`.
    Timeout {
        /// How long it had been silent.
        silent_ms: u64,
    },
    /// The connection to it was lost.
    ConnectionLost,
    /// The node registered a newer incarnation: the old one is gone.
    Restarted {
        /// The new incarnation.
        new: Incarnation,
    },
    /// Declared by the caller (an operator's command, a failed health check).
    Reported,
}

/// A node incarnation declared failed; it is fenced from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Declared {
    /// The node.
    pub node: NodeId,
    /// The incarnation that failed.
    pub incarnation: Incarnation,
    /// Why.
    pub reason: FailureReason,
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FenceCause {
    /// The incarnation was declared failed.
    DeclaredFailed,
    /// A newer incarnation of the node exists.
    Superseded {
        /// The node's current incarnation.
        current: Incarnation,
    },
    /// The node or this incarnation never registered.
    Unregistered,
}

/// A message from an incarnation that may not act any more (or not yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fenced {
    /// The sender's node.
    pub node: NodeId,
    /// The sender's incarnation.
    pub incarnation: Incarnation,
    /// Why it is refused.
    pub cause: FenceCause,
}

impl fmt::Display for Fenced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cause {
            FenceCause::DeclaredFailed => {
                write!(f, "{} {} was declared failed and is fenced", self.node, self.incarnation)
            }
            FenceCause::Superseded { current } => {
                write!(f, "{} {} is superseded by {current}", self.node, self.incarnation)
            }
            FenceCause::Unregistered => write!(f, "{} {} is not registered", self.node, self.incarnation),
        }
    }
}

impl std::error::Error for Fenced {}

#[derive(Clone, Copy, Debug)]
struct Entry {
    incarnation: Incarnation,
    last_heard_ms: u64,
    alive: bool,
}

/// The coordinator's failure detector and the authority on fencing.
#[derive(Clone, Debug)]
pub struct FailureDetector {
    config: DetectorConfig,
    nodes: BTreeMap<NodeId, Entry>,
}

impl FailureDetector {
    /// A detector that knows no node yet.
    pub fn new(config: DetectorConfig) -> Self {
        Self { config, nodes: BTreeMap::new() }
    }

    /// A node incarnation announces itself. A newer incarnation of a node
    /// whose current one is still alive declares the old one failed
    /// ([`FailureReason::Restarted`]). An older or fenced incarnation is
    /// refused. Registering the current incarnation again is a heartbeat.
    pub fn register(
        &mut self,
        node: NodeId,
        incarnation: Incarnation,
        now_ms: u64,
    ) -> Result<Vec<Declared>, Fenced> {
        let fresh = Entry { incarnation, last_heard_ms: now_ms, alive: true };
        let Some(entry) = self.nodes.get_mut(&node) else {
            self.nodes.insert(node, fresh);
            return Ok(Vec::new());
        };
        if incarnation < entry.incarnation {
            return Err(Fenced {
                node,
                incarnation,
                cause: FenceCause::Superseded { current: entry.incarnation },
            });
        }
        if incarnation == entry.incarnation {
            if !entry.alive {
                return Err(Fenced { node, incarnation, cause: FenceCause::DeclaredFailed });
            }
            entry.last_heard_ms = entry.last_heard_ms.max(now_ms);
            return Ok(Vec::new());
        }
        let mut declared = Vec::new();
        if entry.alive {
            declared.push(Declared {
                node,
                incarnation: entry.incarnation,
                reason: FailureReason::Restarted { new: incarnation },
            });
        }
        *entry = fresh;
        Ok(declared)
    }

    /// Whether a message from `incarnation` of `node` may have any effect.
    pub fn admit(&self, node: NodeId, incarnation: Incarnation) -> Result<(), Fenced> {
        let refuse = |cause| Err(Fenced { node, incarnation, cause });
        match self.nodes.get(&node) {
            None => refuse(FenceCause::Unregistered),
            Some(e) if incarnation < e.incarnation => {
                refuse(FenceCause::Superseded { current: e.incarnation })
            }
            Some(e) if incarnation > e.incarnation => refuse(FenceCause::Unregistered),
            Some(e) if !e.alive => refuse(FenceCause::DeclaredFailed),
            Some(_) => Ok(()),
        }
    }

    /// A message (a heartbeat or any other) arrived from `incarnation` of
    /// `node`: admits it and marks the node alive as of `now_ms`.
    pub fn heard_from(&mut self, node: NodeId, incarnation: Incarnation, now_ms: u64) -> Result<(), Fenced> {
        self.admit(node, incarnation)?;
        if let Some(e) = self.nodes.get_mut(&node) {
            e.last_heard_ms = e.last_heard_ms.max(now_ms);
        }
        Ok(())
    }

    /// The connection to `node` was lost. Declares it failed at once when
    /// `declare_on_connection_loss` is set; otherwise the timeout decides.
    pub fn connection_lost(&mut self, node: NodeId) -> Option<Declared> {
        if !self.config.declare_on_connection_loss {
            return None;
        }
        self.declare_failed(node, FailureReason::ConnectionLost)
    }

    /// Declares `node`'s current incarnation failed (if it is alive).
    pub fn declare_failed(&mut self, node: NodeId, reason: FailureReason) -> Option<Declared> {
        let entry = self.nodes.get_mut(&node)?;
        if !entry.alive {
            return None;
        }
        entry.alive = false;
        Some(Declared { node, incarnation: entry.incarnation, reason })
    }

    /// Declares every node silent for longer than the timeout.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Declared> {
        let timeout = self.config.failure_timeout_ms;
        let mut declared = Vec::new();
        for (&node, entry) in &mut self.nodes {
            let silent_ms = now_ms.saturating_sub(entry.last_heard_ms);
            if entry.alive && silent_ms > timeout {
                entry.alive = false;
                declared.push(Declared {
                    node,
                    incarnation: entry.incarnation,
                    reason: FailureReason::Timeout { silent_ms },
                });
            }
        }
        declared
    }

    /// Whether `node`'s current incarnation is alive.
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|e| e.alive)
    }

    /// `node`'s current (newest registered) incarnation.
    pub fn incarnation(&self, node: NodeId) -> Option<Incarnation> {
        self.nodes.get(&node).map(|e| e.incarnation)
    }

    /// The alive nodes and their incarnations, in node order.
    pub fn alive_nodes(&self) -> impl Iterator<Item = (NodeId, Incarnation)> + '_ {
        self.nodes.iter().filter(|(_, e)| e.alive).map(|(&n, e)| (n, e.incarnation))
    }

    /// The detector's configuration.
    pub fn config(&self) -> DetectorConfig {
        self.config
    }
}

/// A receiver's view of fencing, fed by the coordinator's fence notices:
/// every incarnation of a node up to the newest fenced one is refused.
#[derive(Clone, Debug, Default)]
pub struct FenceSet {
    fenced_upto: BTreeMap<NodeId, Incarnation>,
}

impl FenceSet {
    /// Nothing fenced.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fences `incarnation` of `node` and every older one. Idempotent.
    pub fn fence(&mut self, node: NodeId, incarnation: Incarnation) {
        let e = self.fenced_upto.entry(node).or_insert(incarnation);
        *e = (*e).max(incarnation);
    }

    /// Whether messages from `incarnation` of `node` must be refused.
    pub fn is_fenced(&self, node: NodeId, incarnation: Incarnation) -> bool {
        self.fenced_upto.get(&node).is_some_and(|&f| incarnation <= f)
    }

    /// `Ok` if `incarnation` of `node` is not fenced.
    pub fn admit(&self, node: NodeId, incarnation: Incarnation) -> Result<(), Fenced> {
        if self.is_fenced(node, incarnation) {
            Err(Fenced { node, incarnation, cause: FenceCause::DeclaredFailed })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: NodeId = NodeId(1);
    const I1: Incarnation = Incarnation(1);
    const I2: Incarnation = Incarnation(2);

    fn detector(declare_on_connection_loss: bool) -> FailureDetector {
        FailureDetector::new(DetectorConfig { failure_timeout_ms: 100, declare_on_connection_loss })
    }

    #[test]
    fn silence_past_the_timeout_declares_and_fences() {
        let mut fd = detector(false);
        fd.register(N, I1, 0).unwrap();
        fd.heard_from(N, I1, 40).unwrap();
        assert!(fd.tick(140).is_empty());
        let d = fd.tick(141);
        assert_eq!(
            d,
            vec![Declared { node: N, incarnation: I1, reason: FailureReason::Timeout { silent_ms: 101 } }]
        );
        assert!(fd.tick(500).is_empty(), "declared once");
        assert!(!fd.is_alive(N));
        let refused = Fenced { node: N, incarnation: I1, cause: FenceCause::DeclaredFailed };
        assert_eq!(fd.admit(N, I1), Err(refused));
        assert_eq!(fd.heard_from(N, I1, 501), Err(refused), "a false suspicion stays fenced");
        assert_eq!(fd.register(N, I1, 502), Err(refused));
    }

    #[test]
    fn a_new_incarnation_supersedes_the_old() {
        let mut fd = detector(false);
        fd.register(N, I1, 0).unwrap();
        let d = fd.register(N, I2, 10).unwrap();
        assert_eq!(
            d,
            vec![Declared { node: N, incarnation: I1, reason: FailureReason::Restarted { new: I2 } }]
        );
        assert_eq!(fd.admit(N, I2), Ok(()));
        assert_eq!(fd.admit(N, I1).map_err(|f| f.cause), Err(FenceCause::Superseded { current: I2 }));
        assert_eq!(fd.admit(N, Incarnation(3)).map_err(|f| f.cause), Err(FenceCause::Unregistered));
        assert_eq!(fd.admit(NodeId(9), I1).map_err(|f| f.cause), Err(FenceCause::Unregistered));
        assert!(fd.register(N, I1, 20).is_err());
        assert_eq!(fd.alive_nodes().collect::<Vec<_>>(), vec![(N, I2)]);
        // A restart after the old one was already declared declares nothing more.
        fd.declare_failed(N, FailureReason::Reported).unwrap();
        assert!(fd.register(N, Incarnation(3), 30).unwrap().is_empty());
    }

    #[test]
    fn connection_loss_declares_only_when_configured() {
        let mut quick = detector(true);
        quick.register(N, I1, 0).unwrap();
        assert_eq!(quick.connection_lost(N).map(|d| d.reason), Some(FailureReason::ConnectionLost));
        assert_eq!(quick.connection_lost(N), None);
        let mut patient = detector(false);
        patient.register(N, I1, 0).unwrap();
        assert_eq!(patient.connection_lost(N), None);
        assert!(patient.is_alive(N));
    }

    #[test]
    fn fence_set_refuses_fenced_and_older_incarnations() {
        let mut f = FenceSet::new();
        assert!(f.admit(N, I1).is_ok());
        f.fence(N, I2);
        f.fence(N, I1);
        assert!(f.is_fenced(N, I1));
        assert!(f.is_fenced(N, I2));
        assert!(!f.is_fenced(N, Incarnation(3)));
        assert!(!f.is_fenced(NodeId(2), I1));
    }
}
