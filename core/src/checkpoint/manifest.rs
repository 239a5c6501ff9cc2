//! A job's [`Manifest`]s (a complete checkpoint: its id, worker count,
//! source partitions and offsets and receivers' counts ahead) and its checkpoint files on
//! disk: where they live, the latest complete one, the highest id stored,
//! and their removal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use spate_state::{BackupStore, BinRange, Durability};

use super::error::CheckpointError;

const MANIFEST_MAGIC: &str = "spate-checkpoint-manifest 1";

/// A complete checkpoint of a job, as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The checkpoint id.
    pub id: u64,
    /// Workers of the job that took it.
    pub workers: usize,
    /// Partitions of each source: the job's workers when it first started,
    /// kept across restores onto other worker counts (see
    /// `crate::source::SourceRunner`).
    pub partitions: usize,
    /// Per worker, the bins it owned (in worker order; see
    /// [`crate::assignment::Assignment`]), and the assignment's version.
    /// `None`: the uniform assignment of `workers` (what a manifest without
    /// `range` lines means).
    pub assignment: Option<(u64, Vec<BinRange>)>,
    /// `(source, partition) -> offset` to resume from.
    pub offsets: BTreeMap<(String, usize), u64>,
    /// `(edge, producer, consumer) -> records`: with live recovery, how
    /// many records of `producer`'s stream on `edge` the `consumer`
    /// worker's state already held beyond the checkpoint's barrier (it was
    /// skipping a replacement's replay of what it had taken before; see
    /// `crate::replay`). A worker restored from this checkpoint skips them
    /// when the stream is replayed to it. Absent: none.
    pub ahead: BTreeMap<(usize, usize, usize), u64>,
}

impl Manifest {
    /// The manifest as text (what its file holds).
    pub fn encode(&self) -> String {
        let mut s = format!("{MANIFEST_MAGIC}\nid {}\nworkers {}\n", self.id, self.workers);
        if self.partitions != self.workers {
            let _ = writeln!(s, "partitions {}", self.partitions);
        }
        if let Some((version, ranges)) = &self.assignment {
            let _ = writeln!(s, "assignment {version}");
            for (w, r) in ranges.iter().enumerate() {
                let _ = writeln!(s, "range {w} {} {}", r.start, r.end);
            }
        }
        for ((name, w), off) in &self.offsets {
            let _ = writeln!(s, "source {w} {off} {name}");
        }
        for ((edge, producer, consumer), n) in &self.ahead {
            let _ = writeln!(s, "ahead {edge} {producer} {consumer} {n}");
        }
        s.push_str("end\n");
        s
    }

