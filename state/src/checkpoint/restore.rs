//! Restore: a store rebuilt from a checkpoint chain in a backup store, its
//! bins spread over threads.
//!
//! # Steps
//!
//! 1. **Framing** (the calling thread; a few header reads per page): each
//!    checkpoint of the chain is walked by [`walk`], which decodes and
//!    checks its header and trailer and locates its page chunks without
//!    reading their pages. The chain's links are checked and the store is
//!    created with the last header's layout.
//! 2. **Plan** (the calling thread; a few operations per page): the latest
//!    chunk of every page of the final layout, and the other chunks
//!    (superseded by a later checkpoint of the chain, or outside the final
//!    layout), which are only verified. No page may belong to two segments:
//!    that is what lets threads write bins without locks.
//! 3. **Bins** (every thread): threads take bins from a shared counter. For
//!    a bin, each page's chunk is verified (both crcs, in one pass over the
//!    page) and the page copied into the store; then the bin's records are
//!    scanned while they are still in cache (framing validated, lists
//!    walked; every record carries its hash, so no key is rehashed) and each
//!    table's index is built in a block of the store's arena, taken under a
//!    lock and filled without one. Then the threads verify the other chunks.
//! 4. **Merge** (the calling thread): indexes and key counts go into the
//!    store's tables.
//!
//! Every chunk of the chain is verified, used or not, and the store is
//! handed out only once every thread is done, so a fault anywhere fails the
//! restore with [`StateError::CorruptCheckpoint`] naming the checkpoint and,
//! where known, the bin and the page; nothing corrupt is loaded. With one
//! fault the error is the one a sequential restore gives. With several, the
//! one named is the first (damaged chunks before bad records, then in chain
//! and byte order, or bin order) among those found before the threads
//! stopped: they stop at the first fault any of them finds.
//!
//! # Why bins, and why this order
//!
//! At 1 GiB of state a sequential restore spent about a third of its time
//! copying pages (most of it page faults on fresh anonymous memory) and
//! half rebuilding indexes, which read every record back from memory after
//! the copy had evicted it from cache. Bins are independent (own segments,
//! own index blocks), so they are the unit of work: no locks on the data,
//! and a bin's pages are scanned right after they are copied, from cache.
//! Taking bins from a counter rather than cutting the range in equal parts
//! keeps threads busy when one of them is preempted (a shared VM) or bins
//! differ in size.
//!
//! # Threads
//!
//! [`restore_threads`]: the calling thread plus helpers, up to the
//! available parallelism and one thread per [`RESTORE_PAGES_PER_THREAD_MIN`]
//! pages. The available parallelism counts the CPUs the calling thread may
//! run on, and helpers inherit its affinity: a worker pinned to one core
//! restores on that core alone, as it did before, and does not take the
//! cores of other workers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{corrupt, seg_pages, walk, CkptHeader, Framed, PageChunk};
use crate::backup::BackupStore;
use crate::error::StateError;
use crate::keyspace::{bin_of, Bin};
use crate::store::dense::{self, DenseTable, PartInfo};
use crate::store::file::RestoreTarget;
use crate::store::index::SharedArena;
use crate::store::record::{
    u32_at, u64_at, Header, BLOCK_HEAD, FLAG_DEAD, HEADER, KIND_BLOCK, KIND_DENSE, KIND_LIST, KIND_PAD,
    KIND_VALUE, LIST_HEAD, NONE,
};
use crate::store::{hash_at, index_err, BinHeap, Seg, StateStore, StoreConfig, Table, PAGE_BYTES};

/// Pages of state per thread below which a restore uses fewer threads
/// (16 MiB: milliseconds of work, against tens of microseconds to start a
/// thread).
pub const RESTORE_PAGES_PER_THREAD_MIN: u64 = 4096;
/// Most threads one restore uses.
pub const RESTORE_THREADS_MAX: usize = 16;
/// Chunks outside the final layout verified per unit of work.
const OTHER_CHUNKS_PER_UNIT: usize = 256;
/// Most bytes of a file-backed restore's single write.
const WRITE_BYTES_MAX: usize = 1 << 20;

/// The threads a restore of `pages` pages uses (the calling thread
/// included): see the module documentation.
pub fn restore_threads(pages: u64) -> usize {
    let available = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let by_size = usize::try_from(pages / RESTORE_PAGES_PER_THREAD_MIN).unwrap_or(usize::MAX);
    available.min(RESTORE_THREADS_MAX).min(by_size).max(1)
}

