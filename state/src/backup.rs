//! The backup store: receives checkpoint chunks of possibly many operator
//! instances, checks every chunk on receipt, keeps each checkpoint in its
//! own file (or in memory) and acknowledges a checkpoint only once it is
//! whole and stored with the configured [`Durability`].
//!
//! # Files
//!
//! Under the store's directory, instance `i` has the directory named by the
//! hex of `i`'s bytes (any instance id is a safe file name), holding one file
//! per checkpoint: `<id as 20 digits>.part` while chunks arrive, renamed to
//! `<id>.ckpt` when its trailer arrived and matched. A file is the chunks
//! as received, back to back. [`BackupStore::open`] drops `.part` files
//! (checkpoints that never completed, for example after a crash) and lists
//! the `.ckpt` files; restore checks everything again when it reads them.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::{
    check_trailer, compact_chain, decode_chunk, decode_page, page_chunk_fast, parse, ChunkKind, CkptHeader,
};
use crate::error::StateError;

/// How far a checkpoint is stored before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In this process's memory only (lost with it).
    Memory,
    /// Written to files (in the page cache; lost with the machine).
    PageCache,
    /// Written to files and fsynced (file and directory) before the ack.
    Fsync,
}

/// The acknowledgement of a complete, stored checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The instance id.
    pub instance: String,
    /// The checkpoint id.
    pub checkpoint: u64,
    /// Bytes stored for it.
    pub bytes: u64,
}

/// The bytes of a stored checkpoint.
pub(crate) enum StoredBytes<'a> {
    Mem(&'a [u8]),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for StoredBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            StoredBytes::Mem(b) => b,
            StoredBytes::Mapped(m) => m,
        }
    }
}

/// A stored, complete checkpoint.
struct Stored {
    base: u64,
    /// The bytes, for [`Durability::Memory`].
    mem: Option<Vec<u8>>,
}

/// A checkpoint being received.
struct Pending {
    id: u64,
    base: u64,
    header_payload: Vec<u8>,
    pages: u64,
    bytes: u64,
    /// The `.part` file, or the bytes in memory.
    file: Option<(std::io::BufWriter<File>, PathBuf)>,
    mem: Vec<u8>,
}

#[derive(Default)]
struct Instance {
    complete: BTreeMap<u64, Stored>,
    pending: Option<Pending>,
}

/// Checkpoints of many instances, received as chunks.
pub struct BackupStore {
    dir: PathBuf,
    durability: Durability,
    instances: BTreeMap<String, Instance>,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io { path: path.to_path_buf(), op, source }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

impl BackupStore {
    /// Opens (creating it if needed) a backup store in `dir`, listing the
    /// complete checkpoints already there and removing incomplete ones. With
    /// [`Durability::Memory`] the directory is not touched and the store
    /// starts empty.
    pub fn open(dir: impl Into<PathBuf>, durability: Durability) -> Result<Self, StateError> {
        let dir = dir.into();
        if durability == Durability::Memory {
            return Ok(Self { dir, durability, instances: BTreeMap::new() });
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create directory"))?;
        Self::list(dir, durability, true)
    }

    /// Opens another worker's backup store in `dir` to read it (a job
    /// restored onto another number of workers gathers bins from the
    /// stores of the workers that took the checkpoint): lists its complete
    /// checkpoints, and changes nothing — incomplete ones are skipped, not
    /// removed (their owner removes them).
    pub fn open_existing(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        Self::list(dir.into(), Durability::PageCache, false)
    }

    fn list(dir: PathBuf, durability: Durability, remove_partial: bool) -> Result<Self, StateError> {
        let mut s = Self { dir, durability, instances: BTreeMap::new() };
        for e in std::fs::read_dir(&s.dir).map_err(io(&s.dir, "list"))? {
            let e = e.map_err(io(&s.dir, "list"))?;
            let Some(instance) = e.file_name().to_str().and_then(unhex) else {
                continue;
            };
            let idir = e.path();
            let mut inst = Instance::default();
            for f in std::fs::read_dir(&idir).map_err(io(&idir, "list"))? {
                let path = f.map_err(io(&idir, "list"))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".part") {
                    if remove_partial {
                        std::fs::remove_file(&path).map_err(io(&path, "remove"))?;
                    }
                    continue;
                }
                let Some(id) = name.strip_suffix(".ckpt").and_then(|n| n.parse::<u64>().ok()) else {
                    continue;
                };
                // The base, from the header chunk (a bad file is listed with
                // base 0 and rejected when read).
                let base = read_base(&path).unwrap_or(0);
                inst.complete.insert(id, Stored { base, mem: None });
            }
            s.instances.insert(instance, inst);
        }
        Ok(s)
    }

