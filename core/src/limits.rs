//! Every limit of the runtime, named and kept together.
//!
//! Bounded queues are what make backpressure work: a producer that outruns
//! its consumer waits on a full channel instead of growing memory. The
//! numbers here are defaults; most can be set per run in
//! [`RuntimeConfig`](crate::config::RuntimeConfig).

/// Most workers (executors) one process runs.
pub const WORKERS_MAX: usize = 256;
/// Default records per batch before it closes. 2048 was tried (session
/// 16): keyed-sum with two workers ran ×1.022–1.040 when the VM was quiet,
/// but ×0.962 and ×0.963 (9 rounds each) when it was contended, where the
/// producer's stores into fresh batch buffers (`Outbox::push_run`) took a
/// quarter to a third of the samples with either size.
pub const BATCH_RECORDS_DEFAULT: usize = 1024;
/// Default bytes of record data per batch before it closes.
pub const BATCH_BYTES_DEFAULT: usize = 64 * 1024;
/// Most records a source produces in one step before the runtime flushes
/// outputs and lets other tasks run.
pub const SOURCE_STEP_RECORDS_DEFAULT: usize = 2048;
/// Default batches in flight on one channel between two workers.
pub const CHANNEL_BATCHES_DEFAULT: usize = 64;
/// Default linger of a partly filled batch, in microseconds.
pub const LINGER_US_DEFAULT: u64 = 200;
/// Default capacity, in records, of an embedding input or output handle.
pub const HANDLE_RECORDS_DEFAULT: usize = 64 * 1024;
/// glommio's registered I/O memory per worker. The machine's locked-memory
/// limit (`ulimit -l`) is small, so keep this small; and Spate does no
/// glommio file I/O (the state store is memory-mapped), while glommio pins
/// this memory into each of an executor's three rings when it starts: 512
/// KiB took about 0.17 ms of each worker's start.
pub const IO_MEMORY_BYTES: usize = 64 * 1024;
/// Longest interval between two linger checks of a worker, in microseconds.
pub const TICK_US_MAX: u64 = 1000;
/// How long an idle worker sleeps at a time with `park_when_idle`, in
/// microseconds.
pub const NAP_US: u64 = 50;
/// Batches in flight per channel between workers of different nodes (the
/// credit window a receiving worker grants): the remote counterpart of
/// `CHANNEL_BATCHES_DEFAULT`.
pub const NET_CREDIT_WINDOW: u32 = 64;
/// Batches a worker takes from one input ring before it visits the next.
pub const BATCHES_PER_VISIT: usize = 4;
/// How often a worker publishes its metrics for the status line.
pub const METRICS_PUBLISH_MS: u64 = 100;

/// Longest linger a config may set, in microseconds (a minute): past it
/// the runtime's nanosecond deadlines would overflow.
pub const LINGER_US_MAX: u64 = 60_000_000;
/// Longest spin before an idle worker naps, in microseconds (a minute).
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 60_000_000;
/// Most batches in flight per channel a config may set: a ring's slots
/// are allocated when the job starts.
pub const CHANNEL_BATCHES_MAX: usize = 65_536;
/// Longest interval between checkpoints, in milliseconds (a day).
pub const CHECKPOINT_INTERVAL_MS_MAX: u64 = 86_400_000;
/// Longest connect or failure timeout of a cluster, in milliseconds (a
/// day): the coordinator adds and multiplies them.
pub const CLUSTER_TIMEOUT_MS_MAX: u64 = 86_400_000;
/// The locked memory (RLIMIT_MEMLOCK) glommio needs to make a worker's
/// executor at all (its `MIN_MEMLOCK_LIMIT`).
pub const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;

const _: () = assert!(BATCH_RECORDS_DEFAULT <= SOURCE_STEP_RECORDS_DEFAULT * 4);
const _: () = assert!(CHANNEL_BATCHES_DEFAULT <= CHANNEL_BATCHES_MAX);
const _: () = assert!(LINGER_US_DEFAULT <= LINGER_US_MAX);
const _: () = assert!(IO_MEMORY_BYTES as u64 <= MEMLOCK_BYTES_MIN);
const _: () = assert!(CHANNEL_BATCHES_DEFAULT >= 2);