    /// Parses [`Manifest::encode`]'s text; errors name `path` (the file,
    /// or where the text came from) and the line.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, CheckpointError> {
        let bad = |line: usize, what: &str| CheckpointError::Malformed {
            path: path.to_path_buf(),
            line,
            what: what.to_string(),
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, l)) if l == MANIFEST_MAGIC => {}
            _ => return Err(bad(1, "not a spate checkpoint manifest")),
        }
        let mut num = |key: &str| -> Result<u64, CheckpointError> {
            let (n, l) = lines.next().ok_or_else(|| bad(0, "truncated"))?;
            l.strip_prefix(key)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad(n, &format!("expected `{key} <number>`")))
        };
        let id = num("id ")?;
        let workers = num("workers ")? as usize;
        let mut offsets = BTreeMap::new();
        let mut ahead = BTreeMap::new();
        let mut ended = false;
        let mut partitions = workers;
        let mut assignment: Option<(u64, Vec<BinRange>)> = None;
        for (n, l) in lines {
            if l == "end" {
                ended = true;
                break;
            }
            if let Some(p) = l.strip_prefix("partitions ") {
                partitions = p.parse().ok().filter(|&p| p > 0).ok_or_else(|| bad(n, "bad partitions"))?;
                continue;
            }
            if let Some(v) = l.strip_prefix("assignment ") {
                let v = v.parse().map_err(|_| bad(n, "expected `assignment <version>`"))?;
                assignment = Some((v, Vec::new()));
                continue;
            }
            if let Some(rest) = l.strip_prefix("range ") {
                let f: Vec<u32> =
                    rest.split(' ').map(str::parse).collect::<Result<_, _>>().unwrap_or_default();
                let (&[w, start, end], Some((_, ranges))) = (&f[..], assignment.as_mut()) else {
                    return Err(bad(
                        n,
                        "expected `range <worker> <start> <end>` after `assignment <version>`",
                    ));
                };
                if w as usize != ranges.len() || end < start {
                    return Err(bad(n, "ranges must follow in worker order, each `start <= end`"));
                }
                ranges.push(BinRange::new(start, end));
                continue;
            }
            if let Some(rest) = l.strip_prefix("ahead ") {
                let f: Vec<u64> =
                    rest.split(' ').map(str::parse).collect::<Result<_, _>>().unwrap_or_default();
                let [edge, producer, consumer, count] = f[..] else {
                    return Err(bad(n, "expected `ahead <edge> <producer> <consumer> <records>`"));
                };
                ahead.insert((edge as usize, producer as usize, consumer as usize), count);
                continue;
            }
            let mut parts = l.splitn(4, ' ');
            let (Some("source"), Some(w), Some(off), Some(name)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(n, "expected `source <partition> <offset> <name>`"));
            };
            let w: usize = w.parse().map_err(|_| bad(n, "bad partition"))?;
            let off: u64 = off.parse().map_err(|_| bad(n, "bad offset"))?;
            offsets.insert((name.to_string(), w), off);
        }
        if !ended {
            return Err(bad(0, "truncated (no `end` line)"));
        }
        if assignment.as_ref().is_some_and(|(_, r)| r.len() != workers) {
            return Err(bad(0, "the assignment's ranges are not one per worker"));
        }
        Ok(Manifest { id, workers, partitions, assignment, offsets, ahead })
    }

    /// An empty manifest of checkpoint `id` of a job of `workers` (as many
    /// source partitions).
    pub fn new(id: u64, workers: usize) -> Manifest {
        Manifest {
            id,
            workers,
            partitions: workers,
            assignment: None,
            offsets: BTreeMap::new(),
            ahead: BTreeMap::new(),
        }
    }

    /// Adds another node's part of the same checkpoint.
    pub fn merge(&mut self, part: &Manifest) {
        // Every part records the same assignment (that of the job when
        // the checkpoint was requested); the newest wins.
        if part.assignment.as_ref().map(|a| a.0) > self.assignment.as_ref().map(|a| a.0) {
            self.assignment = part.assignment.clone();
        }
        // So does every part its sources' partitions.
        if part.workers == self.workers {
            self.partitions = part.partitions;
        }
        self.offsets.extend(part.offsets.iter().map(|(k, v)| (k.clone(), *v)));
        self.ahead.extend(part.ahead.iter().map(|(k, v)| (*k, *v)));
    }

    /// Records of `producer`'s stream on `edge` that `consumer`'s restored
    /// state already holds beyond the barrier (see [`Manifest::ahead`]).
    pub fn ahead_of(&self, edge: usize, producer: usize, consumer: usize) -> u64 {
        self.ahead.get(&(edge, producer, consumer)).copied().unwrap_or(0)
    }
}

/// Where a job's checkpoints live under the data directory.
pub fn checkpoint_dir(data_dir: &Path, dataflow: &str) -> PathBuf {
    data_dir.join(dataflow).join("checkpoints")
}

pub(super) fn manifest_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("manifest-{id:020}"))
}

/// The highest complete checkpoint in `dir`, if any. A manifest that does
/// not parse is an error naming it (never silently skipped).
pub fn latest_manifest(dir: &Path) -> Result<Option<Manifest>, CheckpointError> {
    let read_dir =
        |source| CheckpointError::Io { op: "read checkpoint directory", path: dir.to_path_buf(), source };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_dir(e)),
    };
    let mut best: Option<PathBuf> = None;
    for entry in entries {
        let entry = entry.map_err(read_dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("manifest-") && !name.ends_with(".tmp") {
            let p = entry.path();
            if best.as_ref().is_none_or(|b| p > *b) {
                best = Some(p);
            }
        }
    }
    let Some(path) = best else { return Ok(None) };
    let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io {
        op: "read checkpoint manifest",
        path: path.clone(),
        source,
    })?;
    Manifest::parse(&path, &text).map(Some)
}

