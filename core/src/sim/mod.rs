//! The whole-cluster simulator (core's tests only): the production
//! coordinator ([`crate::control::plan::Plan`] and its driver), the
//! production node agent and the production workers — their barrier
//! alignment and abort, replay logs, receive counts and re-linking — run
//! over a simulated network and clock, one step at a time, by a seeded
//! scheduler, with message delays, connections cut, nodes killed (during
//! checkpoints and recoveries alike) and restarted as new incarnations,
//! and nodes stalled past the failure timeout (zombies when they come
//! back). Nothing in it re-writes production logic: the simulator brings
//! the environment ([`env::SimEnv`]: the network, the fetches and backup
//! streams, in-thread workers), a workload ([`workload`]) and a checker
//! that compares every output with its closed form ([`world::World::check`]).
//!
//! `SPATE_SIM_SEEDS=N` runs N seeds (default [`SEEDS_DEFAULT`]) from
//! `SPATE_SIM_FIRST` (default 0);
//! `SPATE_SIM_SEED=S` replays one, `SPATE_SIM_VERBOSE=1` prints its log.
//! A failing seed prints the command that replays it.
//!
//! How it can fail is tested too: each of a few deliberately broken
//! variants of production logic ([`crate::sabotage`]) must make some seeds
//! fail.

pub(crate) mod env;
pub(crate) mod monitor;
pub(crate) mod net;
pub(crate) mod rng;
pub(crate) mod workload;
pub(crate) mod world;

#[cfg(test)]
mod tests;

use world::{Ran, Scenario, World};

/// Seeds a plain `cargo test` runs.
pub(crate) const SEEDS_DEFAULT: u64 = 2000;

/// Whether the job's failure `why` is one the scenario makes true: every
/// copy of a checkpoint part was lost, which takes the node that took it
/// and every one of its backup nodes (more nodes than `backups`) fenced.
fn unrecoverable(scenario: &Scenario, why: &str) -> bool {
    let (fenced, cut) = scenario.fenced();
    why.contains("are all gone") && fenced.len() + usize::from(cut) > scenario.backups
}

/// Runs seed `seed`: how it ran, or what went wrong (with the log when
/// `verbose`).
pub(crate) fn run(seed: u64, verbose: bool) -> Result<Ran, String> {
    let scenario = Scenario::random(seed);
    let mut world = World::new(seed, scenario.clone(), verbose)?;
    let ran = world.run();
    let checked = match (&ran.outcome, &ran.violation) {
        (_, Some(v)) => Err(format!("the plan broke an invariant {v}")),
        (Ok(()), None) => world.check(),
        (Err(e), None) if unrecoverable(&scenario, e) => Ok(()),
        (Err(e), None) => Err(format!("the job failed: {e}")),
    };
    if verbose && checked.is_ok() {
        for l in world.log() {
            eprintln!("  {l}");
        }
    }
    match checked {
        Ok(()) => Ok(ran),
        Err(e) => {
            let mut msg = format!(
                "seed {seed}: {e}\n  scenario: {scenario:?}\n  events ({} in all, the last 30): {:?}\n  replay: SPATE_SIM_SEED={seed} SPATE_SIM_VERBOSE=1 cargo test -p spate-core --lib sim::tests::one_seed -- --nocapture",
                ran.events.len(),
                &ran.events[ran.events.len().saturating_sub(30)..]
            );
            if verbose {
                for l in world.log() {
                    msg.push_str("\n  ");
                    msg.push_str(&l);
                }
            }
            Err(msg)
        }
    }
}
