//! Runtime configuration of one process ([`RuntimeConfig`]), and why one
//! cannot run a job ([`ConfigError`]).

use std::fmt;
use std::path::PathBuf;

use crate::assignment::AssignmentError;
use crate::checkpoint::CheckpointError;
use crate::limits::*;

/// How a process runs its workers.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Workers (pinned executors); 0 means one per available core.
    pub workers: usize,
    /// Workers the job may grow to by live handoff (0: `workers`): the
    /// process starts this many, and the ones past `workers` own no bins
    /// and run no source until bins move to them (`Job::move_bins`).
    pub max_workers: usize,
    /// Pin worker `i` to core `first_core + i` when there are enough cores.
    pub pin: bool,
    /// First core to pin to.
    pub first_core: usize,
    /// Records per batch before it closes.
    pub batch_records: usize,
    /// Bytes of record data per batch before it closes.
    pub batch_bytes: usize,
    /// How long a partly filled batch may wait, in microseconds; 0 sends
    /// every batch at the end of the step that filled it (lowest latency).
    pub linger_us: u64,
    /// Batches in flight per channel between two workers.
    pub channel_batches: usize,
    /// Records a source produces per step.
    pub source_step_records: usize,
    /// `B`: the key space has `2^B` bins.
    pub bins_log2: u8,
    /// Where operator state lives.
    pub data_dir: PathBuf,
    /// glommio's registered I/O memory per worker.
    pub io_memory_bytes: usize,
    /// Let an idle worker nap (sleep [`crate::limits::NAP_US`] at a time)
    /// once it has been idle for `spin_before_park_us`. Off by default:
    /// workers busy-poll, as thread-per-core engines do, for the lowest
    /// wake-up latency (docs/ARCHITECTURE.md, decision 15).
    pub park_when_idle: bool,
    /// With `park_when_idle`, how long an idle worker spins before it naps,
    /// in microseconds (trades CPU for wake-up latency).
    pub spin_before_park_us: u64,
    /// Take an aligned checkpoint of every stateful instance and source
    /// this often, in milliseconds, into a backup store under `data_dir`
    /// (0: no checkpoints).
    pub checkpoint_interval_ms: u64,
    /// With checkpoints: resume from the job's latest complete checkpoint,
    /// if there is one (otherwise its old checkpoints are removed and it
    /// starts afresh).
    pub restore: bool,
    /// When the job's rate-limited sources start their schedule, in
    /// nanoseconds since the Unix epoch (0: at their first step). A cluster
    /// sets it once for all its epochs, so that sources restored from a
    /// checkpoint keep the original schedule and catch up.
    pub schedule_origin_ns: u64,
    /// Upstream backup for live recovery on a cluster (SEEP's buffer
    /// state), in bytes per worker: every batch a worker sends to another
    /// node is kept until the checkpoint that covers it is complete, so
    /// that a restored replacement can be replayed what it lost. Full
    /// buffers throttle the worker's sources (see docs/ARCHITECTURE.md,
    /// decision 25). 0: no buffers, and a link to a
    /// worker that vanishes fails the job (recovery then rolls every node
    /// back).
    pub replay_buffer_bytes: usize,
    /// On a cluster: the job's first `n` workers (in worker order) own
    /// its bins and run its source partitions when it first starts; the
    /// others own nothing until the coordinator hands them bins
    /// (`spate ctl scale`). 0: every worker.
    pub cluster_start_workers: usize,
    /// Every worker reports its load (busy fraction, records, queues,
    /// load per bin: [`crate::load`]) this often, in milliseconds, for a
    /// scaling policy (0: no reports).
    pub load_interval_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            max_workers: 0,
            pin: true,
            first_core: 0,
            batch_records: BATCH_RECORDS_DEFAULT,
            batch_bytes: BATCH_BYTES_DEFAULT,
            linger_us: LINGER_US_DEFAULT,
            channel_batches: CHANNEL_BATCHES_DEFAULT,
            source_step_records: SOURCE_STEP_RECORDS_DEFAULT,
            bins_log2: spate_state::keyspace::BINS_LOG2_DEFAULT,
            data_dir: std::env::temp_dir().join("spate-data"),
            io_memory_bytes: IO_MEMORY_BYTES,
            park_when_idle: false,
            spin_before_park_us: 50,
            checkpoint_interval_ms: 0,
            restore: false,
            schedule_origin_ns: 0,
            replay_buffer_bytes: 0,
            cluster_start_workers: 0,
            load_interval_ms: 0,
        }
    }
}