    /// The store's durability.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn instance_dir(&self, instance: &str) -> PathBuf {
        self.dir.join(hex(instance))
    }

    fn path(&self, instance: &str, id: u64, ext: &str) -> PathBuf {
        self.instance_dir(instance).join(format!("{id:020}.{ext}"))
    }

    /// Receives the next chunk of `instance`'s checkpoint stream. Returns
    /// an [`Ack`] when the chunk was the trailer of a checkpoint that is now
    /// whole and stored. A header chunk starts a new checkpoint (dropping an
    /// unfinished one); a chunk that fails its checks drops the checkpoint
    /// being received and returns [`StateError::CorruptCheckpoint`].
    pub fn receive(&mut self, instance: &str, chunk: &[u8]) -> Result<Option<Ack>, StateError> {
        let result = self.receive_inner(instance, chunk);
        if result.is_err() {
            self.abort(instance);
        }
        result
    }

    fn receive_inner(&mut self, instance: &str, chunk: &[u8]) -> Result<Option<Ack>, StateError> {
        // The common chunk, a whole intact page, checked in one pass.
        if let Some(p) = self.pending(instance) {
            if page_chunk_fast(chunk).is_some_and(|(_, _, n)| n == chunk.len()) {
                p.pages += 1;
                p.append(chunk)?;
                return Ok(None);
            }
        }
        let pending_id = self.instances.get(instance).and_then(|i| i.pending.as_ref()).map_or(0, |p| p.id);
        let bad = |page, reason: String| StateError::CorruptCheckpoint {
            checkpoint: pending_id,
            bin: None,
            page,
            reason,
        };
        let (c, n) = decode_chunk(chunk).map_err(|r| bad(None, r))?;
        if n != chunk.len() {
            return Err(bad(None, format!("{} bytes after the chunk", chunk.len() - n)));
        }
        match c.kind {
            ChunkKind::Header => {
                self.abort(instance);
                let h = CkptHeader::decode(c.payload).map_err(|r| bad(None, r))?;
                let inst = self.instances.entry(instance.to_string()).or_default();
                if inst.complete.keys().next_back().is_some_and(|&last| h.id <= last) {
                    return Err(StateError::CorruptCheckpoint {
                        checkpoint: h.id,
                        bin: None,
                        page: None,
                        reason: "id not above the last complete checkpoint".into(),
                    });
                }
                let file = if self.durability == Durability::Memory {
                    None
                } else {
                    let dir = self.instance_dir(instance);
                    std::fs::create_dir_all(&dir).map_err(io(&dir, "create directory"))?;
                    let path = self.path(instance, h.id, "part");
                    let f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&path)
                        .map_err(io(&path, "create"))?;
                    Some((std::io::BufWriter::with_capacity(1 << 20, f), path))
                };
                let mut p = Pending {
                    id: h.id,
                    base: h.base,
                    header_payload: c.payload.to_vec(),
                    pages: 0,
                    bytes: 0,
                    file,
                    mem: Vec::new(),
                };
                p.append(chunk)?;
                if let Some(inst) = self.instances.get_mut(instance) {
                    inst.pending = Some(p);
                }
                Ok(None)
            }
            ChunkKind::Page => {
                let p =
                    self.pending(instance).ok_or_else(|| bad(None, "page chunk without a header".into()))?;
                decode_page(c.payload).map_err(|(page, r)| bad(page, r))?;
                p.pages += 1;
                p.append(chunk)?;
                Ok(None)
            }
            ChunkKind::Trailer => {
                let p = self.pending(instance).ok_or_else(|| bad(None, "trailer without a header".into()))?;
                check_trailer(c.payload, p.pages, &p.header_payload).map_err(|r| bad(None, r))?;
                p.append(chunk)?;
                let durability = self.durability;
                let Some(mut p) = self.instances.get_mut(instance).and_then(|i| i.pending.take()) else {
                    return Ok(None);
                };
                let mem = match p.file.take() {
                    None => Some(std::mem::take(&mut p.mem)),
                    Some((w, part)) => {
                        let f = w.into_inner().map_err(|e| StateError::Io {
                            path: part.clone(),
                            op: "write",
                            source: e.into_error(),
                        })?;
                        if durability == Durability::Fsync {
                            f.sync_all().map_err(io(&part, "fsync"))?;
                        }
                        let done = self.path(instance, p.id, "ckpt");
                        std::fs::rename(&part, &done).map_err(io(&part, "rename"))?;
                        if durability == Durability::Fsync {
                            let dir = self.instance_dir(instance);
                            File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir, "fsync"))?;
                        }
                        None
                    }
                };
                let inst = self.instances.entry(instance.to_string()).or_default();
                inst.complete.insert(p.id, Stored { base: p.base, mem });
                Ok(Some(Ack { instance: instance.to_string(), checkpoint: p.id, bytes: p.bytes }))
            }
        }
    }

    fn pending(&mut self, instance: &str) -> Option<&mut Pending> {
        self.instances.get_mut(instance)?.pending.as_mut()
    }

    /// Drops the checkpoint being received for `instance`, if any.
    pub fn abort(&mut self, instance: &str) {
        if let Some(p) = self.instances.get_mut(instance).and_then(|i| i.pending.take()) {
            if let Some((w, path)) = p.file {
                drop(w);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// The ids of `instance`'s complete checkpoints, ascending.
    pub fn complete_checkpoints(&self, instance: &str) -> Vec<u64> {
        self.instances.get(instance).map_or(Vec::new(), |i| i.complete.keys().copied().collect())
    }

    /// The instances with at least one complete checkpoint.
    pub fn instances(&self) -> Vec<String> {
        self.instances.iter().filter(|(_, i)| !i.complete.is_empty()).map(|(k, _)| k.clone()).collect()
    }

    /// The ids of the chain of checkpoint `id` (its full image first, `id`
    /// last).
    pub fn chain(&self, instance: &str, id: u64) -> Result<Vec<u64>, StateError> {
        let inst = self
            .instances
            .get(instance)
            .ok_or_else(|| StateError::NoCheckpoint { instance: instance.to_string() })?;
        let mut chain = vec![id];
        let mut cur = id;
        loop {
            let s = inst.complete.get(&cur).ok_or_else(|| StateError::CorruptCheckpoint {
                checkpoint: id,
                bin: None,
                page: None,
                reason: format!("checkpoint {cur} of its chain is missing"),
            })?;
            if s.base == 0 {
                break;
            }
            if s.base >= cur {
                return Err(StateError::CorruptCheckpoint {
                    checkpoint: cur,
                    bin: None,
                    page: None,
                    reason: "base not below id".into(),
                });
            }
            cur = s.base;
            chain.push(cur);
        }
        chain.reverse();
        Ok(chain)
    }

    /// `instance`'s complete checkpoint `id`, or the error that it is not
    /// one.
    fn complete(&self, instance: &str, id: u64) -> Result<&Stored, StateError> {
        self.instances.get(instance).and_then(|i| i.complete.get(&id)).ok_or_else(|| {
            StateError::CorruptCheckpoint {
                checkpoint: id,
                bin: None,
                page: None,
                reason: "not a complete checkpoint".into(),
            }
        })
    }

    /// The stored bytes (chunks) of `instance`'s complete checkpoint `id`.
    pub fn read(&self, instance: &str, id: u64) -> Result<std::borrow::Cow<'_, [u8]>, StateError> {
        let s = self.complete(instance, id)?;
        if let Some(m) = &s.mem {
            return Ok(std::borrow::Cow::Borrowed(m));
        }
        let path = self.path(instance, id, "ckpt");
        std::fs::read(&path).map(std::borrow::Cow::Owned).map_err(io(&path, "read"))
    }

    /// The stored bytes of a complete checkpoint, mapped from its file
    /// (no copy) or borrowed from memory. The file must not be changed
    /// while the map lives: backup files belong to this store.
    pub(crate) fn map(&self, instance: &str, id: u64) -> Result<StoredBytes<'_>, StateError> {
        let s = self.complete(instance, id)?;
        if let Some(m) = &s.mem {
            return Ok(StoredBytes::Mem(m));
        }
        let path = self.path(instance, id, "ckpt");
        let f = File::open(&path).map_err(io(&path, "open"))?;
        if f.metadata().map_err(io(&path, "stat"))?.len() == 0 {
            return Ok(StoredBytes::Mem(&[]));
        }
        // SAFETY: the file is a complete checkpoint of this backup store,
        // which never writes it again (compaction writes a new file and
        // renames it over); another process changing it would be a misuse
        // of the backup directory. Its contents are validated before use.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io(&path, "map"))?;
        Ok(StoredBytes::Mapped(map))
    }

    /// Mutable access to the stored bytes of a checkpoint kept in memory
    /// (for corruption tests).
    #[doc(hidden)]
    pub fn stored_bytes_mut(&mut self, instance: &str, id: u64) -> Option<&mut Vec<u8>> {
        self.instances.get_mut(instance)?.complete.get_mut(&id)?.mem.as_mut()
    }

    /// Path of the file of a complete checkpoint (none in memory).
    pub fn checkpoint_path(&self, instance: &str, id: u64) -> Option<PathBuf> {
        (self.durability != Durability::Memory).then(|| self.path(instance, id, "ckpt"))
    }

    /// Compacts the chain of `instance`'s latest complete checkpoint into
    /// one full image with the same id, validating every chunk, and removes
    /// the older checkpoints of that chain. Returns the id compacted (None
    /// if there is nothing to compact).
    pub fn compact(&mut self, instance: &str) -> Result<Option<u64>, StateError> {
        let Some(&id) = self.instances.get(instance).and_then(|i| i.complete.keys().next_back()) else {
            return Ok(None);
        };
        let chain = self.chain(instance, id)?;
        if chain.len() < 2 {
            return Ok(None);
        }
        let stored: Vec<_> = chain
            .iter()
            .map(|&c| self.read(instance, c).map(|b| (c, b.into_owned())))
            .collect::<Result<_, _>>()?;
        let parsed: Vec<_> = stored.iter().map(|(c, b)| parse(*c, b)).collect::<Result<_, _>>()?;
        let Some(full) = compact_chain(&parsed) else {
            return Ok(None);
        };
        let bytes: Vec<u8> = full.into_chunks().concat();
        // Store the image: write it beside, then replace.
        let mem = if self.durability == Durability::Memory {
            Some(bytes)
        } else {
            let part = self.path(instance, id, "part");
            let done = self.path(instance, id, "ckpt");
            let mut f = File::create(&part).map_err(io(&part, "create"))?;
            f.write_all(&bytes).map_err(io(&part, "write"))?;
            if self.durability == Durability::Fsync {
                f.sync_all().map_err(io(&part, "fsync"))?;
            }
            std::fs::rename(&part, &done).map_err(io(&part, "rename"))?;
            None
        };
        let older: Vec<u64> = chain[..chain.len() - 1].to_vec();
        let paths: Vec<_> = older.iter().filter_map(|&c| self.checkpoint_path(instance, c)).collect();
        if let Some(inst) = self.instances.get_mut(instance) {
            inst.complete.insert(id, Stored { base: 0, mem });
            for c in &older {
                inst.complete.remove(c);
            }
        }
        for p in paths {
            std::fs::remove_file(&p).map_err(io(&p, "remove"))?;
        }
        Ok(Some(id))
    }

    /// Removes `instance`'s complete checkpoints that neither are in the
    /// chain of checkpoint `id` nor come after it: what restoring `id` (or
    /// a later checkpoint, whose chain starts at or after `id`'s image)
    /// never reads. Returns how many were removed. Without this, every
    /// full image a store's chain starts afresh with would stay forever.
    pub fn retain_from(&mut self, instance: &str, id: u64) -> Result<usize, StateError> {
        let keep: HashSet<u64> = self.chain(instance, id)?.into_iter().collect();
        let Some(inst) = self.instances.get_mut(instance) else { return Ok(0) };
        let old: Vec<u64> = inst.complete.keys().copied().filter(|c| *c < id && !keep.contains(c)).collect();
        for c in &old {
            inst.complete.remove(c);
        }
        for &c in &old {
            if let Some(p) = self.checkpoint_path(instance, c) {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&p, "remove")(e)),
                }
            }
        }
        Ok(old.len())
    }
}

impl Pending {
    fn append(&mut self, chunk: &[u8]) -> Result<(), StateError> {
        self.bytes += chunk.len() as u64;
        match &mut self.file {
            None => self.mem.extend_from_slice(chunk),
            Some((w, path)) => w.write_all(chunk).map_err(io(path, "write"))?,
        }
        Ok(())
    }
}

/// The base id in the header chunk at the start of the file at `path`.
fn read_base(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut f = File::open(path).ok()?;
    let mut len = [0u8; 4];
    f.read_exact(&mut len).ok()?;
    let n = u32::from_le_bytes(len) as usize;
    if n > crate::checkpoint::CHUNK_MAX {
        return None;
    }
    let mut buf = vec![0u8; 4 + n];
    f.read_exact(&mut buf).ok()?;
    let mut chunk = len.to_vec();
    chunk.extend_from_slice(&buf);
    let (c, _) = decode_chunk(&chunk).ok()?;
    CkptHeader::decode(c.payload).ok().map(|h| h.base)
}
