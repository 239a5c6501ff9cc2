//! Stalled checkpoints: one outstanding for `stall_intervals` intervals is
//! reported once, as an event and a warning that names each node whose
//! part is missing, its workers and the backup nodes its parts stream to
//! (a backup that refuses or does not answer holds a part back), so that
//! checkpoints never stop in silence (issue 27, item 3).

use super::{Action, Plan};

impl Plan {
    /// Reports the checkpoint in flight once it has waited
    /// `stall_intervals` intervals.
    pub(super) fn check_stall(&mut self, now_ms: u64) {
        let limit_ms = self.config.interval_ms.saturating_mul(u64::from(self.config.stall_intervals));
        let Some(f) = &self.in_flight else { return };
        if limit_ms == 0 || f.stalled || now_ms.saturating_sub(f.requested_ms) < limit_ms {
            return;
        }
        let (id, waited_ms) = (f.id, now_ms.saturating_sub(f.requested_ms));
        let mut missing = Vec::new();
        let mut first = 0;
        for (pos, (&node, &workers)) in self.slots.iter().zip(&self.slot_workers).enumerate() {
            let range = first..first + workers;
            first += workers;
            if f.parts.contains_key(&node) || workers == 0 {
                continue;
            }
            let backups: Vec<String> =
                self.holders(pos).iter().map(|&j| format!("`{}`", self.nodes[j].name)).collect();
            let backups = if backups.is_empty() { "none".to_string() } else { backups.join(", ") };
            missing.push(format!(
                "node `{}` (workers {}..{}) has not reported its part; its backups: {backups}",
                self.nodes[node].name, range.start, range.end
            ));
        }
        if let Some(f) = &mut self.in_flight {
            f.stalled = true;
        }
        let last = self.last_complete.as_ref().map_or("none".to_string(), |c| c.manifest.id.to_string());
        self.event(format!("stalled {id}"));
        self.actions.push(Action::Note(format!(
            "WARNING: checkpoint {id} stalled: requested {waited_ms} ms ago ({} intervals), \
             last complete {last}; {}",
            self.config.stall_intervals,
            missing.join("; ")
        )));
    }
}
