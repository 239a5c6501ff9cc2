//! `peer-timely`: the keyed-sum workload on timely-dataflow, as a peer baseline for Spate.
//!
//! Workload: `N` records `(key = i % K, value = i)` for `i in 0..N`, generated in parallel
//! (worker `w` generates every `i ≡ w (mod W)`, in batches), exchanged by
//! `spate_state::hash_u64(key)`, summed per key in a `HashMap` whose hasher is also
//! `hash_u64`, emitting `(key, running_sum)` per record into a counting sink. The total
//! count is checked against `N` (exit status 1 on mismatch).
//!
//! ```text
//! peer-timely --records N --workers W [--keys K] [--json]
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Instant;

use spate_bench::hashing::BuildHashU64;
use spate_state::hash_u64;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Input, Operator, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::Config;

/// Records generated per `send_batch` call (one container handed to the input).
const BATCH: usize = 4096;
/// Records (per worker) per epoch; each epoch is closed with `advance_to`.
const EPOCH_RECORDS: u64 = 1 << 18;
/// How many epochs each worker lets run ahead of its probe before it stops generating.
const MAX_EPOCHS_IN_FLIGHT: u64 = 2;

type Rec = (u64, u64);

/// The per-worker keyed state of the `KeyedSum` operator. On drop (when the finished
/// dataflow is torn down) it reports the sum of its final per-key sums and its key count,
/// which `main` checks; this keeps the hot path free of shared-state indirection.
struct KeyedState {
    sums: HashMap<u64, u64, BuildHashU64>,
    report: Rc<Cell<Option<(u64, u64)>>>,
}

impl Drop for KeyedState {
    fn drop(&mut self) {
        let total = self.sums.values().fold(0u64, |a, &v| a.wrapping_add(v));
        self.report.set(Some((total, self.sums.len() as u64)));
    }
}

struct Args {
    records: u64,
    workers: usize,
    keys: u64,
    json: bool,
}