impl StateStore {
    /// Rebuilds an instance's store from the latest complete checkpoint
    /// chain of `instance` in `backup`, into `config.dir` (its bins and
    /// segment size come from the checkpoint; `config.bins_log2` must
    /// match). Returns the store, the checkpoint's `meta` bytes and its id.
    /// A corrupt checkpoint is skipped for the previous complete one; if
    /// none can be loaded, the error of the latest is returned. The next
    /// checkpoint of the restored store is a full image. Runs on the
    /// calling thread and, for a large store, helper threads (see
    /// [`restore_threads`]).
    pub fn restore(
        config: StoreConfig,
        backup: &BackupStore,
        instance: &str,
    ) -> Result<(StateStore, Vec<u8>, u64), StateError> {
        let ids = backup.complete_checkpoints(instance);
        let mut first_err = None;
        for &id in ids.iter().rev() {
            match Self::restore_id(config.clone(), backup, instance, id) {
                Ok(r) => return Ok(r),
                Err(e @ StateError::CorruptCheckpoint { .. }) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_err.unwrap_or_else(|| StateError::NoCheckpoint { instance: instance.to_string() }))
    }

    /// As [`StateStore::restore`], from checkpoint `id` exactly (with its
    /// chain), without falling back.
    pub fn restore_id(
        config: StoreConfig,
        backup: &BackupStore,
        instance: &str,
        id: u64,
    ) -> Result<(StateStore, Vec<u8>, u64), StateError> {
        Self::restore_with(config, backup, instance, id, None)
    }

    /// As [`StateStore::restore_id`], on `threads` threads (`None`:
    /// [`restore_threads`]).
    pub(crate) fn restore_with(
        config: StoreConfig,
        backup: &BackupStore,
        instance: &str,
        id: u64,
        threads: Option<usize>,
    ) -> Result<(StateStore, Vec<u8>, u64), StateError> {
        let chain = backup.chain(instance, id)?;
        let stored: Vec<_> =
            chain.iter().map(|&c| backup.map(instance, c).map(|b| (c, b))).collect::<Result<_, _>>()?;
        let framed: Vec<Framed<'_>> = stored.iter().map(|(c, b)| walk(*c, b)).collect::<Result<_, _>>()?;
        if framed.first().is_some_and(|p| p.header.base != 0) {
            return Err(corrupt(id, None, None, "chain does not start with a full image"));
        }
        for w in framed.windows(2) {
            if w[1].header.base != w[0].header.id {
                return Err(corrupt(w[1].header.id, None, None, "chain link does not match its base"));
            }
        }
        let Some(last) = framed.last() else {
            return Err(StateError::NoCheckpoint { instance: instance.to_string() });
        };
        if last.header.bins_log2 != config.bins_log2 {
            return Err(StateError::InvalidConfig {
                field: "bins_log2",
                reason: format!(
                    "the checkpoint has {} and the config {}",
                    last.header.bins_log2, config.bins_log2
                ),
            });
        }
        let mut store = StateStore::from_header(config, &last.header)?;
        let plan = PagePlan::new(&framed)?;
        let threads = threads.unwrap_or_else(|| restore_threads(plan.layout_pages)).max(1);
        store.fill(id, &framed, &plan, threads)?;
        store.file.clear_dirty();
        store.chain.last = id;
        store.chain.need_full = true;
        Ok((store, last.header.meta.clone(), id))
    }

    /// An empty store with the layout and tables of `h` (pages not yet
    /// written, indexes empty).
    pub(crate) fn from_header(mut config: StoreConfig, h: &CkptHeader) -> Result<StateStore, StateError> {
        config.segment_bytes = 1usize << h.segment_log2;
        let mut store = StateStore::create(config, h.bins)?;
        let in_use = h.layout.iter().map(|b| b.segs.len()).sum();
        store.file.set_layout(h.next_segment, h.free.clone(), in_use)?;
        for (heap, b) in store.heaps.iter_mut().zip(&h.layout) {
            let capacity = b.segs.iter().map(|s| 1u64 << s.log2).sum();
            let end = b.segs.last().map_or(0, |s| s.loc + (1 << s.log2));
            let segs = crate::store::Segs::from(b.segs.clone());
            *heap = BinHeap { segs, capacity, tail: b.tail, end, used: b.used, dead: b.dead };
        }
        for t in &h.tables {
            store.tables.push(Table {
                name: t.name.clone(),
                sig: None,
                restored_sig: t.typed.clone(),
                unverified: t.typed.is_some(),
                bins: (0..h.bins.len()).map(|_| Default::default()).collect(),
                dense: None,
                len: 0,
            });
        }
        Ok(store)
    }

    /// Writes the pages of `plan` into this store (created by
    /// `from_header` from the last of `framed`) and builds its indexes, on
    /// `threads` threads, verifying every chunk (errors name checkpoint
    /// `id` for records).
    fn fill(
        &mut self,
        id: u64,
        framed: &[Framed<'_>],
        plan: &PagePlan<'_, '_>,
        threads: usize,
    ) -> Result<(), StateError> {
        let ntables = self.tables.len();
        let (bins_start, bins_log2) = (self.bins.start, self.config.bins_log2);
        let Self { file, heaps, index, .. } = self;
        let mut done: Vec<Done> = {
            let work = Work {
                id,
                framed,
                plan,
                heaps,
                bins_start,
                bins_log2,
                ntables,
                target: file.restore_target(),
                arena: SharedArena::new(index),
                next: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
            };
            std::thread::scope(|s| {
                let helpers: Vec<_> = (1..threads)
                    .filter_map(|i| {
                        // A helper that cannot start leaves its share to the
                        // others: the work is taken, not assigned.
                        std::thread::Builder::new()
                            .name(format!("spate-restore-{i}"))
                            .spawn_scoped(s, || work.run())
                            .ok()
                    })
                    .collect();
                let mut done = vec![work.run()];
                for h in helpers {
                    match h.join() {
                        Ok(d) => done.push(d),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                done
            })
        };
        if let Some(f) = done.iter_mut().filter_map(|d| d.fault.take()).min_by_key(|f| f.key) {
            return Err(f.error);
        }
        let mut pending = Vec::new();
        let mut dense = Vec::new();
        for d in done {
            for (bi, ti, ix) in d.indexes {
                let table = &mut self.tables[ti];
                table.len += ix.len();
                table.bins[bi] = ix;
            }
            pending.extend(d.pending);
            dense.extend(d.dense);
        }
        self.install_dense(id, dense)?;
        pending.sort_unstable();
        let mut live = Vec::new();
        for bi in pending {
            self.index_bin(bi, id, &mut live)?;
        }
        // A table is either dense or made of records.
        for t in &self.tables {
            if t.dense.is_some() && t.bins.iter().any(|ix| ix.len() > 0) {
                return Err(corrupt(
                    id,
                    None,
                    None,
                    format!("table {:?} holds both records and dense parts", t.name),
                ));
            }
        }
        Ok(())
    }

    /// Installs the dense parts the threads checked, `(bin index, one
    /// table's parts)`: the tables they belong to become dense tables of
    /// their slot sizes.
    fn install_dense(&mut self, id: u64, dense: Vec<(usize, Vec<PartInfo>)>) -> Result<(), StateError> {
        for (bi, parts) in dense {
            let Some(f) = parts.first() else {
                continue;
            };
            let (ti, key_len, val_len) = (usize::from(f.table), f.key_len, f.val_len);
            let table = &mut self.tables[ti];
            match &table.dense {
                None => {
                    table.dense = Some(DenseTable::new(key_len, val_len, self.bins, self.config.bins_log2))
                }
                Some(d) if (d.key_len, d.val_len) == (key_len, val_len) => {}
                Some(_) => {
                    let bin = self.bins.start + bi as u32;
                    return Err(corrupt(
                        id,
                        Some(bin),
                        None,
                        "dense parts of one table with other slot sizes",
                    ));
                }
            }
            self.install_dense_parts(ti, bi, &parts);
        }
        Ok(())
    }

    /// Builds the indexes of bin `bi` on this thread, growing the arena as
    /// needed (for the bins whose blocks the shared arena could not give).
    fn index_bin(&mut self, bi: usize, id: u64, live: &mut Vec<(u16, u64, u64)>) -> Result<(), StateError> {
        let bin = self.bins.start + bi as u32;
        let (bins_log2, ntables) = (self.config.bins_log2, self.tables.len());
        let Self { file, heaps, tables, index, .. } = self;
        let heap = &heaps[bi];
        let segs: Vec<(u64, &[u8])> =
            heap.segs.iter().map(|s| (s.loc, file.bytes(s.loc, 1usize << s.log2))).collect();
        let scan = BinScan { id, bin, bins_log2, ntables };
        // Its dense parts were taken by the thread that wrote the bin.
        scan.run(&segs, heap.tail, live, &mut Vec::new())?;
        for (ti, table) in tables.iter_mut().enumerate() {
            let n = live.iter().filter(|e| usize::from(e.0) == ti).count();
            if n == 0 {
                continue;
            }
            let ix = &mut table.bins[bi];
            ix.reserve(index, n, hash_at(file)).map_err(index_err)?;
            for &(_, hash, loc) in live.iter().filter(|e| usize::from(e.0) == ti) {
                ix.insert_new(index, hash, loc, hash_at(file)).map_err(index_err)?;
            }
            table.len += n;
        }
        Ok(())
    }
}

/// Where each chunk of a chain goes.
pub(crate) struct PagePlan<'f, 'a> {
    /// For each page of the segment file: the chain position and chunk of
    /// its latest version, for the pages of the final layout that have one.
    latest: Vec<Option<(u32, &'f PageChunk<'a>)>>,
    /// Every other chunk (chain position, chunk): verified only.
    others: Vec<(u32, &'f PageChunk<'a>)>,
    /// Pages of the final layout's segments.
    layout_pages: u64,
}

impl<'f, 'a> PagePlan<'f, 'a> {
    /// The plan of the chain `framed` (oldest first, not empty): later
    /// checkpoints' pages supersede earlier ones'. Fails if two segments of
    /// the final layout overlap (segments smaller than a page may share a
    /// page, never a byte).
    fn new(framed: &'f [Framed<'a>]) -> Result<Self, StateError> {
        let Some(last) = framed.last() else {
            return Ok(Self { latest: Vec::new(), others: Vec::new(), layout_pages: 0 });
        };
        let h = &last.header;
        // The header's layout lies below the high-water mark (checked when
        // it was decoded), and the store's file was grown to it.
        let file_pages = (u64::from(h.next_segment) << h.segment_log2) / PAGE_BYTES as u64;
        let mut owned = vec![0u64; file_pages.div_ceil(64) as usize];
        let mut layout_pages = 0;
        let mut spans = Vec::new();
        for (bi, b) in h.layout.iter().enumerate() {
            let bin = h.bins.start + bi as u32;
            for s in &b.segs {
                spans.push((s.loc, s.loc + (1u64 << s.log2), bin));
                let (first, n) = seg_pages(s);
                for p in first..first + n {
                    let (w, bit) = ((p / 64) as usize, 1u64 << (p % 64));
                    let Some(word) = owned.get_mut(w).filter(|_| p < file_pages) else {
                        return Err(corrupt(last.id, Some(bin), Some(p), "segment outside the file"));
                    };
                    if *word & bit == 0 {
                        layout_pages += 1;
                    }
                    *word |= bit;
                }
            }
        }
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
            let page = w[1].0 / PAGE_BYTES as u64;
            return Err(corrupt(last.id, Some(w[1].2), Some(page), "segments overlap"));
        }
        let mut latest = vec![None; file_pages as usize];
        let mut others = Vec::new();
        for (ci, f) in framed.iter().enumerate() {
            for c in &f.pages {
                let p = c.page;
                let in_layout = owned.get((p / 64) as usize).is_some_and(|w| w & (1 << (p % 64)) != 0);
                match usize::try_from(p).ok().and_then(|p| latest.get_mut(p)).filter(|_| in_layout) {
                    Some(slot) => {
                        if let Some(prev) = slot.replace((ci as u32, c)) {
                            others.push(prev);
                        }
                    }
                    None => others.push((ci as u32, c)),
                }
            }
        }
        Ok(Self { latest, others, layout_pages })
    }

    /// The latest chunk of page `p`, if it has one.
    #[inline(always)]
    fn latest(&self, p: u64) -> Option<(u32, &'f PageChunk<'a>)> {
        usize::try_from(p).ok().and_then(|p| self.latest.get(p)).copied().flatten()
    }
}

/// A fault a restoring thread found, with its place in the order in which
/// a sequential restore meets faults.
struct Fault {
    /// `(0, 0, 0)` for an I/O error, `(1, chain position, byte offset)` for
    /// a damaged chunk, `(2, bin index, 0)` for a bad record.
    key: (u8, u64, u64),
    error: StateError,
}

impl Fault {
    /// An I/O error comes before any damage: it is no checkpoint's fault,
    /// and a restore must not fall back to an older checkpoint past it.
    fn io(error: StateError) -> Self {
        Self { key: (0, 0, 0), error }
    }

    fn chunk(ci: u32, c: &PageChunk<'_>, error: StateError) -> Self {
        Self { key: (1, u64::from(ci), c.at as u64), error }
    }

    fn record(bi: usize, error: StateError) -> Self {
        Self { key: (2, bi as u64, 0), error }
    }
}

/// What one restoring thread did.
#[derive(Default)]
struct Done {
    /// `(bin index, table index, index)` of the indexes it built.
    indexes: Vec<(usize, usize, crate::store::BinIndex)>,
    /// Bins whose pages it wrote and checked but whose indexes are left to
    /// the calling thread (the shared arena had no block without moving).
    pending: Vec<usize>,
    /// `(bin index, parts)` of the dense tables' bins it checked, one
    /// table's parts each (sorted by part number).
    dense: Vec<(usize, Vec<PartInfo>)>,
    /// The fault that stopped it.
    fault: Option<Fault>,
}

/// The work of a restore, shared by its threads.
struct Work<'w, 'a> {
    id: u64,
    framed: &'w [Framed<'a>],
    plan: &'w PagePlan<'w, 'a>,
    heaps: &'w [BinHeap],
    bins_start: Bin,
    bins_log2: u8,
    ntables: usize,
    target: RestoreTarget<'w>,
    arena: SharedArena<'w>,
    /// The next unit of work: bins first, then batches of other chunks.
    next: AtomicUsize,
    /// A thread found a fault: the others stop.
    stop: AtomicBool,
}

/// A thread's buffers, reused from bin to bin.
#[derive(Default)]
struct Scratch<'w> {
    /// The bin's segments (location, bytes).
    segs: Vec<(u64, &'w [u8])>,
    /// The bin's live keys: (table, hash, location).
    live: Vec<(u16, u64, u64)>,
    /// The bin's dense parts, checked one by one.
    dense: Vec<PartInfo>,
    /// Keys per table.
    counts: Vec<usize>,
    /// Indexes built for the bin so far: (table, index).
    built: Vec<(usize, crate::store::BinIndex)>,
    /// Pages gathered for one write (file backing).
    buf: Vec<u8>,
}

impl<'w, 'a> Work<'w, 'a> {
    /// Takes units of work until none is left or a thread found a fault.
    fn run(&self) -> Done {
        let mut done = Done::default();
        let mut scratch = Scratch { counts: vec![0; self.ntables], ..Scratch::default() };
        let bins = self.heaps.len();
        let units = bins + self.plan.others.len().div_ceil(OTHER_CHUNKS_PER_UNIT);
        // Relaxed is enough: the counter only shares out units (each is
        // taken once, whatever the order), the stop flag is a hint, and the
        // threads' results reach the caller through the scope's joins.
        while !self.stop.load(Ordering::Relaxed) {
            let u = self.next.fetch_add(1, Ordering::Relaxed);
            if u >= units {
                break;
            }
            let r = if u < bins { self.bin(u, &mut scratch, &mut done) } else { self.others(u - bins) };
            if let Err(f) = r {
                self.stop.store(true, Ordering::Relaxed);
                done.fault = Some(f);
                break;
            }
        }
        done
    }

