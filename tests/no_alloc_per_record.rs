//! Once warm, the keyed-sum data path does not allocate per record: the
//! allocations of a long run minus those of a short run, divided by the extra
//! records, stay far below one. What remains is per batch (one buffer per
//! batch that crosses workers), so the bound is loose enough for a slow
//! debug build and still fails by a factor of 20 if any operator on the path
//! allocated once per record.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_for(records: u64, workers: usize) -> u64 {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = spate::RuntimeConfig {
        workers,
        pin: false,
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let q = spate::config::QuerySection {
        name: "keyed-sum".into(),
        params: toml::toml! { records = 0 keys = 1000 },
    };
    let mut q = q;
    q.params.insert("records".into(), toml::Value::Integer(records as i64));
    let sink = spate::config::SinkSection { kind: spate::config::SinkKind::None, path: None, latency: false };
    let build = spate::registry::Registry::builtin().build(&q, &sink).unwrap_or_else(|e| panic!("{e}"));
    let before = ALLOCS.load(Ordering::Relaxed);
    let job = spate::Runtime::new(cfg).start("alloc", move |df| build(df)).unwrap_or_else(|e| panic!("{e}"));
    let report = job.wait().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.records_out, records);
    ALLOCS.load(Ordering::Relaxed) - before
}

fn per_record(workers: usize) -> f64 {
    let (short, long) = (100_000u64, 1_100_000u64);
    let a = allocations_for(short, workers);
    let b = allocations_for(long, workers);
    b.saturating_sub(a) as f64 / (long - short) as f64
}

#[test]
fn keyed_sum_does_not_allocate_per_record() {
    let _watchdog =
        spate::Watchdog::start("keyed_sum_does_not_allocate_per_record", std::time::Duration::from_secs(120));
    // One worker: every record stays on its worker (no batches at all).
    let one = per_record(1);
    // Two workers: half the records cross in batches of up to 1024 records.
    let two = per_record(2);
    eprintln!("allocations per record: 1 worker {one}, 2 workers {two}");
    assert!(one < 0.05, "{one} allocations per record with 1 worker");
    assert!(two < 0.05, "{two} allocations per record with 2 workers");
}