/// The highest checkpoint id any instance of the job has stored in the
/// backup stores of `workers` workers. A run killed in the middle of a
/// checkpoint can leave some instances with a complete checkpoint newer than
/// the last complete manifest; the resumed run numbers its checkpoints above
/// it, so the backup stores accept them.
pub fn highest_stored_id(data_dir: &Path, dataflow: &str, workers: usize) -> Result<u64, CheckpointError> {
    let mut max = 0;
    for w in 0..workers {
        let dir = data_dir.join(dataflow).join("backup").join(format!("w{w}"));
        if !dir.exists() {
            continue;
        }
        let backup = BackupStore::open(&dir, Durability::PageCache)
            .map_err(|source| CheckpointError::OpenBackup { path: dir.clone(), source })?;
        for instance in backup.instances() {
            max = max.max(backup.complete_checkpoints(&instance).last().copied().unwrap_or(0));
        }
    }
    Ok(max)
}

/// Removes a job's checkpoints (after it finished, nothing is left to
/// restore).
pub fn remove_checkpoints(data_dir: &Path, dataflow: &str) -> Result<(), CheckpointError> {
    let dir = data_dir.join(dataflow);
    for sub in ["checkpoints", "backup"] {
        let p = dir.join(sub);
        match std::fs::remove_dir_all(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CheckpointError::Io { op: "remove", path: p, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_rejects_damage() {
        let mut offsets = BTreeMap::new();
        offsets.insert(("gen with spaces".to_string(), 1), 42);
        offsets.insert(("gen".to_string(), 0), 7);
        let mut m =
            Manifest { id: 9, workers: 2, partitions: 2, assignment: None, offsets, ahead: BTreeMap::new() };
        m.ahead.insert((1, 2, 0), 222);
        m.ahead.insert((0, 3, 1), 5);
        let p = Path::new("m");
        assert_eq!(Manifest::parse(p, &m.encode()).ok(), Some(m.clone()));
        let text = m.encode();
        let error = |text: &str| Manifest::parse(p, text).err().map(|e| e.to_string()).unwrap_or_default();
        let truncated = &text[..text.len() - 4];
        let e = error(truncated);
        assert!(e.contains("truncated") || e.contains("line"), "{e}");
        let e = error(&text.replace("workers 2", "workers x"));
        assert!(e.contains("workers"), "{e}");
        let e = error(&text.replace("ahead 1 2 0 222", "ahead 1 2 0"));
        assert!(e.contains("ahead"), "{e}");
        assert!(Manifest::parse(p, "hello").is_err());
        // A job restored onto 3 workers keeps its sources' 2 partitions.
        let rescaled = Manifest { workers: 3, ..m.clone() };
        assert!(rescaled.encode().contains("partitions 2\n"), "{}", rescaled.encode());
        assert_eq!(Manifest::parse(p, &rescaled.encode()).ok(), Some(rescaled.clone()));
        let e = error(&rescaled.encode().replace("partitions 2", "partitions 0"));
        assert!(e.contains("partitions"), "{e}");
        // An assignment after a handoff: its ranges, one per worker.
        let ranges = vec![BinRange::new(0, 100), BinRange::new(100, 4096)];
        let moved = Manifest { assignment: Some((3, ranges)), ..m.clone() };
        assert!(
            moved.encode().contains("assignment 3\nrange 0 0 100\nrange 1 100 4096\n"),
            "{}",
            moved.encode()
        );
        assert_eq!(Manifest::parse(p, &moved.encode()).ok(), Some(moved.clone()));
        let e = error(&moved.encode().replace("range 1 100 4096\n", ""));
        assert!(e.contains("one per worker"), "{e}");
        let e = error(&moved.encode().replace("range 1 100", "range 2 100"));
        assert!(e.contains("worker order"), "{e}");
    }
}
