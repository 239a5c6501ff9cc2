//! The operator library through the embedding API, on two workers: small
//! inputs sent through `InputHandle`s, results taken from an
//! `OutputHandle`, and expectations worked out by hand (in the comments).
//! Every wait is bounded: a hung job fails the test instead of hanging it.

use std::time::{Duration, Instant};

use spate::prelude::*;
use spate::{Job, JobReport};

/// The longest any single result may take.
const WAIT: Duration = Duration::from_secs(10);

fn runtime(dir: &tempfile::TempDir) -> Runtime {
    Runtime::new(RuntimeConfig {
        workers: 2,
        pin: false,
        data_dir: dir.path().to_path_buf(),
        linger_us: 0,
        ..Default::default()
    })
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

/// One job at a time: the tests share two cores with busy-polling workers
/// (concurrent jobs once exposed a stall, now fixed; see
/// tests/runtime_stall.rs).
static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_job() -> std::sync::MutexGuard<'static, ()> {
    ONE_JOB.lock().unwrap_or_else(|e| e.into_inner())
}

fn start(dir: &tempfile::TempDir, name: &str, build: impl Fn(&Dataflow) + Send + Sync + 'static) -> Job {
    runtime(dir).start(name, build).unwrap_or_else(|e| panic!("start {name}: {e}"))
}

/// Exactly `n` results, each within [`WAIT`], while the job runs on.
fn take<T>(out: &OutputHandle<T>, n: usize) -> Vec<T> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match out.recv_timeout(WAIT) {
            Ok(Some(r)) => got.push(r),
            Ok(None) => panic!("the job ended after {} of {n} results", got.len()),
            Err(_) => panic!("no result within {WAIT:?} after {} of {n}", got.len()),
        }
    }
    got
}

/// Every remaining result until the job ends (each within [`WAIT`], at most
/// `max`), then the job's report.
fn drain<T>(out: &OutputHandle<T>, job: Job, max: usize) -> (Vec<T>, JobReport) {
    let deadline = Instant::now() + WAIT * 3;
    let mut got = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "the job did not end");
        match out.recv_timeout(WAIT) {
            Ok(Some(r)) => {
                got.push(r);
                assert!(got.len() <= max, "more than {max} results");
            }
            Ok(None) => break,
            Err(_) => panic!("the job did not end within {WAIT:?} ({} results so far)", got.len()),
        }
    }
    // The output closes only when every worker has ended, so this returns.
    let report = job.wait().unwrap_or_else(|e| panic!("job: {e}"));
    (got, report)
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn send<T>(input: &InputHandle<T>, recs: impl IntoIterator<Item = T>) {
    for r in recs {
        input.send(r).unwrap_or_else(|e| panic!("send: {e}"));
    }
}

/// (key, event time, value)
type Rec = (u64, u64, u64);

#[test]
fn tumbling_window_sum_with_assigned_watermarks() {
    let _watchdog = spate::Watchdog::start(
        "tumbling_window_sum_with_assigned_watermarks",
        std::time::Duration::from_secs(120),
    );
    let _one = one_job();
    let dir = tempdir();
    let (input, source) = spate::input::<Rec>(64);
    let (sink, output) = spate::output::<(u64, u64, u64, u64)>(64);
    let job = start(&dir, "tumbling", move |df| {
        df.input("in", &source)
            .assign_watermarks("wm", |r: &Rec| r.1, 0)
            .key_by("by-key", |r: &Rec| r.0)
            .window(Window::tumbling(10), |r: &Rec| r.1)
            .aggregate("sum", || 0u64, |a, r| *a += r.2)
            .output("out", &sink);
    });
    // Watermark = highest time seen. After (1, 10, 4) it is 10: the windows
    // [0, 10) of keys 1 (1 + 2) and 2 (10) fire, before the input ends.
    send(&input, [(1, 0, 1), (2, 3, 10), (1, 9, 2), (1, 10, 4)]);
    assert_eq!(sorted(take(&output, 2)), vec![(1, 0, 10, 3), (2, 0, 10, 10)]);
    // (2, 21, 40) arrives after time 25 but its window [20, 30) is still
    // open: on time.
    send(&input, [(2, 15, 20), (3, 19, 100), (1, 25, 8), (2, 21, 40)]);
    drop(input);
    let (rest, report) = drain(&output, job, 100);
    assert_eq!(
        sorted(rest),
        vec![(1, 10, 20, 4), (1, 20, 30, 8), (2, 10, 20, 20), (2, 20, 30, 40), (3, 10, 20, 100)]
    );
    assert_eq!(report.records_in, 8);
}