    /// Restores bin `bi`: its pages, then its records and indexes.
    fn bin(&self, bi: usize, s: &mut Scratch<'w>, done: &mut Done) -> Result<(), Fault> {
        let heap = &self.heaps[bi];
        s.segs.clear();
        for seg in heap.segs.iter() {
            let bytes = self.segment(seg, &mut s.buf)?;
            s.segs.push((seg.loc, bytes));
        }
        let scan = BinScan {
            id: self.id,
            bin: self.bins_start + bi as u32,
            bins_log2: self.bins_log2,
            ntables: self.ntables,
        };
        scan.run(&s.segs, heap.tail, &mut s.live, &mut s.dense).map_err(|e| Fault::record(bi, e))?;
        if !s.dense.is_empty() {
            let groups = scan.dense_groups(&mut s.dense).map_err(|e| Fault::record(bi, e))?;
            done.dense.extend(groups.into_iter().map(|g| (bi, g)));
        }
        s.counts.iter_mut().for_each(|c| *c = 0);
        for e in &s.live {
            s.counts[usize::from(e.0)] += 1;
        }
        s.built.clear();
        for (ti, &n) in s.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let entries = s.live.iter().filter(|e| usize::from(e.0) == ti).map(|e| (e.1, e.2));
            match self.arena.build(n, entries) {
                Some(ix) => s.built.push((ti, ix)),
                None => {
                    for (_, ix) in &mut s.built {
                        self.arena.give_back(ix);
                    }
                    s.built.clear();
                    done.pending.push(bi);
                    return Ok(());
                }
            }
        }
        done.indexes.extend(s.built.drain(..).map(|(ti, ix)| (bi, ti, ix)));
        Ok(())
    }