/// Available cores of this process.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl RuntimeConfig {
    /// The number of workers this config uses from the start (they own
    /// the bins and run the sources).
    pub fn effective_workers(&self) -> usize {
        if self.workers == 0 {
            available_cores()
        } else {
            self.workers
        }
    }

    /// The number of workers the process starts: `max_workers`, if more
    /// than [`RuntimeConfig::effective_workers`].
    pub fn threads(&self) -> usize {
        self.effective_workers().max(self.max_workers)
    }

    /// Checks the values, naming the first bad one: each is in its range,
    /// and none is one that this machine or a dependency cannot take
    /// (`io_memory_bytes` within the locked-memory limit and the memory;
    /// glommio would panic making the executor). Every error's message
    /// starts with the field it names ([`ConfigError::field`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = self.threads();
        if w > WORKERS_MAX {
            return Err(ConfigError::AboveMaximum { field: "workers", value: w, max: WORKERS_MAX });
        }
        let above = |field, value: u64, max: u64| {
            let wide = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
            (value > max).then(|| ConfigError::AboveMaximum { field, value: wide(value), max: wide(max) })
        };
        if let Some(e) = above("linger_us", self.linger_us, LINGER_US_MAX)
            .or_else(|| above("spin_before_park_us", self.spin_before_park_us, SPIN_BEFORE_PARK_US_MAX))
            .or_else(|| above("channel_batches", self.channel_batches as u64, CHANNEL_BATCHES_MAX as u64))
            .or_else(|| {
                above("checkpoint_interval_ms", self.checkpoint_interval_ms, CHECKPOINT_INTERVAL_MS_MAX)
            })
        {
            return Err(e);
        }
        self.check_io_memory(w)?;
        if self.batch_records == 0 {
            return Err(ConfigError::Zero { field: "batch_records" });
        }
        if self.batch_bytes < 64 {
            return Err(ConfigError::BelowMinimum { field: "batch_bytes", value: self.batch_bytes, min: 64 });
        }
        if self.channel_batches < 2 {
            return Err(ConfigError::BelowMinimum {
                field: "channel_batches",
                value: self.channel_batches,
                min: 2,
            });
        }
        if self.source_step_records == 0 {
            return Err(ConfigError::Zero { field: "source_step_records" });
        }
        if self.bins_log2 > spate_state::keyspace::BINS_LOG2_MAX {
            return Err(ConfigError::AboveMaximum {
                field: "bins_log2",
                value: self.bins_log2.into(),
                max: spate_state::keyspace::BINS_LOG2_MAX.into(),
            });
        }
        if (1usize << self.bins_log2) < w {
            return Err(ConfigError::FewerBinsThanWorkers { bins_log2: self.bins_log2, workers: w });
        }
        Ok(())
    }

    /// `io_memory_bytes` against this process's limits: glommio locks it
    /// for each of the `workers`' executors (registered with io_uring, so
    /// RLIMIT_MEMLOCK bounds it) and allocates it in one piece, which
    /// panics inside glommio when the machine refuses it; and glommio makes
    /// no executor at all below [`MEMLOCK_BYTES_MIN`] of locked memory.
    fn check_io_memory(&self, workers: usize) -> Result<(), ConfigError> {
        let value = self.io_memory_bytes as u64;
        if let Some(memlock) = memlock_limit() {
            if memlock < MEMLOCK_BYTES_MIN {
                return Err(ConfigError::MemlockTooLow { memlock, needed: MEMLOCK_BYTES_MIN });
            }
            if value > memlock {
                return Err(ConfigError::AboveMemlock { field: "io_memory_bytes", value, memlock });
            }
        }
        if let Some(memory) = machine_memory() {
            if value.saturating_mul(workers as u64) > memory {
                return Err(ConfigError::AboveMemory { field: "io_memory_bytes", value, workers, memory });
            }
        }
        Ok(())
    }
}

/// This process's soft limit on locked memory (RLIMIT_MEMLOCK, `ulimit
/// -l`), in bytes; `None` when unlimited or unknown.
pub fn memlock_limit() -> Option<u64> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the limit into the struct it is given,
    // which lives for the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } == 0;
    (ok && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
}

/// The machine's physical memory, in bytes, if known.
pub fn machine_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system constants.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (pages, page) = (u64::try_from(pages).ok()?, u64::try_from(page).ok()?);
    pages.checked_mul(page).filter(|&m| m > 0)
}