#[test]
fn sliding_window_with_handle_watermarks() {
    let _watchdog =
        spate::Watchdog::start("sliding_window_with_handle_watermarks", std::time::Duration::from_secs(120));
    let _one = one_job();
    let dir = tempdir();
    let (input, source) = spate::input::<Rec>(64);
    let (sink, output) = spate::output::<(u64, u64, u64, u64)>(64);
    let job = start(&dir, "sliding", move |df| {
        df.input("in", &source)
            .key_by("by-key", |r: &Rec| r.0)
            .window(Window::sliding(10, 5), |r: &Rec| r.1)
            .aggregate("sum", || 0u64, |a, r| *a += r.2)
            .output("out", &sink);
    });
    // Windows [0,10), [5,15), [10,20), ...; time t is in the windows
    // starting at 5*floor(t/5) and 5 before it (if >= 0):
    //   key 1: t=2 v=1 -> [0,10); t=7 v=2 -> [0,10),[5,15);
    //          t=12 v=4 and t=14 v=8 -> [5,15),[10,20)
    //   key 2: t=5 v=16 -> [0,10),[5,15)
    send(&input, [(1, 2, 1), (1, 7, 2), (2, 5, 16), (1, 12, 4), (1, 14, 8)]);
    // Nothing fires without a watermark.
    assert!(output.recv_timeout(Duration::from_millis(200)).is_err(), "a window fired early");
    // Watermark 15 closes the windows ending at 10 and 15.
    input.advance_watermark(15).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sorted(take(&output, 4)), vec![(1, 0, 10, 3), (1, 5, 15, 14), (2, 0, 10, 16), (2, 5, 15, 16)]);
    // The end of the input closes [10, 20) of key 1: 4 + 8.
    drop(input);
    let (rest, _) = drain(&output, job, 100);
    assert_eq!(rest, vec![(1, 10, 20, 12)]);
}

#[test]
fn window_join_of_two_inputs() {
    let _watchdog = spate::Watchdog::start("window_join_of_two_inputs", std::time::Duration::from_secs(120));
    let _one = one_job();
    let dir = tempdir();
    let (left, left_source) = spate::input::<Rec>(64);
    let (right, right_source) = spate::input::<Rec>(64);
    let (sink, output) = spate::output::<(u64, u64, u64)>(64);
    let job = start(&dir, "join", move |df| {
        let l = df.input("left", &left_source).key_by("left-by-key", |r: &Rec| r.0);
        let r = df.input("right", &right_source).key_by("right-by-key", |r: &Rec| r.0);
        l.window(Window::tumbling(10), |r: &Rec| r.1)
            .join(&r.window(Window::tumbling(10), |r: &Rec| r.1), "join", |k, a: &Rec, b: &Rec| {
                (*k, a.2, b.2)
            })
            .output("out", &sink);
    });
    // key 1: [0,10) holds left 100 and right 1000, 1001; [10,20) holds
    //        left 101 and right 1002.
    // key 2: left 200 in [0,10), right 2000 in [10,20): different windows.
    // key 3: right only.
    send(&left, [(1, 1, 100), (1, 12, 101), (2, 3, 200)]);
    send(&right, [(1, 5, 1000), (2, 11, 2000), (1, 8, 1001), (3, 2, 3000), (1, 15, 1002)]);
    // Pairs come out as soon as both sides are there, before the end.
    assert_eq!(sorted(take(&output, 3)), vec![(1, 100, 1000), (1, 100, 1001), (1, 101, 1002)]);
    // A right record that arrives later still meets the stored left side.
    send(&right, [(2, 9, 2001)]);
    assert_eq!(take(&output, 1), vec![(2, 200, 2001)]);
    drop(left);
    drop(right);
    let (rest, report) = drain(&output, job, 100);
    assert!(rest.is_empty(), "unexpected pairs: {rest:?}");
    assert_eq!(report.records_in, 9);
}

