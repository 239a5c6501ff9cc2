//! `spate ctl` for a `spate run` process: its control socket, a Unix
//! socket beside its data (`<data_dir>/<query>.ctl`), which takes the
//! requests a cluster's coordinator takes — `assignment`, `scale <N>`,
//! `move <start> <end> <worker>`, each with `--max-bins B` — and runs them
//! on the job through [`Job::rescale`] and [`Job::move_bins_by`].
//!
//! One request per connection: a line in, then `ok` or `refused` on a
//! line and the answer's text. Connections are served one at a time, each
//! read bounded in bytes and time; a request that cannot be read or
//! parsed is refused and changes nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use spate_core::control::ctl::StepBounds;
use spate_core::control::plan::MAX_BINS_PER_STEP;
use spate_core::handoff::StepDone;
use spate_core::Job;
use spate_state::BinRange;

/// The longest request line taken.
const REQUEST_BYTES_MAX: u64 = 4096;
/// How long a connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one handoff step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The control socket of the job `query` whose data lives in `data_dir`.
pub fn socket_path(data_dir: &Path, query: &str) -> PathBuf {
    data_dir.join(format!("{query}.ctl"))
}

/// The socket, bound (a stale one from a process that is gone is
/// replaced; one that answers is another live process's, and refused).
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if UnixStream::connect(path).is_ok() {
        return Err(format!("{}: another `spate run` of this job answers there", path.display()));
    }
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let l = UnixListener::bind(path).map_err(|e| format!("{}: cannot listen: {e}", path.display()))?;
    l.set_nonblocking(true).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(l)
}

/// Serves `listener` for `job` until `stop` (polled every few ms), then
/// removes the socket at `path`.
pub fn serve(job: &Job, listener: &UnixListener, path: &Path, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((conn, _)) => answer(job, conn),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                eprintln!("{}: accept failed: {e}", path.display());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

fn answer(job: &Job, conn: UnixStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let mut line = String::new();
    let read = BufReader::new((&conn).take(REQUEST_BYTES_MAX)).read_line(&mut line);
    let (ok, text) = match read {
        Ok(0) => return,
        Ok(_) if !line.ends_with('\n') => {
            (false, format!("a request is one line of at most {REQUEST_BYTES_MAX} bytes"))
        }
        Ok(_) => match run(job, line.trim()) {
            Ok(t) => (true, t),
            Err(t) => (false, t),
        },
        Err(e) => (false, format!("cannot read the request: {e}")),
    };
    let mut conn = conn;
    let _ = conn.write_all(format!("{}\n{text}\n", if ok { "ok" } else { "refused" }).as_bytes());
}

/// Runs `request` on `job`: the answer, or why nothing changed.
pub fn run(job: &Job, request: &str) -> Result<String, String> {
    let mut words: Vec<&str> = request.split_whitespace().collect();
    let num = |s: &str, what: &str| s.parse::<u64>().map_err(|_| format!("`{s}` is not {what}"));
    let bounds = StepBounds::take(&mut words, StepBounds::bins(MAX_BINS_PER_STEP))?;
    let now = job
        .assignment()
        .ok_or("this job cannot move bins: it runs one worker (set [runtime] max_workers)")?;
    let t = Instant::now();
    let steps = match words.as_slice() {
        ["assignment"] => return Ok(describe(job)),
        ["scale", n] => {
            let n = num(n, "a number of workers")? as usize;
            job.rescale_sized(n, bounds, STEP_TIMEOUT).map_err(|e| format!("scale {n}: {e}"))?
        }
        ["move", start, end, to] => {
            let bins = BinRange::new(num(start, "a bin")? as u32, num(end, "a bin")? as u32);
            let to = num(to, "a worker")? as usize;
            let from = (0..now.workers())
                .find(|&w| {
                    let r = now.bins_of(w);
                    !bins.is_empty() && r.start <= bins.start && bins.end <= r.end
                })
                .ok_or_else(|| format!("no worker owns all of {bins}"))?;
            job.move_bins_sized(bins, from, to, bounds, STEP_TIMEOUT).map_err(|e| format!("move {bins}: {e}"))?
        }
        _ => {
            return Err(format!(
                "unknown request `{request}`: expected `assignment`, `scale <workers>` or `move <start> <end> <worker>`"
            ))
        }
    };
    Ok(report(request, &steps, t.elapsed(), &describe(job)))
}

fn report(request: &str, steps: &[StepDone], took: Duration, assignment: &str) -> String {
    if steps.is_empty() {
        return format!("nothing to move: the assignment is already that\n{assignment}");
    }
    let bins: u32 = steps.iter().map(|s| s.info.bins.len()).sum();
    let bytes: u64 = steps.iter().map(|s| s.bytes).sum();
    let mut text = format!(
        "{request}: moved {bins} bins ({bytes} bytes of state) in {} steps, {} ms",
        steps.len(),
        took.as_millis()
    );
    for s in steps {
        text.push_str(&format!(
            "\n  step {}: {} from worker {} to {}: {} bytes, {:.1} ms",
            s.info.version,
            s.info.bins,
            s.info.from,
            s.info.to,
            s.bytes,
            s.micros as f64 / 1000.0
        ));
    }
    text.push('\n');
    text.push_str(assignment);
    text
}

fn describe(job: &Job) -> String {
    let Some(a) = job.assignment() else { return "the job runs one worker".into() };
    let mut s = format!("assignment {} of {} bins:", a.version(), 1u64 << a.bins_log2());
    for w in 0..a.workers() {
        s.push_str(&format!("\n  worker {w}: {}", a.bins_of(w)));
    }
    s
}

/// Sends `request` to the control socket at `path` and waits at most
/// `timeout` for the answer: its text, or why there was none or it was
/// refused.
pub fn request(path: &Path, request: &str, timeout: Duration) -> Result<String, String> {
    let mut conn = UnixStream::connect(path).map_err(|e| {
        format!(
            "{}: no `spate run` of this job answers ({e}); is it running, with [runtime] max_workers?",
            path.display()
        )
    })?;
    conn.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    conn.write_all(format!("{request}\n").as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut answer = String::new();
    conn.take(1 << 20)
        .read_to_string(&mut answer)
        .map_err(|e| format!("{}: no answer to `{request}`: {e}", path.display()))?;
    match answer.split_once('\n') {
        Some(("ok", text)) => Ok(text.trim_end().to_string()),
        Some(("refused", text)) => Err(text.trim_end().to_string()),
        _ => Err(format!("{}: the answer to `{request}` was cut short", path.display())),
    }
}