/// Why a runtime configuration cannot run a job: a value out of range
/// ([`RuntimeConfig::validate`]), a share that does not fit its placement,
/// or checkpoints that cannot be restored (see
/// [`RuntimeError::Config`](crate::runtime::RuntimeError::Config)).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value exceeds its maximum.
    AboveMaximum {
        /// The field of [`RuntimeConfig`].
        field: &'static str,
        /// Its value.
        value: usize,
        /// The maximum.
        max: usize,
    },
    /// A value is below its minimum.
    BelowMinimum {
        /// The field of [`RuntimeConfig`].
        field: &'static str,
        /// Its value.
        value: usize,
        /// The minimum.
        min: usize,
    },
    /// A count that must be at least 1 is 0.
    Zero {
        /// The field of [`RuntimeConfig`].
        field: &'static str,
    },
    /// A value is more memory than this process may lock
    /// (RLIMIT_MEMLOCK, `ulimit -l`).
    AboveMemlock {
        /// The field of [`RuntimeConfig`].
        field: &'static str,
        /// Its value, in bytes.
        value: u64,
        /// The limit, in bytes.
        memlock: u64,
    },
    /// A value per worker is more, for all workers, than the machine's
    /// memory.
    AboveMemory {
        /// The field of [`RuntimeConfig`].
        field: &'static str,
        /// Its value, in bytes per worker.
        value: u64,
        /// The workers.
        workers: usize,
        /// The machine's memory, in bytes.
        memory: u64,
    },
    /// This process may lock less memory than glommio needs to make a
    /// worker's executor.
    MemlockTooLow {
        /// The limit (RLIMIT_MEMLOCK), in bytes.
        memlock: u64,
        /// What glommio needs, in bytes.
        needed: u64,
    },
    /// The key space has fewer bins than the job has workers.
    FewerBinsThanWorkers {
        /// `bins_log2`.
        bins_log2: u8,
        /// The workers.
        workers: usize,
    },
    /// A cluster job with checkpoints was started directly, not by the
    /// coordinator's node agent.
    NeedsCoordinator,
    /// A cluster share with checkpoints came without the coordinator's
    /// checkpoint plan.
    NoCheckpointPlan,
    /// The node of the placement this share runs has no worker.
    NoWorkers {
        /// Its index in the placement.
        node: usize,
    },
    /// The checkpoint to restore was taken with another worker count and
    /// holds records ahead of its barrier (taken while a live recovery
    /// replayed), which only the workers that took it can skip.
    RescaleAhead {
        /// The dataflow.
        dataflow: String,
        /// The checkpoint.
        checkpoint: u64,
        /// Workers of the run that took it.
        taken: usize,
        /// Workers of this run.
        workers: usize,
    },
    /// The job's checkpoints could not be read or cleared.
    Checkpoints(CheckpointError),
    /// The restored checkpoint's assignment of bins is not one.
    Assignment(AssignmentError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::AboveMaximum { field, value, max } => {
                write!(f, "{field} = {value} exceeds the maximum of {max}")
            }
            ConfigError::BelowMinimum { field, value, min } => {
                write!(f, "{field} = {value} is below the minimum of {min}")
            }
            ConfigError::Zero { field } => write!(f, "{field} must be at least 1"),
            ConfigError::AboveMemlock { field, value, memlock } => write!(
                f,
                "{field} = {value} is more than the {memlock} bytes this process may lock in memory \
                 (RLIMIT_MEMLOCK, `ulimit -l`): glommio locks it for io_uring"
            ),
            ConfigError::AboveMemory { field, value, workers, memory } => write!(
                f,
                "{field} = {value} for each of {workers} workers is more than the machine's memory \
                 ({memory} bytes)"
            ),
            ConfigError::MemlockTooLow { memlock, needed } => write!(
                f,
                "this process may lock only {memlock} bytes in memory (RLIMIT_MEMLOCK, `ulimit -l`); \
                 glommio needs {needed} to start a worker: raise `ulimit -l`"
            ),
            ConfigError::FewerBinsThanWorkers { bins_log2, workers } => {
                write!(f, "bins_log2 = {bins_log2} gives fewer bins than the {workers} workers")
            }
            ConfigError::NeedsCoordinator => {
                f.write_str("a cluster job with checkpoints runs under the coordinator (`spate node`)")
            }
            ConfigError::NoCheckpointPlan => {
                f.write_str("a cluster job with checkpoints needs the coordinator's checkpoint plan")
            }
            ConfigError::NoWorkers { node } => write!(f, "node {node} of the placement runs no worker"),
            ConfigError::RescaleAhead { dataflow, checkpoint, taken, workers } => write!(
                f,
                "checkpoint {checkpoint} of `{dataflow}` was taken with {taken} workers while a recovery \
                 replayed; it restores onto {taken} workers only, not {workers} (restore it with {taken}, \
                 and rescale from the next checkpoint)"
            ),
            ConfigError::Checkpoints(e) => e.fmt(f),
            ConfigError::Assignment(e) => write!(f, "the checkpoint's assignment of bins: {e}"),
        }
    }
}

impl ConfigError {
    /// The field of [`RuntimeConfig`] the error names (its message starts
    /// with it), if it names one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ConfigError::AboveMaximum { field, .. }
            | ConfigError::BelowMinimum { field, .. }
            | ConfigError::Zero { field }
            | ConfigError::AboveMemlock { field, .. }
            | ConfigError::AboveMemory { field, .. } => Some(field),
            ConfigError::FewerBinsThanWorkers { .. } => Some("bins_log2"),
            _ => None,
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Checkpoints(e) => e.source(),
            _ => None,
        }
    }
}

impl From<CheckpointError> for ConfigError {
    fn from(e: CheckpointError) -> Self {
        ConfigError::Checkpoints(e)
    }
}