#[test]
fn union_filter_map_flat_map() {
    let _watchdog = spate::Watchdog::start("union_filter_map_flat_map", std::time::Duration::from_secs(120));
    let _one = one_job();
    let dir = tempdir();
    let (a, a_source) = spate::input::<u64>(64);
    let (b, b_source) = spate::input::<u64>(64);
    let (sink, output) = spate::output::<(u64, u64)>(64);
    let job = start(&dir, "stateless", move |df| {
        let a = df.input("a", &a_source);
        let b = df.input("b", &b_source);
        a.union(&b, "union")
            .filter("even", |x: &u64| x.is_multiple_of(2))
            .map("times-ten", |x: u64| x * 10)
            .flat_map("and-next", |x: u64| [x, x + 1])
            // Across workers, then paired with the input value it came from.
            .key_by("by-value", |x: &u64| *x)
            .stream()
            .map("pair", |x: u64| (x / 10, x))
            .output("out", &sink);
    });
    send(&a, [1, 2, 3, 4]);
    drop(a); // The union goes on until both inputs end.
    send(&b, [10, 11, 12]);
    // even: 2, 4, 10, 12 -> x10: 20, 40, 100, 120 -> and next: +1
    let got = take(&output, 8);
    drop(b);
    let (rest, report) = drain(&output, job, 100);
    assert!(rest.is_empty(), "unexpected results: {rest:?}");
    assert_eq!(
        sorted(got),
        vec![(2, 20), (2, 21), (4, 40), (4, 41), (10, 100), (10, 101), (12, 120), (12, 121)]
    );
    assert_eq!(report.records_in, 7);
    assert_eq!(report.records_out, 8);
}

#[test]
fn late_records_are_dropped() {
    let _watchdog = spate::Watchdog::start("late_records_are_dropped", std::time::Duration::from_secs(120));
    let _one = one_job();
    let dir = tempdir();
    let (input, source) = spate::input::<Rec>(64);
    let (sink, output) = spate::output::<(u64, u64, u64, u64)>(64);
    let job = start(&dir, "late", move |df| {
        df.input("in", &source)
            .key_by("by-key", |r: &Rec| r.0)
            .window(Window::tumbling(10), |r: &Rec| r.1)
            .aggregate("sum", || 0u64, |a, r| *a += r.2)
            .output("out", &sink);
    });
    let keys = 1..=6u64; // spread over both workers
    send(&input, keys.clone().map(|k| (k, 5, 1)));
    input.advance_watermark(10).unwrap_or_else(|e| panic!("{e}"));
    // Once [0, 10) has fired for every key, the watermark has reached every
    // window instance.
    assert_eq!(sorted(take(&output, 6)), keys.clone().map(|k| (k, 0, 10, 1)).collect::<Vec<_>>());
    // Late for [0, 10) (already fired): dropped. On time for [10, 20).
    send(&input, keys.clone().map(|k| (k, 3, 100)));
    send(&input, keys.clone().map(|k| (k, 12, 1000)));
    drop(input);
    let (rest, report) = drain(&output, job, 100);
    assert_eq!(sorted(rest), keys.map(|k| (k, 10, 20, 1000)).collect::<Vec<_>>());
    assert_eq!(report.records_in, 18, "the late records did enter");
}

