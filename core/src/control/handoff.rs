//! A node's part in a cluster's live handoffs ([`NodeHandoffs`]): it
//! publishes the coordinator's steps on its share's
//! [`HandoffBoard`](crate::handoff::HandoffBoard), ships the parcels its
//! workers split off to the nodes of the workers that take them, takes in
//! the parcels that come for its own workers, and tells the coordinator
//! when a step's bins are all merged here (docs/ARCHITECTURE.md,
//! *Handoff*).
//!
//! The protocol is the one of `crate::handoff`, with a node's board in
//! place of the process's: every node publishes the same step, so every
//! sender switches and marks the switch on every channel, links to other
//! nodes included; the worker that gives the bins splits them off once
//! every producer's marker came; the parcel goes to the target node on a
//! connection of its own (`hand:v<version>@<epoch>`,
//! [`crate::replica::send_parcel`]), which rebuilds the store and deposits
//! it on its board, where the target worker merges it and replays what it
//! held.

use std::sync::Arc;
use std::time::Duration;

use spate_state::keyspace::BinRange;
use spate_state::StoreConfig;

use crate::control::env::{Env, ShipRequest};
use crate::control::msg::Msg;
use crate::control::placement::{node_running, NodeSpec};
use crate::handoff::{HandoffBoard, StepInfo};
use crate::replica::{parcel_hello_name, parse_parcel_hello_name};

/// How long a parcel's connection, send and receipt may each take.
const PARCEL_TIMEOUT: Duration = Duration::from_secs(60);

/// A node's handoffs in flight (see the module documentation).
pub(crate) struct NodeHandoffs<E: Env> {
    ships: Vec<(u64, String, E::Ship)>,
    takes: Vec<(u64, E::Take)>,
    /// The last step this node reported merged.
    reported: u64,
    /// Parcels received so far (names their stores' directories).
    received: u64,
}

impl<E: Env> Default for NodeHandoffs<E> {
    fn default() -> Self {
        Self { ships: Vec::new(), takes: Vec::new(), reported: 0, received: 0 }
    }
}

impl<E: Env> NodeHandoffs<E> {
    /// Stages step `info` on `board` (this node's share's; see
    /// [`HandoffBoard::stage_move`]); an error is the reason the share
    /// fails.
    pub(crate) fn stage(
        &mut self,
        board: Option<&Arc<HandoffBoard>>,
        checkpoints: Option<&Arc<crate::checkpoint::CheckpointCoordinator>>,
        info: StepInfo,
    ) -> Result<(), String> {
        let board = board.ok_or("its share cannot move bins (it runs the job's only worker)")?;
        let next = board.stage_move(info).map_err(|e| e.to_string())?;
        // No checkpoint is requested during a step: the next one records
        // the new assignment.
        if let Some(c) = checkpoints {
            c.set_assignment(&next);
        }
        Ok(())
    }

    /// Whether a parcel connection announcing `name` is taken (a step of
    /// this epoch or later).
    pub(crate) fn admit(&self, name: &str, epoch: u64) -> bool {
        parse_parcel_hello_name(name).is_some_and(|(_, e)| e >= epoch)
    }

    /// A parcel connection is up: receive it on the environment's thread.
    pub(crate) fn take(
        &mut self,
        env: &mut E,
        name: &str,
        conn: E::Conn,
        dir: &std::path::Path,
        bins_log2: u8,
    ) {
        let Some((version, _)) = parse_parcel_hello_name(name) else { return };
        self.received += 1;
        let config = StoreConfig::new(dir.join(format!("in-{}", self.received)), bins_log2);
        self.takes.push((version, env.begin_take(conn, config, PARCEL_TIMEOUT)));
    }

    /// Moves parcels along: ships what the `boards` of this node's shares
    /// (each with its workers) hold for other workers — another node's, or
    /// another share's here (decision 63) — deposits what arrived on the
    /// board of the share that runs its target, and queues in `out` the
    /// step merged here or the failure of a parcel.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn poll(
        &mut self,
        env: &mut E,
        boards: &[(Arc<HandoffBoard>, Vec<usize>)],
        nodes: &[NodeSpec],
        cluster: u64,
        epoch: u64,
        node: &str,
        quiet: bool,
        out: &mut Vec<Msg>,
    ) {
        for (board, _) in boards {
            for (version, operator, store) in board.take_outgoing() {
                let Some(step) = board.step().filter(|s| s.version == version) else { continue };
                let Some(addr) = node_running(nodes, step.to).map(|i| nodes[i].addr) else {
                    out.push(Msg::Failed {
                        epoch,
                        reason: format!("handoff to worker {}: no node runs it", step.to),
                    });
                    continue;
                };
                let request = ShipRequest {
                    addr,
                    cluster,
                    hello: parcel_hello_name(version, epoch),
                    operator: operator.clone(),
                    store,
                    timeout: PARCEL_TIMEOUT,
                };
                self.ships.push((version, operator, env.begin_ship(request)));
            }
        }
        let mut i = 0;
        while i < self.ships.len() {
            let (version, operator, ship) = &mut self.ships[i];
            match env.poll_ship(ship) {
                None => i += 1,
                Some(r) => {
                    match r {
                        Ok(bytes) if !quiet => env.log(&format!(
                            "node {node}: sent operator `{operator}`'s bins of step {version} ({bytes} bytes)"
                        )),
                        Ok(_) => {}
                        Err(e) => out.push(Msg::Failed { epoch, reason: format!("node {node}: {e}") }),
                    }
                    self.ships.swap_remove(i);
                }
            }
        }
        let mut i = 0;
        while i < self.takes.len() {
            let (version, take) = &mut self.takes[i];
            match env.poll_take(take) {
                None => i += 1,
                Some(r) => {
                    match r {
                        Ok(p) => {
                            if !quiet {
                                env.log(&format!(
                                    "node {node}: took in operator `{}`'s bins of step {version} ({} bytes): \
                                     received in {} ms, rebuilt in {} ms",
                                    p.operator,
                                    p.bytes,
                                    p.received_us / 1000,
                                    p.rebuilt_us / 1000
                                ));
                            }
                            // The share that runs the step's target takes it.
                            let v = *version;
                            let target = boards.iter().find(|(b, local)| {
                                b.step().is_some_and(|s| s.version == v && local.contains(&s.to))
                            });
                            match target {
                                Some((board, _)) => board.deposit(v, &p.operator, p.store),
                                None => out.push(Msg::Failed {
                                    epoch,
                                    reason: format!(
                                        "node {node}: a parcel of step {v} came, and no share here takes it"
                                    ),
                                }),
                            }
                        }
                        Err(e) => out.push(Msg::Failed { epoch, reason: format!("node {node}: {e}") }),
                    }
                    self.takes.swap_remove(i);
                }
            }
        }
        for (board, _) in boards {
            if let Some(d) = board.done().last().filter(|d| d.info.version > self.reported) {
                self.reported = d.info.version;
                out.push(Msg::HandedOff { epoch, version: d.info.version, bytes: d.bytes, micros: d.micros });
            }
        }
    }

    /// A new deployment: nothing in flight survives it.
    pub(crate) fn clear(&mut self) {
        self.ships.clear();
        self.takes.clear();
        self.reported = 0;
    }
}

/// The step a `Msg::Handoff` describes.
pub(crate) fn step_of(version: u64, start: u32, end: u32, from: usize, to: usize) -> StepInfo {
    StepInfo { version, bins: BinRange::new(start, end), from, to }
}