fn usage() -> String {
    "usage: peer-timely --records N --workers W [--keys K (default 100000)] [--json]".to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut records = None;
    let mut workers = None;
    let mut keys = 100_000u64;
    let mut json = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value\n{}", usage()))?;
            v.replace('_', "").parse::<u64>().map_err(|e| format!("{name}: cannot parse {v:?}: {e}"))
        };
        match arg.as_str() {
            "--records" => records = Some(value("--records")?),
            "--workers" => workers = Some(value("--workers")? as usize),
            "--keys" => keys = value("--keys")?,
            "--json" => json = true,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    let records = records.ok_or_else(|| format!("--records is required\n{}", usage()))?;
    let workers = workers.ok_or_else(|| format!("--workers is required\n{}", usage()))?;
    if workers == 0 {
        return Err("--workers must be at least 1".to_owned());
    }
    if keys == 0 {
        return Err("--keys must be at least 1".to_owned());
    }
    Ok(Args { records, workers, keys, json })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (n, k, w) = (args.records, args.keys, args.workers);

    let start = Instant::now();
    let guards = timely::execute(Config::process(w), move |worker| {
        let index = worker.index() as u64;
        let peers = worker.peers() as u64;

        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Rec>>>::new();
        let probe = ProbeHandle::new();
        let count = Rc::new(Cell::new(0u64));
        let sink_count = Rc::clone(&count);
        // Filled in when the operator (and its keyed state) is dropped at the end.
        let state_report = Rc::new(Cell::new(None));
        let op_report = Rc::clone(&state_report);
        // Each worker owns roughly K / W keys.
        let state_capacity = (k / peers + k / (4 * peers) + 16).min(n / peers + 16) as usize;

        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .unary::<CapacityContainerBuilder<Vec<Rec>>, _, _, _>(
                    Exchange::new(|r: &Rec| hash_u64(r.0)),
                    "KeyedSum",
                    move |_cap, _info| {
                        let mut state = KeyedState {
                            sums: HashMap::with_capacity_and_hasher(state_capacity, BuildHashU64),
                            report: op_report,
                        };
                        move |input, output| {
                            let sums = &mut state.sums;
                            input.for_each(|cap, data| {
                                // Update the running sum and rewrite each record in place
                                // to `(key, running_sum)`; then emit the whole container.
                                for rec in data.iter_mut() {
                                    let sum = sums.entry(rec.0).or_insert(0);
                                    *sum = sum.wrapping_add(rec.1);
                                    rec.1 = *sum;
                                }
                                output.session(&cap).give_container(data);
                            });
                        }
                    },
                )
                .probe_with(&probe)
                .sink(Pipeline, "Count", move |(input, _frontier)| {
                    input.for_each(|_cap, data: &mut Vec<Rec>| {
                        sink_count.set(sink_count.get() + data.len() as u64);
                    });
                });
        });

        // Generate this worker's share: i = index, index + W, index + 2W, ...
        let mut batch: Vec<Rec> = Vec::with_capacity(BATCH);
        let mut i = index;
        let mut key = if k > 0 { index % k } else { 0 };
        let mut epoch = 0u64;
        let mut in_epoch = 0u64;
        while i < n {
            batch.clear();
            batch.reserve(BATCH);
            let remaining = (n - i).div_ceil(peers);
            let take = remaining.min(BATCH as u64);
            for _ in 0..take {
                batch.push((key, i));
                i += peers;
                key += peers;
                while key >= k {
                    key -= k;
                }
            }
            input.send_batch(&mut batch);
            in_epoch += take;
            if in_epoch >= EPOCH_RECORDS {
                in_epoch = 0;
                epoch += 1;
                input.advance_to(epoch);
                // Bound the work in flight: wait until all but the newest epochs are done.
                let floor = epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT);
                while probe.less_than(&floor) {
                    worker.step();
                }
            }
            worker.step();
        }
        drop(input);
        while worker.step_or_park(None) {}
        // (outputs counted, (sum of the final per-key sums, keys held) if the state was dropped)
        (count.get(), state_report.get())
    });

    let guards = match guards {
        Ok(g) => g,
        Err(e) => {
            eprintln!("peer-timely: timely failed to start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut total = 0u64;
    let mut state_total = 0u64;
    let mut keys_held = 0u64;
    for r in guards.join() {
        match r {
            Ok((c, Some((s, kh)))) => {
                total += c;
                state_total = state_total.wrapping_add(s);
                keys_held += kh;
            }
            Ok((_, None)) => {
                eprintln!("peer-timely: a worker's keyed state was not released at the end");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("peer-timely: worker failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();

    if total != n {
        eprintln!("peer-timely: counted {total} outputs, expected {n}");
        return ExitCode::FAILURE;
    }
    // Every value went into exactly one key's sum: the final sums add up to 0 + 1 + ... + N-1,
    // and every distinct key is held by exactly one worker.
    let expect_total =
        if n % 2 == 0 { (n / 2).wrapping_mul(n.wrapping_sub(1)) } else { n.wrapping_mul((n - 1) / 2) };
    if state_total != expect_total || keys_held != n.min(k) {
        eprintln!(
            "peer-timely: state check failed: sum of final sums {state_total} (expected {expect_total}), {keys_held} keys held (expected {})",
            n.min(k)
        );
        return ExitCode::FAILURE;
    }
    let rate = n as f64 / seconds;
    if args.json {
        println!(
            "{{\"system\":\"timely\",\"records\":{n},\"workers\":{w},\"keys\":{k},\"seconds\":{seconds:.6},\"records_per_s\":{rate:.1}}}"
        );
    } else {
        println!(
            "timely: {n} records, {w} workers, {k} keys in {seconds:.3} s = {:.2} M records/s",
            rate / 1e6
        );
    }
    ExitCode::SUCCESS
}