#[test]
fn reduce_running_per_key() {
    let _watchdog = spate::Watchdog::start("reduce_running_per_key", std::time::Duration::from_secs(120));
    let _one = one_job();
    let dir = tempdir();
    let (input, source) = spate::input::<(u64, u64)>(64);
    let (sink, output) = spate::output::<(u64, u64)>(64);
    let job = start(&dir, "reduce", move |df| {
        df.input("in", &source)
            .key_by("by-key", |r: &(u64, u64)| r.0)
            .reduce("sum", |a: &(u64, u64), b: &(u64, u64)| (a.0, a.1 + b.1))
            .output("out", &sink);
    });
    send(&input, [(1, 5), (2, 3), (1, 2), (3, 1), (1, 9), (2, 7), (4, 0), (5, 11)]);
    drop(input);
    let (got, _) = drain(&output, job, 100);
    // Per key, in input order (one source, FIFO channels):
    //   1: 5, 5+2, 5+2+9; 2: 3, 3+7; 3: 1; 4: 0; 5: 11
    let per_key = |k: u64| got.iter().filter(|r| r.0 == k).map(|r| r.1).collect::<Vec<_>>();
    assert_eq!(per_key(1), vec![5, 7, 16]);
    assert_eq!(per_key(2), vec![3, 10]);
    assert_eq!(per_key(3), vec![1]);
    assert_eq!(per_key(4), vec![0]);
    assert_eq!(per_key(5), vec![11]);
    assert_eq!(got.len(), 8);
}

/// A `reduce`'s results are of its records' type, so the operator writes
/// each result over its record in the burst it was handed
/// (`ops/src/keyed.rs`, `update_burst_in_place`); with heap-owning records
/// every result must still be its own key's, in order, and each replaced
/// record dropped once (a double drop of a `String` aborts the test
/// process).
#[test]
fn reduce_of_heap_owning_records_replaces_each_in_place() {
    let _watchdog = spate::Watchdog::start(
        "reduce_of_heap_owning_records_replaces_each_in_place",
        std::time::Duration::from_secs(120),
    );
    let _one = one_job();
    let dir = tempdir();
    let (input, source) = spate::input::<(String, String)>(64);
    let (sink, output) = spate::output::<(String, String)>(4096);
    let job = start(&dir, "concat", move |df| {
        df.input("in", &source)
            .key_by("by-key", |r: &(String, String)| r.0.clone())
            .reduce("concat", |a: &(String, String), b: &(String, String)| {
                (a.0.clone(), format!("{}{}", a.1, b.1))
            })
            .output("out", &sink);
    });
    // Keys of different lengths spread over both workers, so bursts from
    // the other worker's batches and this worker's own both take the path.
    let keys = ["a", "bb", "ccc", "dddd", "eeeee", "f"];
    let n = 600usize;
    let key_of = |i: usize| keys[i % keys.len()].to_string();
    send(&input, (0..n).map(|i| (key_of(i), format!("{},", i))));
    let got = take(&output, n);
    drop(input);
    for k in keys {
        let mut want = Vec::new();
        let mut acc = String::new();
        for i in (0..n).filter(|&i| key_of(i) == k) {
            acc.push_str(&format!("{},", i));
            want.push(acc.clone());
        }
        let per_key: Vec<String> = got.iter().filter(|r| r.0 == k).map(|r| r.1.clone()).collect();
        assert_eq!(per_key, want, "running concatenation of key {k}, in input order");
    }
    let (rest, _) = drain(&output, job, 0);
    assert!(rest.is_empty());
}

