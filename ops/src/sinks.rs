//! Sinks: counting (with end-to-end latency), stdout, files, and the
//! embedding output handle.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use spate_core::checkpoint::Checkpointer;
use spate_core::metrics::{JobMetrics, LatencyRecorder};
use spate_core::push::{BoxPush, Push};
use spate_core::{now_ns, Data, InstanceCtx, Meta, Stream, Timestamp};

/// Bytes a text sink buffers before it writes.
const TEXT_BUFFER_BYTES: usize = 64 * 1024;

/// Counts records; with `latency`, also records each record's end-to-end
/// latency (now − ingest time) into the job's histogram.
struct CountSink {
    recorder: LatencyRecorder,
    latency: bool,
    total: Option<Arc<AtomicU64>>,
    local: u64,
}

impl<T> Push<T> for CountSink {
    #[inline]
    fn push(&mut self, _rec: T, meta: Meta) {
        self.local += 1;
        if self.latency {
            self.recorder.record(meta.ingest_ns, now_ns());
        } else {
            self.recorder.count(1);
        }
    }
    fn watermark(&mut self, _wm: Timestamp) {
        if !self.latency {
            self.recorder.maybe_publish(now_ns());
        }
    }
    fn barrier(&mut self, _id: u64) {}
    fn finish(&mut self) {
        self.recorder.publish();
        if let Some(t) = &self.total {
            t.fetch_add(self.local, Ordering::Relaxed);
        }
        self.local = 0;
    }
}

/// Registers a sink instance as a checkpoint participant, when the job
/// takes checkpoints.
fn participant(ctx: &InstanceCtx<'_>) -> Option<Rc<Checkpointer>> {
    let c = ctx.checkpointer?;
    c.register();
    Some(c.clone())
}

/// Writes one formatted line per record to a writer, in whole lines, so
/// that workers sharing stdout never interleave inside a line.
struct TextSink<T> {
    format: Rc<dyn Fn(&T, &mut String)>,
    line: String,
    buf: Vec<u8>,
    target: TextTarget,
    recorder: LatencyRecorder,
    metrics: Arc<JobMetrics>,
    /// The job resumed from a checkpoint: append to the file the failed run
    /// wrote instead of starting it afresh.
    append: bool,
    /// With checkpoints: the sink writes out what precedes each barrier
    /// before the checkpoint may complete.
    checkpointer: Option<Rc<Checkpointer>>,
}

enum TextTarget {
    Stdout,
    File(PathBuf, Option<File>),
}

impl<T> TextSink<T> {
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let res = match &mut self.target {
            TextTarget::Stdout => std::io::stdout().lock().write_all(&self.buf),
            TextTarget::File(path, f) => {
                if f.is_none() {
                    let opened = if self.append {
                        std::fs::OpenOptions::new().append(true).create(true).open(&*path)
                    } else {
                        File::create(&*path)
                    };
                    match opened {
                        Ok(file) => *f = Some(file),
                        Err(e) => {
                            self.metrics.fail(format!("file sink {}: {e}", path.display()));
                            self.buf.clear();
                            return;
                        }
                    }
                }
                match f.as_mut() {
                    Some(file) => file.write_all(&self.buf),
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = res {
            let what = match &self.target {
                TextTarget::Stdout => "stdout".to_string(),
                TextTarget::File(p, _) => p.display().to_string(),
            };
            self.metrics.fail(format!("sink writing to {what}: {e}"));
        }
        self.buf.clear();
    }
}

impl<T> Push<T> for TextSink<T> {
    fn push(&mut self, rec: T, meta: Meta) {
        self.line.clear();
        (self.format)(&rec, &mut self.line);
        self.buf.extend_from_slice(self.line.as_bytes());
        self.buf.push(b'\n');
        self.recorder.record(meta.ingest_ns, now_ns());
        if self.buf.len() >= TEXT_BUFFER_BYTES {
            self.write_out();
        }
    }
    fn watermark(&mut self, _wm: Timestamp) {}
    fn barrier(&mut self, id: u64) {
        // The checkpoint completes only once the output that precedes it is
        // written: a crash after it never loses that output.
        self.write_out();
        if let Some(c) = &self.checkpointer {
            if let Err(e) = c.commit(id) {
                self.metrics.fail(e);
            }
        }
    }
    fn finish(&mut self) {
        self.write_out();
        if let TextTarget::File(path, f) = &mut self.target {
            if f.is_none() {
                // An empty output still produces its (empty) file.
                let created = if self.append {
                    std::fs::OpenOptions::new().append(true).create(true).open(&*path)
                } else {
                    File::create(&*path)
                };
                if let Err(e) = created {
                    self.metrics.fail(format!("file sink {}: {e}", path.display()));
                }
            } else if let Some(Err(e)) = f.as_mut().map(|f| f.sync_data()) {
                self.metrics.fail(format!("file sink {}: {e}", path.display()));
            }
        }
        self.recorder.publish();
    }
}

/// The receiving end of an embedded dataflow's output.
pub struct OutputHandle<T> {
    rx: Receiver<T>,
}

impl<T> OutputHandle<T> {
    /// The next result; `None` once the job has ended and every result was
    /// taken.
    pub fn recv(&self) -> Option<T> {
        self.rx.recv().ok()
    }

    /// The next result within `timeout`: `Ok(None)` at the end of the job,
    /// `Err(TimedOut)` if nothing came in time.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<T>, TimedOut> {
        match self.rx.recv_timeout(timeout) {
            Ok(v) => Ok(Some(v)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => Err(TimedOut),
        }
    }

    /// Every remaining result, until the job ends.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.rx.iter()
    }
}

/// No result arrived within the time asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no result within the time-out")
    }
}

