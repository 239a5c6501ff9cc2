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
    fn flush(&mut self) {}
    fn push_burst(&mut self, recs: &mut Vec<(T, Meta)>) {
        let n = recs.len() as u64;
        self.local += n;
        if self.latency {
            let now = now_ns();
            for (_, meta) in recs.iter() {
                self.recorder.record(meta.ingest_ns, now);
            }
        } else {
            self.recorder.count(n);
        }
        recs.clear();
    }
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
///
/// With checkpoints, a file sink is exactly-once: at each barrier it writes
/// out what precedes it and appends `<checkpoint id> <file length>` to the
/// commit log beside the file (`<file>.commits`) before the checkpoint can
/// complete; a job restored from checkpoint `n` truncates the file to the
/// length committed with `n`, dropping what the failed run wrote after it,
/// which the restored job writes again. (Durability is the page cache's,
/// like the backup store's: a killed process loses nothing; a machine
/// crash can lose the tail.) Stdout cannot be taken back: it is
/// at-least-once.
struct TextSink<T> {
    format: Rc<dyn Fn(&T, &mut String)>,
    line: String,
    buf: Vec<u8>,
    target: TextTarget,
    recorder: LatencyRecorder,
    metrics: Arc<JobMetrics>,
    /// The checkpoint the job resumed from: the file is rolled back to it.
    restore: Option<Restore>,
    /// With checkpoints: the sink writes out what precedes each barrier
    /// before the checkpoint may complete.
    checkpointer: Option<Rc<Checkpointer>>,
}

enum TextTarget {
    Stdout,
    File(FileTarget),
}

struct FileTarget {
    path: PathBuf,
    /// The open file and its length.
    file: Option<(File, u64)>,
    /// The commit log, with checkpoints.
    commits: Option<File>,
}

/// `<path>.<what>-<pid>`: a temporary file beside `path`.
fn sibling(path: &std::path::Path, what: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{what}-{}", std::process::id()));
    PathBuf::from(s)
}

fn commits_path(path: &std::path::Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".commits");
    PathBuf::from(s)
}

impl FileTarget {
    /// Opens the file: afresh, or rolled back to the length committed with
    /// checkpoint `restore` (see [`Restore`]).
    fn open(&mut self, restore: Option<Restore>, logged: bool) -> Result<(), String> {
        if self.file.is_some() {
            return Ok(());
        }
        let path = &self.path;
        let err = |what: &str, p: &std::path::Path, e: std::io::Error| {
            format!("file sink {}: cannot {what}: {e}", p.display())
        };
        let cpath = commits_path(path);
        let restore = match restore {
            // A file a rescaled run never wrote before starts empty.
            Some(Restore::AtMost(_)) if !cpath.exists() => None,
            r => r,
        };
        let (file, len, log) = match restore {
            Some(r) => {
                let (id, at_most) = match r {
                    Restore::Exact(id) => (id, false),
                    Restore::AtMost(id) => (id, true),
                };
                let text = std::fs::read_to_string(&cpath).map_err(|e| err("read", &cpath, e))?;
                let mut keep = String::new();
                let mut len = None;
                for (n, l) in text.lines().enumerate() {
                    let parsed = l
                        .split_once(' ')
                        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
                    let Some((c, at)) = parsed else {
                        // A torn last line is what a kill while appending leaves.
                        if n + 1 == text.lines().count() {
                            break;
                        }
                        return Err(format!(
                            "file sink {}: line {}: not `<checkpoint> <length>`",
                            cpath.display(),
                            n + 1
                        ));
                    };
                    if c <= id {
                        keep.push_str(l);
                        keep.push('\n');
                        if at_most {
                            len = Some(at);
                        }
                    }
                    if c == id {
                        len = Some(at);
                    }
                }
                let len = if at_most { Some(len.unwrap_or(0)) } else { len };
                let Some(len) = len else {
                    return Err(format!(
                        "file sink {}: the commit log has no entry for checkpoint {id}: cannot resume exactly once",
                        path.display()
                    ));
                };
                let old = File::open(path).map_err(|e| err("open", path, e))?;
                let have = old.metadata().map_err(|e| err("stat", path, e))?.len();
                if have < len {
                    return Err(format!(
                        "file sink {}: {have} bytes, but checkpoint {id} committed {len}: output was lost",
                        path.display()
                    ));
                }
                // The committed prefix goes into a new file that replaces the
                // old one: a process of the failed run that is still alive (a
                // node declared failed that comes back) writes into the old
                // file, which no one reads, never into this one.
                let tmp = sibling(path, "restore");
                let mut f = File::create(&tmp).map_err(|e| err("create", &tmp, e))?;
                std::io::copy(&mut std::io::Read::take(old, len), &mut f)
                    .map_err(|e| err("copy", path, e))?;
                std::fs::rename(&tmp, path).map_err(|e| err("replace", path, e))?;
                let ctmp = sibling(&cpath, "restore");
                std::fs::write(&ctmp, keep).map_err(|e| err("write", &ctmp, e))?;
                std::fs::rename(&ctmp, &cpath).map_err(|e| err("replace", &cpath, e))?;
                let log = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&cpath)
                    .map_err(|e| err("open", &cpath, e))?;
                (f, len, Some(log))
            }
            None => {
                // A new file that replaces any old one, not the old one
                // truncated: a process of a failed run that is still alive
                // (a zombie, declared failed before any checkpoint
                // completed) writes into the old file, never into this
                // one. The simulator found the truncation: such a zombie's
                // last outputs landed in its replacement's file.
                let tmp = sibling(path, "create");
                let f = File::create(&tmp).map_err(|e| err("create", &tmp, e))?;
                std::fs::rename(&tmp, path).map_err(|e| err("replace", path, e))?;
                let log = if logged {
                    let ctmp = sibling(&cpath, "create");
                    let log = File::create(&ctmp).map_err(|e| err("create", &ctmp, e))?;
                    std::fs::rename(&ctmp, &cpath).map_err(|e| err("replace", &cpath, e))?;
                    Some(log)
                } else {
                    None
                };
                (f, 0, log)
            }
        };
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len)).map_err(|e| err("seek", path, e))?;
        self.file = Some((file, len));
        self.commits = log;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        if let Some((f, len)) = &mut self.file {
            f.write_all(bytes)
                .map_err(|e| format!("file sink {}: cannot write: {e}", self.path.display()))?;
            *len += bytes.len() as u64;
        }
        Ok(())
    }

    fn commit(&mut self, id: u64) -> Result<(), String> {
        let (Some((_, len)), Some(log)) = (&self.file, &mut self.commits) else { return Ok(()) };
        log.write_all(format!("{id} {len}\n").as_bytes())
            .map_err(|e| format!("file sink {}: cannot write its commit log: {e}", self.path.display()))
    }
}