/// With two workers and keys that need no drop, an exchange splits a
/// source's burst in one pass, copying each record both to where it stays
/// and to the other worker's stage and keeping one of the two: records
/// that own heap memory must reach the operator exactly once each (checked
/// here: every key's running concatenation grows by one record at a time
/// and ends with all of its records; clean under valgrind's memcheck: no
/// double free, no leak).
#[test]
fn a_two_worker_exchange_hands_each_heap_owning_record_on_once() {
    let _watchdog = spate::Watchdog::start(
        "a_two_worker_exchange_hands_each_heap_owning_record_on_once",
        std::time::Duration::from_secs(120),
    );
    let _one = one_job();
    let dir = tempdir();
    const KEYS: u64 = 37;
    const N: u64 = 20_000;
    let (sink, output) = spate::output::<(u64, String)>(4096);
    let job = start(&dir, "concat-u64", move |df| {
        df.generate("gen", GeneratorSpec::bounded(N), |i| (i % KEYS, format!("{i},")), |i| i)
            .key_by("by-key", |r: &(u64, String)| r.0)
            .reduce("concat", |a: &(u64, String), b: &(u64, String)| (a.0, format!("{}{}", a.1, b.1)))
            .output("out", &sink);
    });
    let got = take(&output, N as usize);
    let (rest, _) = drain(&output, job, 0);
    assert!(rest.is_empty());
    let parse = |s: &str| -> Vec<u64> {
        s.split(',').filter(|x| !x.is_empty()).map(|x| x.parse().unwrap_or(u64::MAX)).collect()
    };
    for k in 0..KEYS {
        // The generator's two workers make a key's records in turn, so the
        // order within a key is not fixed; the count and the set are.
        let mut lens: Vec<usize> = got.iter().filter(|r| r.0 == k).map(|r| parse(&r.1).len()).collect();
        lens.sort_unstable();
        let m = (0..N).filter(|i| i % KEYS == k).count();
        assert_eq!(lens, (1..=m).collect::<Vec<_>>(), "key {k}: one more record a result");
        let longest = got.iter().filter(|r| r.0 == k).map(|r| parse(&r.1)).max_by_key(Vec::len);
        let mut all = longest.unwrap_or_default();
        all.sort_unstable();
        let want: Vec<u64> = (0..N).filter(|i| i % KEYS == k).collect();
        assert_eq!(all, want, "key {k}: every record once");
    }
}

/// An exchange keeps a worker's records for itself until the end of the
/// burst, and keyed operators take a burst at a time to overlap their state
/// accesses (`ops/src/keyed.rs`, `push_burst`); the end of every burst
/// releases them, so a lone record's result comes out while the input is
/// still open, and many records keep their per-key order.
#[test]
fn keyed_operators_release_held_records_at_the_end_of_each_burst() {
    let _watchdog = spate::Watchdog::start(
        "keyed_operators_release_held_records_at_the_end_of_each_burst",
        std::time::Duration::from_secs(120),
    );
    let _one = one_job();
    let dir = tempdir();
    let (input, source) = spate::input::<(u64, u64)>(64);
    // Room for every result, so that one output waiting to be read never
    // holds the other back.
    let (sink, output) = spate::output::<(u64, u64)>(2048);
    let (rsink, routput) = spate::output::<(u64, u64)>(2048);
    let job = start(&dir, "held", move |df| {
        let keyed = df.input("in", &source).key_by("by-key", |r: &(u64, u64)| r.0);
        keyed.fold("sum", || 0u64, |s: &mut u64, r: &(u64, u64)| *s += r.1).output("out", &sink);
        keyed.reduce("max", |a: &(u64, u64), b: &(u64, u64)| (a.0, a.1.max(b.1))).output("rout", &rsink);
    });
    // One record at a time: each result arrives before the next is sent.
    for (i, v) in [3u64, 4, 5].into_iter().enumerate() {
        send(&input, [(7, v)]);
        let want: u64 = [3u64, 4, 5][..=i].iter().sum();
        assert_eq!(take(&output, 1), vec![(7, want)], "the fold's result for record {i}");
        assert_eq!(take(&routput, 1), vec![(7, v)], "the reduce's result for record {i}");
    }
    // Far more records than are held back, over a few keys.
    let n = 1000u64;
    send(&input, (0..n).map(|i| (i % 3, i)));
    let got = take(&output, n as usize);
    let rgot = take(&routput, n as usize);
    drop(input);
    for k in 0..3 {
        let values = (0..n).filter(|i| i % 3 == k);
        let sums: Vec<u64> = values
            .clone()
            .scan(0, |s, v| {
                *s += v;
                Some(*s)
            })
            .collect();
        let per_key = |g: &[(u64, u64)]| g.iter().filter(|r| r.0 == k).map(|r| r.1).collect::<Vec<_>>();
        assert_eq!(per_key(&got), sums, "running sums of key {k}, in input order");
        assert_eq!(per_key(&rgot), values.collect::<Vec<_>>(), "running maxima of key {k}");
    }
    let (rest, _) = drain(&output, job, 0);
    assert!(rest.is_empty());
}