    /// Verifies and writes the pages of segment `seg` (of a bin this thread
    /// took) that the chain holds; returns the segment's bytes.
    fn segment(&self, seg: &Seg, buf: &mut Vec<u8>) -> Result<&'w [u8], Fault> {
        let (loc, len) = (seg.loc, 1usize << seg.log2);
        if len < PAGE_BYTES {
            return self.small_segment(loc, len);
        }
        let first = loc / PAGE_BYTES as u64;
        let pages = (len / PAGE_BYTES) as u64;
        if !self.target.writes_file() {
            // SAFETY: the segment's pages belong to no other segment (checked
            // by `PagePlan::new`) and its bin to this thread alone (taken
            // from the counter), so no other slice of them exists; the map
            // is anonymous memory (or a file written through it), reached
            // by nothing else while the store is borrowed for the restore.
            let dst = unsafe { self.target.range_mut(loc, len) };
            for k in 0..pages {
                if let Some((ci, c)) = self.plan.latest(first + k) {
                    let data = self.verify(ci, c)?;
                    let at = k as usize * PAGE_BYTES;
                    dst[at..at + PAGE_BYTES].copy_from_slice(data);
                }
            }
            return Ok(dst);
        }
        // A file: runs of consecutive pages gathered into one write each.
        buf.clear();
        let mut run_start = first;
        for k in 0..pages {
            let p = first + k;
            let chunk = self.plan.latest(p);
            if !buf.is_empty() && (chunk.is_none() || buf.len() >= WRITE_BYTES_MAX) {
                self.write_run(run_start, buf)?;
            }
            if let Some((ci, c)) = chunk {
                if buf.is_empty() {
                    run_start = p;
                }
                buf.extend_from_slice(self.verify(ci, c)?);
            }
        }
        if !buf.is_empty() {
            self.write_run(run_start, buf)?;
        }
        // SAFETY: as above, the segment is this thread's alone, and its
        // writes are done: nothing writes it while the slice lives.
        Ok(unsafe { self.target.range(loc, len) })
    }

    /// [`Work::segment`] for a segment smaller than a page: its bytes of its
    /// one page (other bins' segments may hold the rest of the page).
    fn small_segment(&self, loc: u64, len: usize) -> Result<&'w [u8], Fault> {
        let p = loc / PAGE_BYTES as u64;
        let off = (loc % PAGE_BYTES as u64) as usize;
        let data = match self.plan.latest(p) {
            Some((ci, c)) => Some(&self.verify(ci, c)?[off..off + len]),
            None => None,
        };
        if !self.target.writes_file() {
            // SAFETY: the segment's bytes belong to no other segment
            // (checked by `PagePlan::new`) and its bin to this thread alone
            // (taken from the counter), so no other slice of them exists,
            // though other threads may hold slices of the rest of its page.
            let dst = unsafe { self.target.range_mut(loc, len) };
            if let Some(d) = data {
                dst.copy_from_slice(d);
            }
            return Ok(dst);
        }
        if let Some(d) = data {
            // SAFETY: as above: these bytes are this thread's alone, and no
            // slice of them was made yet.
            unsafe { self.target.write_at(loc, d) }.map_err(Fault::io)?;
        }
        // SAFETY: as above, and its writes are done.
        Ok(unsafe { self.target.range(loc, len) })
    }

    /// Writes the whole pages in `buf` from page `p` on, and empties it.
    fn write_run(&self, p: u64, buf: &mut Vec<u8>) -> Result<(), Fault> {
        // SAFETY: the pages are of a segment of a bin this thread took (see
        // `segment`), and no slice of them was made yet.
        let r = unsafe { self.target.write_at(p * PAGE_BYTES as u64, buf) };
        buf.clear();
        r.map_err(Fault::io)
    }

    /// Verifies chunk `c` of the checkpoint at chain position `ci`.
    #[inline(always)]
    fn verify(&self, ci: u32, c: &PageChunk<'a>) -> Result<&'a [u8], Fault> {
        self.framed[ci as usize].verify(c).map_err(|e| Fault::chunk(ci, c, e))
    }

    /// Verifies batch `unit` of the chunks that are not copied.
    fn others(&self, unit: usize) -> Result<(), Fault> {
        let others = &self.plan.others;
        let lo = unit * OTHER_CHUNKS_PER_UNIT;
        for &(ci, c) in &others[lo..(lo + OTHER_CHUNKS_PER_UNIT).min(others.len())] {
            self.verify(ci, c)?;
        }
        Ok(())
    }
}