impl std::error::Error for TimedOut {}

/// The dataflow side of an [`OutputHandle`]: pass it to
/// [`SinkExt::output`] inside the build function.
pub struct OutputSink<T> {
    tx: SyncSender<T>,
}

impl<T> Clone for OutputSink<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

/// A bounded output for an embedded dataflow: `capacity` results may wait;
/// beyond that the sink blocks its worker (backpressure).
pub fn output<T: Send>(capacity: usize) -> (OutputSink<T>, OutputHandle<T>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
    (OutputSink { tx }, OutputHandle { rx })
}

struct OutputPush<T> {
    tx: Option<SyncSender<T>>,
    recorder: LatencyRecorder,
}

impl<T> Push<T> for OutputPush<T> {
    fn push(&mut self, rec: T, meta: Meta) {
        self.recorder.record(meta.ingest_ns, now_ns());
        if let Some(tx) = &self.tx {
            if tx.send(rec).is_err() {
                // The embedding program dropped its handle: results are no
                // longer wanted.
                self.tx = None;
            }
        }
    }
    fn watermark(&mut self, _wm: Timestamp) {}
    fn barrier(&mut self, _id: u64) {}
    fn finish(&mut self) {
        self.tx = None;
        self.recorder.publish();
    }
}

/// Sinks on a stream.
pub trait SinkExt<T: Data> {
    /// Counts records (see the job's metrics); with `latency`, records each
    /// one's end-to-end latency. `total`, if given, receives the count.
    fn sink_count(&self, name: &str, latency: bool, total: Option<Arc<AtomicU64>>);
    /// One line per record on stdout, formatted by `format`.
    fn sink_stdout(&self, name: &str, format: impl Fn(&T, &mut String) + 'static);
    /// One line per record into a file, formatted by `format`. With one
    /// worker the file is `path`; with several, worker `w` writes
    /// `path.w` (see [`part_path`]).
    fn sink_file(&self, name: &str, path: impl Into<PathBuf>, format: impl Fn(&T, &mut String) + 'static);
    /// Results to the [`OutputHandle`] paired with `sink`.
    fn output(&self, name: &str, sink: &OutputSink<T>)
    where
        T: Send;
}

/// The file worker `worker` of `workers` writes for a file sink at `path`.
pub fn part_path(path: &std::path::Path, worker: usize, workers: usize) -> PathBuf {
    if workers == 1 {
        path.to_path_buf()
    } else {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{worker}"));
        PathBuf::from(s)
    }
}

impl<T: Data> SinkExt<T> for Stream<T> {
    fn sink_count(&self, name: &str, latency: bool, total: Option<Arc<AtomicU64>>) {
        self.sink(name, move |ctx| {
            Box::new(CountSink {
                recorder: LatencyRecorder::new(ctx.metrics.clone()),
                latency,
                total: total.clone(),
                local: 0,
            }) as BoxPush<T>
        });
    }

    fn sink_stdout(&self, name: &str, format: impl Fn(&T, &mut String) + 'static) {
        let format: Rc<dyn Fn(&T, &mut String)> = Rc::new(format);
        self.sink(name, move |ctx| {
            Box::new(TextSink {
                format: format.clone(),
                line: String::new(),
                buf: Vec::with_capacity(TEXT_BUFFER_BYTES + 1024),
                target: TextTarget::Stdout,
                recorder: LatencyRecorder::new(ctx.metrics.clone()),
                metrics: ctx.metrics.clone(),
                append: false,
                checkpointer: participant(ctx),
            }) as BoxPush<T>
        });
    }

    fn sink_file(&self, name: &str, path: impl Into<PathBuf>, format: impl Fn(&T, &mut String) + 'static) {
        let format: Rc<dyn Fn(&T, &mut String)> = Rc::new(format);
        let path = path.into();
        self.sink(name, move |ctx| {
            Box::new(TextSink {
                format: format.clone(),
                line: String::new(),
                buf: Vec::with_capacity(TEXT_BUFFER_BYTES + 1024),
                target: TextTarget::File(part_path(&path, ctx.worker, ctx.workers), None),
                recorder: LatencyRecorder::new(ctx.metrics.clone()),
                metrics: ctx.metrics.clone(),
                append: ctx.checkpointer.is_some_and(|c| c.restoring().is_some()),
                checkpointer: participant(ctx),
            }) as BoxPush<T>
        });
    }

    fn output(&self, name: &str, sink: &OutputSink<T>)
    where
        T: Send,
    {
        let tx = sink.tx.clone();
        self.sink(name, move |ctx| {
            Box::new(OutputPush { tx: Some(tx.clone()), recorder: LatencyRecorder::new(ctx.metrics.clone()) })
                as BoxPush<T>
        });
    }
}