impl<T> TextSink<T> {
    fn open(&mut self) -> Result<(), String> {
        let logged = self.checkpointer.is_some();
        match &mut self.target {
            TextTarget::Stdout => Ok(()),
            TextTarget::File(t) => t.open(self.restore, logged),
        }
    }

    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let res = self.open().and_then(|()| match &mut self.target {
            TextTarget::Stdout => std::io::stdout()
                .lock()
                .write_all(&self.buf)
                .map_err(|e| format!("sink writing to stdout: {e}")),
            TextTarget::File(t) => t.write(&self.buf),
        });
        if let Err(e) = res {
            self.metrics.fail(e);
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
    fn flush(&mut self) {}
    fn barrier(&mut self, id: u64) {
        // The checkpoint completes only once the output that precedes it is
        // written and its length logged: a crash after it never loses that
        // output, and a restore from it drops what follows.
        self.write_out();
        let committed = self.open().and_then(|()| match &mut self.target {
            TextTarget::File(t) => t.commit(id),
            TextTarget::Stdout => Ok(()),
        });
        if let Err(e) = committed {
            self.metrics.fail(e);
        }
        if let Some(c) = &self.checkpointer {
            if let Err(e) = c.commit(id) {
                self.metrics.fail(e.to_string());
            }
        }
    }
    fn finish(&mut self) {
        self.write_out();
        // An empty output still produces its (empty) file.
        if let Err(e) = self.open() {
            self.metrics.fail(e);
        }
        if let TextTarget::File(t) = &mut self.target {
            if let Some((f, _)) = &mut t.file {
                if let Err(e) = f.sync_data() {
                    self.metrics.fail(format!("file sink {}: {e}", t.path.display()));
                }
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
    fn flush(&mut self) {}
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

/// How a file sink's file is rolled back when the job restores checkpoint
/// `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restore {
    /// To the length committed with `id`, which its log must hold (the
    /// worker that wrote the file took the checkpoint).
    Exact(u64),
    /// To the last length committed with `id` or before, if any, else
    /// empty: a job restored onto another number of workers, where a file
    /// may have been written by an earlier run of this worker count (kept
    /// up to what it committed then) or never.
    AtMost(u64),
}

/// A file sink restored from checkpoint `id`, which `taken` workers took,
/// onto `workers` workers (decision 42): worker `worker`, whose file is
/// `mine`, rolls back the old workers' files `i ≡ worker (mod workers)`
/// that are not `mine` to what they committed by `id`, in place: they are
/// final, no one writes them again. Its own file continues from what it
/// committed by `id`. A key's outputs up to the checkpoint stay in its
/// old worker's file, those after it go to its new worker's; each is
/// written once.
fn restore_rescaled(
    path: &std::path::Path,
    mine: &std::path::Path,
    id: u64,
    taken: usize,
    worker: usize,
    workers: usize,
) -> Result<(), String> {
    for old in (worker..taken).step_by(workers) {
        let theirs = part_path(path, old, taken);
        if theirs != mine {
            FileTarget { path: theirs, file: None, commits: None }.open(Some(Restore::AtMost(id)), true)?;
        }
    }
    Ok(())
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
                restore: None,
                checkpointer: participant(ctx),
            }) as BoxPush<T>
        });
    }

    fn sink_file(&self, name: &str, path: impl Into<PathBuf>, format: impl Fn(&T, &mut String) + 'static) {
        let format: Rc<dyn Fn(&T, &mut String)> = Rc::new(format);
        let path = path.into();
        self.sink(name, move |ctx| {
            let mine = part_path(&path, ctx.worker, ctx.workers);
            let mut restore = ctx.checkpointer.and_then(|c| c.restoring()).map(Restore::Exact);
            if let (Some(Restore::Exact(id)), Some(taken)) =
                (restore, ctx.checkpointer.and_then(|c| c.restored_workers()))
            {
                if taken != ctx.workers {
                    restore = Some(Restore::AtMost(id));
                    if let Err(e) = restore_rescaled(&path, &mine, id, taken, ctx.worker, ctx.workers) {
                        ctx.metrics.fail(e);
                    }
                }
            }
            Box::new(TextSink {
                format: format.clone(),
                line: String::new(),
                buf: Vec::with_capacity(TEXT_BUFFER_BYTES + 1024),
                target: TextTarget::File(FileTarget { path: mine, file: None, commits: None }),
                recorder: LatencyRecorder::new(ctx.metrics.clone()),
                metrics: ctx.metrics.clone(),
                restore,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &std::path::Path) -> FileTarget {
        FileTarget { path: path.to_path_buf(), file: None, commits: None }
    }

    #[test]
    fn a_restore_rolls_the_file_back_to_its_commit_and_fences_old_writers() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("out.txt");
        // A run writes, commits checkpoints 1 and 2, writes more, and dies.
        let mut t = target(&path);
        t.open(None, true).unwrap_or_else(|e| panic!("{e}"));
        t.write(b"a\nb\n").unwrap_or_else(|e| panic!("{e}"));
        t.commit(1).unwrap_or_else(|e| panic!("{e}"));
        t.write(b"c\n").unwrap_or_else(|e| panic!("{e}"));
        t.commit(2).unwrap_or_else(|e| panic!("{e}"));
        t.write(b"d\ne\n").unwrap_or_else(|e| panic!("{e}"));
        // It is not quite dead: it still holds its file.
        let (mut zombie, _) = t.file.take().unwrap_or_else(|| panic!("no file"));
        // The restored run resumes from checkpoint 1: the file is what 1
        // committed, and the log forgets 2.
        let mut r = target(&path);
        r.open(Some(Restore::Exact(1)), true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), "a\nb\n");
        let log = std::fs::read_to_string(commits_path(&path)).unwrap_or_default();
        assert_eq!(log, "1 4\n");
        r.write(b"c\n").unwrap_or_else(|e| panic!("{e}"));
        // The old writer's writes land in the replaced file, not this one.
        zombie.write_all(b"ZOMBIE\n").unwrap_or_else(|e| panic!("{e}"));
        r.write(b"x\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), "a\nb\nc\nx\n");
        // A checkpoint the log does not have cannot be resumed exactly once.
        let e = target(&path).open(Some(Restore::Exact(7)), true).err().unwrap_or_default();
        assert!(e.contains("no entry for checkpoint 7"), "{e}");
    }

    #[test]
    fn a_rescaled_restore_keeps_what_each_file_committed_by_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("out.txt");
        let ok = |r: Result<(), String>| r.unwrap_or_else(|e| panic!("{e}"));
        // An earlier run committed 3 and 5 in this file, then wrote more
        // (and committed 9, which never completed everywhere).
        let mut t = target(&path);
        ok(t.open(None, true));
        ok(t.write(b"a\n"));
        ok(t.commit(3));
        ok(t.write(b"b\n"));
        ok(t.commit(5));
        ok(t.write(b"c\n"));
        ok(t.commit(9));
        ok(t.write(b"d\n"));
        drop(t);
        // Restored onto another worker count from checkpoint 7: what it
        // had committed by 7 (5's length), and it goes on from there.
        let mut r = target(&path);
        ok(r.open(Some(Restore::AtMost(7)), true));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), "a\nb\n");
        assert_eq!(std::fs::read_to_string(commits_path(&path)).unwrap_or_default(), "3 2\n5 4\n");
        ok(r.write(b"e\n"));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), "a\nb\ne\n");
        // From a checkpoint before any it committed: empty.
        ok(target(&path).open(Some(Restore::AtMost(2)), true));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), "");
        // A file never written starts empty, with a log.
        let fresh = dir.path().join("new.txt");
        ok(target(&fresh).open(Some(Restore::AtMost(7)), true));
        assert_eq!(std::fs::read_to_string(&fresh).unwrap_or_default(), "");
        assert!(commits_path(&fresh).exists());
    }
}