/// The record scan of one bin: validates the framing of its records and
/// collects its live keys.
struct BinScan {
    /// The checkpoint restored (errors name it).
    id: u64,
    bin: Bin,
    bins_log2: u8,
    ntables: usize,
}

impl BinScan {
    /// Scans the bin's segments `segs` (location, bytes; records up to
    /// `tail` in the last), collecting `(table, hash, location)` of its
    /// live keys into `live` (cleared first).
    fn run(
        &self,
        segs: &[(u64, &[u8])],
        tail: u64,
        live: &mut Vec<(u16, u64, u64)>,
        dense: &mut Vec<PartInfo>,
    ) -> Result<(), StateError> {
        let (id, bin) = (self.id, self.bin);
        live.clear();
        dense.clear();
        let capacity: u64 = segs.iter().map(|s| s.1.len() as u64).sum();
        for (si, &(seg_loc, seg_bytes)) in segs.iter().enumerate() {
            let seg_end = seg_loc + seg_bytes.len() as u64;
            let end = if si + 1 == segs.len() { tail } else { seg_end };
            let mut pos = seg_loc;
            while pos + HEADER as u64 <= end {
                let page = Some(pos / PAGE_BYTES as u64);
                let bad = |r: String| corrupt(id, Some(bin), page, format!("record at {pos}: {r}"));
                let off = (pos - seg_loc) as usize;
                let h = Header::read(&seg_bytes[off..off + HEADER]);
                let size = h.record_bytes() as u64;
                if pos + size > end {
                    return Err(bad(format!("{size} bytes overrun the segment")));
                }
                match h.kind {
                    KIND_VALUE | KIND_LIST if h.flags & FLAG_DEAD == 0 => {
                        if bin_of(h.hash, self.bins_log2) != bin {
                            return Err(bad("hash of another bin".into()));
                        }
                        if usize::from(h.table) >= self.ntables {
                            return Err(bad(format!("unknown table {}", h.table)));
                        }
                        if h.kind == KIND_LIST {
                            if h.val_len as usize != LIST_HEAD {
                                return Err(bad("list head of wrong size".into()));
                            }
                            check_list(segs, capacity, pos, h.key_len).map_err(bad)?;
                        }
                        live.push((h.table, h.hash, pos));
                    }
                    KIND_DENSE if h.flags & FLAG_DEAD == 0 => {
                        if usize::from(h.table) >= self.ntables {
                            return Err(bad(format!("unknown table {}", h.table)));
                        }
                        let r = &seg_bytes[off..off + size as usize];
                        dense.push(dense::check_part(r, &h, pos, bin, self.bins_log2).map_err(bad)?);
                    }
                    // Dead records and padding (which closes a segment,
                    // or lies before a dense part: `alloc_part`).
                    KIND_VALUE | KIND_LIST | KIND_BLOCK | KIND_DENSE | KIND_PAD => {}
                    k => return Err(bad(format!("unknown record kind {k}"))),
                }
                pos += size;
            }
        }
        Ok(())
    }
}

