//! Where a cluster job's workers run: the nodes in worker order, and which
//! node this process is (and, in a live recovery, which slot it joins as).

use std::net::SocketAddr;
use std::time::Duration;

/// One slot of a cluster job: a range of workers and the node that runs
/// them (a node may run several slots, each as a share of its own: one it
/// took over from a failed node, or a parked slot, decision 63).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name.
    pub name: String,
    /// Where its listener is.
    pub addr: SocketAddr,
    /// Workers it runs.
    pub workers: usize,
}

/// Where a cluster job's workers run, and which node this process is.
#[derive(Clone, Debug)]
pub struct ClusterPlacement {
    /// Every slot, in worker order. A node may appear more than once (it
    /// took over a failed node's workers, or hosts a parked slot): it runs
    /// each entry of its name as a share of its own.
    pub nodes: Vec<NodeSpec>,
    /// The slot this share runs (an index into `nodes`, of this node's
    /// name).
    pub me: usize,
    /// Identifies the job on the wire (connections of other jobs are
    /// refused).
    pub cluster: u64,
    /// How long to wait for every connection.
    pub connect_timeout: Duration,
    /// The deployment's epoch: each recovery deploys the job again under a
    /// new one, and worker links of another epoch are refused (a fenced
    /// node can never join a newer deployment).
    pub epoch: u64,
    /// This process joins a running job (live recovery), see [`Join`].
    pub join: Option<Join>,
}

/// How a process joins a running job as the replacement of failed workers
/// (live recovery, docs/ARCHITECTURE.md decision 25).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// It runs only the workers of `nodes[slot]`.
    pub slot: usize,
    /// Every worker being replaced in this recovery (its own among them).
    /// It connects to every other worker — the survivors run already and
    /// accept it through their node — except to another replacement of a
    /// lower id, which connects to it.
    pub moved: Vec<usize>,
}

impl ClusterPlacement {
    /// Workers over all nodes.
    pub fn total_workers(&self) -> usize {
        self.nodes.iter().map(|n| n.workers).sum()
    }

    /// The global id of node `n`'s first worker.
    pub fn base(&self, n: usize) -> usize {
        self.nodes[..n].iter().map(|n| n.workers).sum()
    }

    /// The node that runs global worker `w`.
    pub fn node_of(&self, w: usize) -> Option<usize> {
        node_running(&self.nodes, w)
    }

    /// This share's workers, as global ids, in order: those of its slot
    /// (`join`'s, when it joins a running job, else `me`'s).
    pub fn local(&self) -> Vec<usize> {
        let slot = self.join.as_ref().map_or(self.me, |j| j.slot);
        let base = self.base(slot.min(self.nodes.len()));
        (base..base + self.nodes.get(slot).map_or(0, |n| n.workers)).collect()
    }

    /// The slots of `nodes` that the node called `name` runs.
    pub fn slots_of(nodes: &[NodeSpec], name: &str) -> Vec<usize> {
        (0..nodes.len()).filter(|&p| nodes[p].name == name).collect()
    }
}

/// The index in `nodes` (in worker order) of the node that runs global
/// worker `w`.
pub(crate) fn node_running(nodes: &[NodeSpec], w: usize) -> Option<usize> {
    let mut base = 0;
    for (i, n) in nodes.iter().enumerate() {
        if w < base + n.workers {
            return Some(i);
        }
        base += n.workers;
    }
    None
}