impl BinScan {
    /// Groups the bin's checked dense parts by table and checks that each
    /// table's parts make a whole bin table.
    fn dense_groups(&self, parts: &mut Vec<PartInfo>) -> Result<Vec<Vec<PartInfo>>, StateError> {
        parts.sort_unstable_by_key(|p| (p.table, p.part));
        let mut groups: Vec<Vec<PartInfo>> = Vec::new();
        for p in parts.drain(..) {
            match groups.last_mut() {
                Some(g) if g[0].table == p.table => g.push(p),
                _ => groups.push(vec![p]),
            }
        }
        for g in &groups {
            dense::check_parts(g).map_err(|r| corrupt(self.id, Some(self.bin), None, r))?;
        }
        Ok(groups)
    }
}

/// The `len` bytes at `loc` if they lie in one of the segments `segs`.
fn bin_bytes<'s>(segs: &[(u64, &'s [u8])], loc: u64, len: usize) -> Option<&'s [u8]> {
    let end = loc.checked_add(len as u64)?;
    let &(seg_loc, bytes) = segs.iter().find(|(l, b)| loc >= *l && end <= l + b.len() as u64)?;
    let off = (loc - seg_loc) as usize;
    Some(&bytes[off..off + len])
}

/// Checks that the blocks of the list headed at `loc` lie in the bin's
/// segments `segs` (`capacity` bytes), are blocks, and hold the items
/// their count says.
fn check_list(segs: &[(u64, &[u8])], capacity: u64, loc: u64, key_len: u32) -> Result<(), String> {
    let head = bin_bytes(segs, loc + (HEADER + key_len as usize) as u64, LIST_HEAD)
        .ok_or_else(|| "list head outside the bin".to_string())?;
    let (count, mut block, last) = (u64_at(head, 0), u64_at(head, 8), u64_at(head, 16));
    let mut items = 0u64;
    let mut prev = NONE;
    let mut hops = 0u64;
    while block != NONE {
        hops += 1;
        if hops > capacity / HEADER as u64 + 1 {
            return Err("list blocks form a cycle".into());
        }
        let Some(head) = bin_bytes(segs, block, HEADER + BLOCK_HEAD) else {
            return Err(format!("list block at {block} outside the bin"));
        };
        let bh = Header::read(head);
        let record = bin_bytes(segs, block, bh.record_bytes()).filter(|_| bh.kind == KIND_BLOCK);
        let Some(record) = record else {
            return Err(format!("bad list block at {block}"));
        };
        let (next, used) = (u64_at(head, HEADER), u32_at(head, HEADER + 8) as usize);
        if used + BLOCK_HEAD > bh.val_len as usize {
            return Err(format!("list block at {block} overfull"));
        }
        // Within the record, since `used + BLOCK_HEAD <= val_len`.
        let body = &record[HEADER + BLOCK_HEAD..HEADER + BLOCK_HEAD + used];
        let mut p = 0usize;
        while p < used {
            if p + 4 > used {
                return Err(format!("list item framing in block {block}"));
            }
            p += 4 + u32_at(body, p) as usize;
            items += 1;
        }
        if p != used {
            return Err(format!("list item overruns block {block}"));
        }
        prev = block;
        block = next;
    }
    if items != count || prev != last {
        return Err(format!("list holds {items} items, its head says {count}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Durability;
    use crate::checkpoint::{encode, parse};
    use crate::keyspace::{hash_u64, BinRange};
    use crate::store::tests::{ok, tmp};
    use crate::store::{Backing, SlotArena, TableId};

    const BINS_LOG2: u8 = 5;
    const INSTANCE: &str = "i";

    /// Everything in a store's raw tables: (table, hash, key, value, list
    /// items), sorted, with each table's key count.
    type Dump = (Vec<(usize, u64, Vec<u8>, Vec<u8>, Vec<Vec<u8>>)>, Vec<usize>);

    fn dump(s: &mut StateStore) -> Dump {
        let ids: Vec<TableId> = ["values", "blobs", "lists"].iter().map(|n| ok(s.table(n))).collect();
        let mut rows = Vec::new();
        for (ti, &t) in ids.iter().enumerate() {
            s.for_each(t, |h, k, v| {
                let items = s.list_items(t, h, k).map(<[u8]>::to_vec).collect();
                rows.push((ti, h, k.to_vec(), v.to_vec(), items));
            });
        }
        rows.sort();
        (rows, ids.iter().map(|&t| s.len(t)).collect())
    }

    /// A store with three raw tables (values, blobs, lists) over 32 bins in
    /// small segments (many segments, compactions, list blocks), and a
    /// backup holding the chain of checkpoints 1 (full), 2 and 3; returns
    /// the store, the backup and the dumps at each checkpoint.
    fn chain(dir: &std::path::Path) -> (StateStore, BackupStore, Vec<Dump>) {
        let config = StoreConfig::new(dir.join("live"), BINS_LOG2).with_segment_bytes(16 * 1024);
        let mut s = ok(StateStore::create(config, BinRange::all(BINS_LOG2)));
        let [values, blobs, lists] = ["values", "blobs", "lists"].map(|n| ok(s.table(n)));
        let mut backup = ok(BackupStore::open(dir.join("backup"), Durability::Memory));
        let mut dumps = Vec::new();
        for round in 0..3u64 {
            for i in 0..3000u64 {
                let k = (i * 7 + round * 13) % 2000;
                let h = hash_u64(k);
                let key = k.to_le_bytes();
                ok(s.put(values, h, &key, &vec![round as u8; ((i + round) % 23) as usize]));
                if i % 3 == 0 {
                    ok(s.put(blobs, h, &key, &vec![i as u8; (i % 700) as usize]));
                }
                if i % 5 == 0 {
                    ok(s.append(lists, h, &key, &vec![7; (i % 90) as usize]));
                }
                if i % 11 == 0 {
                    s.remove(values, hash_u64(k / 2), &(k / 2).to_le_bytes());
                }
            }
            let ck = ok(s.checkpoint(round + 1, b"meta"));
            for c in ck.chunks() {
                ok(backup.receive(INSTANCE, c));
            }
            dumps.push(dump(&mut s));
        }
        (s, backup, dumps)
    }

    fn restore(
        dir: &std::path::Path,
        backup: &BackupStore,
        id: u64,
        threads: usize,
        backing: Backing,
    ) -> Result<StateStore, StateError> {
        let _ = std::fs::remove_dir_all(dir);
        let config = StoreConfig::new(dir, BINS_LOG2).with_backing(backing);
        StateStore::restore_with(config, backup, INSTANCE, id, Some(threads)).map(|r| r.0)
    }

    #[test]
    fn any_number_of_threads_restores_the_same_state() {
        let dir = tmp();
        let (_, backup, dumps) = chain(dir.path());
        assert_eq!(backup.chain(INSTANCE, 3).ok(), Some(vec![1, 2, 3]));
        for backing in [Backing::Memory, Backing::File] {
            for threads in [1, 2, 3, 8] {
                for (id, want) in (1..).zip(&dumps) {
                    let mut r = ok(restore(&dir.path().join("r"), &backup, id, threads, backing));
                    assert_eq!(&dump(&mut r), want, "checkpoint {id} on {threads} threads, {backing:?}");
                    assert_eq!(r.last_checkpoint(), id);
                }
            }
        }
    }

    #[test]
    fn a_damaged_byte_fails_alike_on_any_number_of_threads() {
        let dir = tmp();
        let (_, mut backup, _) = chain(dir.path());
        for victim in 1..=3u64 {
            let len = backup.stored_bytes_mut(INSTANCE, victim).map_or(0, |b| b.len());
            assert!(len > 0);
            for at in (0..len).step_by(len / 60).chain([len - 1]) {
                if let Some(b) = backup.stored_bytes_mut(INSTANCE, victim) {
                    b[at] ^= 0x21;
                }
                let errors: Vec<String> = [1, 4]
                    .iter()
                    .map(|&threads| {
                        match restore(&dir.path().join("r"), &backup, 3, threads, Backing::Memory) {
                            Err(e @ StateError::CorruptCheckpoint { checkpoint, .. })
                                if checkpoint == victim =>
                            {
                                format!("{e:?}")
                            }
                            Err(e) => panic!("byte {at} of checkpoint {victim}: wrong error {e}"),
                            Ok(_) => panic!("byte {at} of checkpoint {victim}: damage not detected"),
                        }
                    })
                    .collect();
                assert_eq!(errors[0], errors[1], "byte {at} of checkpoint {victim}");
                if let Some(b) = backup.stored_bytes_mut(INSTANCE, victim) {
                    b[at] ^= 0x21;
                }
            }
        }
        assert!(restore(&dir.path().join("r"), &backup, 3, 4, Backing::Memory).is_ok());
    }

    #[test]
    fn overlapping_segments_are_refused() {
        let dir = tmp();
        let (mut live, _, _) = chain(dir.path());
        let ck = ok(live.checkpoint(4, b""));
        let bytes: Vec<u8> = ck.chunks().concat();
        let parsed = ok(parse(4, &bytes));
        // Bin 1 also claims bin 0's first segment: a header that decodes
        // and passes its own checks, which two threads must not both write.
        let mut header = parsed.header.clone();
        header.base = 0;
        let stolen = header.layout[0].segs[0];
        header.layout[1].segs.insert(0, stolen);
        let forged = encode(&header, parsed.pages.iter().copied());
        let mut backup = ok(BackupStore::open(dir.path().join("b2"), Durability::Memory));
        for c in forged.chunks() {
            ok(backup.receive(INSTANCE, c));
        }
        for threads in [1, 2] {
            match restore(&dir.path().join("r"), &backup, 4, threads, Backing::Memory) {
                Err(StateError::CorruptCheckpoint { checkpoint: 4, reason, .. }) => {
                    assert_eq!(reason, "segments overlap");
                }
                other => panic!("expected overlapping segments to be refused, got {:?}", other.err()),
            }
        }
    }

    #[test]
    fn bins_the_shared_arena_declines_are_indexed_after() {
        let dir = tmp();
        let (_, backup, dumps) = chain(dir.path());
        let stored: Vec<_> = [1, 2, 3].iter().map(|&c| ok(backup.map(INSTANCE, c)).to_vec()).collect();
        let framed: Vec<Framed<'_>> = (1..).zip(&stored).map(|(c, b)| ok(walk(c, b))).collect();
        let config = StoreConfig::new(dir.path().join("r"), BINS_LOG2);
        let Some(last) = framed.last() else { panic!("no checkpoint") };
        let mut store = ok(StateStore::from_header(config, &last.header));
        // An arena without reserved room: the shared arena gives only the
        // few blocks that fit its first map, the rest is built after.
        store.index = match SlotArena::unreserved() {
            Ok(a) => a,
            Err(e) => panic!("arena: {e}"),
        };
        let plan = ok(PagePlan::new(&framed));
        // The chain's increments supersede pages, which are only verified.
        assert!(!plan.others.is_empty());
        ok(store.fill(3, &framed, &plan, 3));
        assert_eq!(dump(&mut store), dumps[2]);
    }
}
