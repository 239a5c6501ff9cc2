//! The segment file: one sparse file per store, cut into segments of a
//! power-of-two size between a page and `segment_bytes`, mapped in
//! fixed-size chunks, with a dirty bit per 4 KiB page.
//!
//! A *location* (`loc`) is a byte offset in the file. The file grows by
//! *full* segments of `segment_bytes`: full segment `s` covers
//! `s * segment_bytes .. (s + 1) * segment_bytes`. A smaller segment is a
//! naturally aligned part of a full one, split off in halves (a binary buddy
//! split, without merging back: a freed segment is reused at its size), down
//! to [`SEG_MIN_BYTES`], less than a page: a bin's first segment is that
//! small and each next one is twice the last, up to `segment_bytes`, so the
//! state of bins holding little of it shares pages. With 4096 bins of a few
//! dozen keys each, one page per bin made every random access a TLB miss
//! (4096 pages for what fits in about 1000); and bins whose first records
//! all sat at the same offset of their own page also shared a few cache
//! sets. Pages stay the unit of dirty tracking and checkpoints: a page may
//! hold segments of several bins, and a checkpoint or a restore copies each
//! segment's bytes of it. Chunk `c` covers
//! `c * chunk_bytes .. (c + 1) * chunk_bytes` and is one `MmapMut`. Growing
//! the file maps one more chunk and never touches the existing maps, so a
//! pointer into a chunk stays valid for the life of the store.
//!
//! Dirty tracking: bit `p` of the bitmap is page `p` of the file, so a
//! segment at `loc` of `2^k` bytes owns the contiguous bits
//! `loc / 4096 .. (loc + 2^k) / 4096`.
//! Every write goes through [`SegmentFile::bytes_mut`] or
//! [`SegmentFile::write`] (or [`SegmentFile::mark_dirty`] before a write
//! through a pointer), which set the bits before handing out memory. The
//! copy-on-write shadow of an asynchronous checkpoint hooks into the same
//! spot (see `cow.rs`): while a checkpoint streams, `mark_dirty` first makes
//! each page it has not settled yet safe to write. With no checkpoint in
//! flight that costs one predictable branch.
//!
//! The chunk maps are shared (`Arc`): a checkpoint stream keeps the maps it
//! reads alive, so it may outlive the store.
//!
//! With [`Backing::Memory`] there is no file: each chunk is an anonymous
//! private map, and "the file" above means the address space they form.
//! Everything else (locations, dirty bits, copy-on-write) is the same.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use super::cow::{CowShared, Phase};
use crate::error::StateError;

/// A segment this large that leaves the store gives its memory back
/// ([`SegmentFile::release_segment`]).
pub(crate) const RELEASE_MIN_BYTES: usize = 64 << 10;

/// Bytes of a huge page (x86-64, aarch64 with 4 KiB pages).
const HUGE_BYTES: usize = 2 << 20;

pub use super::cow::PAGE_BYTES;
pub(crate) const PAGE_LOG2: u32 = 12;
/// Bytes of the smallest segment (a bin's first): an eighth of a page.
pub const SEG_MIN_BYTES: usize = 1 << SEG_MIN_LOG2;
pub(crate) const SEG_MIN_LOG2: u32 = 9;
/// Bytes mapped at once when the segment file grows (or one segment, when
/// segments are larger). Only touched pages are committed, so a large chunk
/// costs address space, not memory or disk.
pub const CHUNK_BYTES: usize = 32 << 20;
/// Largest number of full-size segments one store can address.
pub const SEGMENTS_MAX: u64 = u32::MAX as u64;

/// The name of a store's segment file inside its directory.
pub const SEGMENT_FILE_NAME: &str = "segments.spate";

/// What holds a store's segments while it runs. Either way the live
/// segments are not durable: checkpoints go to a
/// [`BackupStore`](crate::BackupStore), and a restore reads the backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backing {
    /// A sparse file, [`SEGMENT_FILE_NAME`] in the store's directory, mapped
    /// shared: the kernel writes dirty pages back to it.
    File,
    /// Anonymous memory maps, no file (the default): no writeback, and no
    /// file system work on page faults.
    #[default]
    Memory,
}

/// One store's segment file and its maps.
pub(crate) struct SegmentFile {
    path: PathBuf,
    /// The segment file; `None` with [`Backing::Memory`].
    file: Option<File>,
    segment_log2: u32,
    chunk_log2: u32,
    /// The maps, one per chunk; kept alive for `bases` (and by checkpoint
    /// streams reading them).
    chunks: Vec<Arc<MmapMut>>,
    /// Base pointer of each chunk, taken once when it was mapped.
    bases: Vec<*mut u8>,
    /// Full segments taken from the end of the file so far (the high-water
    /// mark).
    next_segment: u32,
    /// Free segments by size: `free[k]` holds the locations of free segments
    /// of `SEG_MIN_BYTES << k` bytes, reused before the file grows.
    free: Vec<Vec<u64>>,
    /// Segments handed out and not given back.
    in_use: usize,
    /// One bit per page of the file.
    dirty: Vec<u64>,
    /// The dirty epoch: bumped whenever a page may stop being dirty (the
    /// bitmap is taken or cleared) and when a checkpoint's copy-on-write
    /// begins. Whoever marks pages dirty ahead of many writes (dense
    /// tables' burst updates) may skip marking them again while the epoch
    /// is the one they marked them in (see [`SegmentFile::dirty_epoch`]).
    epoch: u64,
    /// A checkpoint is streaming: writes go through `cow_before_write`
    /// first. The only check the write path pays otherwise.
    cow_active: bool,
    /// The streaming (or ended, not yet settled) checkpoint's shared state.
    cow: Option<CowWriter>,
    /// Tests: the file takes no more full segments than this (so that a
    /// test can run a store out of space).
    #[cfg(test)]
    pub(crate) segments_max_for_tests: Option<u32>,
}

/// The writer's side of an asynchronous checkpoint.
struct CowWriter {
    shared: Arc<CowShared>,
    /// Pages this thread may write without asking `shared` (one bit per
    /// page; pages past its end too): those outside the checkpoint and those
    /// already made safe. Only this thread reads or writes it.
    settled: Vec<u64>,
}

/// The live maps of a segment file, as a checkpoint stream reads them:
/// shares the maps, so they stay mapped as long as the stream lives.
pub(crate) struct LiveMaps {
    chunks: Vec<Arc<MmapMut>>,
    bases: Vec<*mut u8>,
    chunk_log2: u32,
}

// SAFETY: `bases` point into the maps of `chunks`, which this struct keeps
// alive; it only reads through them (see `page_ptr`), in the claim protocol
// of `cow.rs` that keeps those reads off pages being written.
unsafe impl Send for LiveMaps {}

/// The chunk of file location `loc`, in a file of chunks of
/// `2^chunk_log2` bytes, and its offset in that chunk.
#[inline(always)]
fn chunk_and_offset(loc: u64, chunk_log2: u32) -> (usize, usize) {
    ((loc >> chunk_log2) as usize, (loc & ((1u64 << chunk_log2) - 1)) as usize)
}

impl LiveMaps {
    /// Pointer to the `PAGE_BYTES` bytes of page `p` in the maps.
    pub(crate) fn page_ptr(&self, p: u64) -> *const u8 {
        let loc = p << PAGE_LOG2;
        let (chunk, off) = chunk_and_offset(loc, self.chunk_log2);
        assert!(chunk < self.bases.len(), "checkpoint page {p} outside the mapped segment file");
        debug_assert_eq!(self.chunks.len(), self.bases.len());
        // SAFETY: a page is aligned to its size and chunks are whole pages,
        // so `off + PAGE_BYTES` lies in chunk `chunk`, kept mapped by
        // `self.chunks`.
        unsafe { self.bases[chunk].add(off).cast_const() }
    }
}

// SAFETY: the raw pointers in `bases` point into maps owned by this struct
// (shared only with checkpoint streams, which only read pages under the
// claim protocol of `cow.rs`) and used only through it; moving the struct
// to another thread moves that ownership with it (the struct is not `Sync`).
unsafe impl Send for SegmentFile {}

impl SegmentFile {
    /// Creates (or truncates) the segment file in `dir`; with
    /// [`Backing::Memory`], removes any segment file left there instead.
    pub(crate) fn create(dir: &Path, segment_bytes: usize, backing: Backing) -> Result<Self, StateError> {
        debug_assert!(segment_bytes.is_power_of_two() && segment_bytes >= PAGE_BYTES);
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            op: "create directory",
            source,
        })?;
        let path = dir.join(SEGMENT_FILE_NAME);
        let file = match backing {
            Backing::File => Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|source| StateError::Io { path: path.clone(), op: "create", source })?,
            ),
            Backing::Memory => {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StateError::Io { path, op: "remove", source }),
                }
                None
            }
        };
        let segment_log2 = segment_bytes.trailing_zeros();
        let chunk_log2 = segment_log2.max(CHUNK_BYTES.trailing_zeros());
        Ok(Self {
            path,
            file,
            segment_log2,
            chunk_log2,
            chunks: Vec::new(),
            bases: Vec::new(),
            next_segment: 0,
            free: vec![Vec::new(); (segment_log2 - SEG_MIN_LOG2 + 1) as usize],
            in_use: 0,
            dirty: Vec::new(),
            epoch: 1,
            cow_active: false,
            cow: None,
            #[cfg(test)]
            segments_max_for_tests: None,
        })
    }

    /// The file's path (where it would be, with [`Backing::Memory`]).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Asks the kernel to back the `len` bytes at `loc` (in one chunk)
    /// with writable pages now, in one call (`MADV_POPULATE_WRITE`), rather
    /// than a page fault at the first write to each page: for space about
    /// to be written whole. First asks for huge pages (`MADV_HUGEPAGE`) for
    /// each 2 MiB-aligned range of the chunk's map that the bytes cover a
    /// quarter of or more (a huge page costs about what 64 page faults do;
    /// the rest of the range is where the file's next segments go). Only
    /// for anonymous maps (on a shared file map it would dirty the pages
    /// for writeback, and such a map gets no transparent huge pages); a
    /// hint, whose failure (a kernel before 5.14, no memory now, huge pages
    /// off) leaves the pages to fault in as they would have.
    pub(crate) fn populate(&self, loc: u64, len: usize) {
        #[cfg(target_os = "linux")]
        {
            if self.file.is_some() || len == 0 {
                return;
            }
            let (chunk, off) = chunk_and_offset(loc, self.chunk_log2);
            let Some(map) = self.chunks.get(chunk) else {
                return;
            };
            let end = (off + len).min(map.len());
            // Addresses, as the kernel aligns huge pages by address.
            let base = map.as_ptr() as usize;
            let mut r = (base + off) / HUGE_BYTES * HUGE_BYTES;
            while r < base + end {
                let covered = (base + end).min(r + HUGE_BYTES) - (base + off).max(r);
                if r >= base && r + HUGE_BYTES <= base + map.len() && covered * 4 >= HUGE_BYTES {
                    let _ = map.advise_range(memmap2::Advice::HugePage, r - base, HUGE_BYTES);
                }
                r += HUGE_BYTES;
            }
            // Whole pages: `advise_range` rounds the start down itself.
            let _ = map.advise_range(memmap2::Advice::PopulateWrite, off, end.saturating_sub(off));
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (loc, len);
    }

    /// The chunk (one map) that location `loc` lies in.
    pub(crate) fn chunk_of(&self, loc: u64) -> usize {
        chunk_and_offset(loc, self.chunk_log2).0
    }

    /// Bytes per segment.
    #[inline(always)]
    pub(crate) fn segment_bytes(&self) -> u64 {
        1u64 << self.segment_log2
    }

    /// Location of the first byte of full segment `s`.
    #[inline(always)]
    fn segment_loc(&self, s: u32) -> u64 {
        u64::from(s) << self.segment_log2
    }

    /// Log2 of the bytes of a bin's segment that follows one of `prev_log2`
    /// (`None`: the bin's first) and must hold `n` bytes: the double of the
    /// last, at least [`SEG_MIN_BYTES`] and `n`, at most a full segment. `n`
    /// must not exceed a full segment.
    pub(crate) fn next_segment_log2(&self, prev_log2: Option<u32>, n: u64) -> u32 {
        let grown = prev_log2.map_or(SEG_MIN_LOG2, |l| l + 1);
        let need = n.next_power_of_two().trailing_zeros();
        grown.max(need).clamp(SEG_MIN_LOG2, self.segment_log2)
    }

    /// Segments currently handed out (allocated and not freed).
    #[cfg(test)]
    pub(crate) fn segments_in_use(&self) -> usize {
        self.in_use
    }

    /// Bytes of the file (mapped).
    pub(crate) fn file_bytes(&self) -> u64 {
        (self.chunks.len() as u64) << self.chunk_log2
    }

    /// Hands out a segment of `2^log2` bytes ([`SEG_MIN_BYTES`] to a full
    /// segment) and
    /// returns its location, growing the file by a chunk when needed. The
    /// segment's contents are unspecified (zero when fresh).
    pub(crate) fn alloc_segment(&mut self, log2: u32) -> Result<u64, StateError> {
        debug_assert!((SEG_MIN_LOG2..=self.segment_log2).contains(&log2));
        let loc = self.take_segment(log2)?;
        self.in_use += 1;
        Ok(loc)
    }

    /// A free segment of `2^log2` bytes: a freed one, the half of a larger
    /// one (whose other half is freed), or a new full one.
    fn take_segment(&mut self, log2: u32) -> Result<u64, StateError> {
        let class = (log2 - SEG_MIN_LOG2) as usize;
        if let Some(loc) = self.free[class].pop() {
            return Ok(loc);
        }
        if log2 < self.segment_log2 {
            let loc = self.take_segment(log2 + 1)?;
            self.free[class].push(loc + (1u64 << log2));
            return Ok(loc);
        }
        let s = self.new_full_segment()?;
        Ok(self.segment_loc(s))
    }

    /// A new full segment at the end of the file.
    fn new_full_segment(&mut self) -> Result<u32, StateError> {
        #[cfg(test)]
        if self.segments_max_for_tests.is_some_and(|m| self.next_segment >= m) {
            return Err(StateError::StoreFull { segments_max: u64::from(self.next_segment) });
        }
        if u64::from(self.next_segment) >= SEGMENTS_MAX {
            return Err(StateError::StoreFull { segments_max: SEGMENTS_MAX });
        }
        let s = self.next_segment;
        let end = self.segment_loc(s) + self.segment_bytes();
        if end >= super::index::LOC_LIMIT {
            // The index keeps locations in 44 bits: the file stops at 16 TiB.
            return Err(StateError::StoreFull { segments_max: super::index::LOC_LIMIT >> self.segment_log2 });
        }
        while self.file_bytes() < end {
            self.grow()?;
        }
        self.next_segment += 1;
        Ok(s)
    }

    /// As [`SegmentFile::free_segment`], and returns the segment's pages
    /// to the system (`MADV_DONTNEED`) when it is at least
    /// [`RELEASE_MIN_BYTES`] of anonymous memory and no checkpoint streams
    /// from the maps: for bins that leave the store (a handoff's split),
    /// whose memory would otherwise stay resident beside their copy on the
    /// worker that takes them. A reused segment faults in zeroed pages.
    pub(crate) fn release_segment(&mut self, loc: u64, log2: u32) {
        self.free_segment(loc, log2);
        if self.file.is_some() || self.cow_active || (1usize << log2) < RELEASE_MIN_BYTES {
            return;
        }
        let (chunk, off) = chunk_and_offset(loc, self.chunk_log2);
        if let Some(map) = self.chunks.get(chunk) {
            // SAFETY: the segment is free: no index entry or record points
            // into it, no borrow of the store is alive (this takes `&mut
            // self`), and no checkpoint stream reads the maps
            // (`cow_active` is false), so nothing reads the bytes the
            // kernel zeroes; the range lies in the chunk's map (a segment
            // never crosses a chunk). A failure leaves the pages resident.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, 1 << log2) };
        }
    }

    /// Gives back the segment of `2^log2` bytes at `loc`, for reuse.
    pub(crate) fn free_segment(&mut self, loc: u64, log2: u32) {
        let class = (log2 - SEG_MIN_LOG2) as usize;
        debug_assert!(loc & ((1u64 << log2) - 1) == 0 && !self.free[class].contains(&loc));
        self.free[class].push(loc);
        self.in_use -= 1;
    }

    fn grow(&mut self) -> Result<(), StateError> {
        let chunk_bytes = 1u64 << self.chunk_log2;
        let offset = self.file_bytes();
        let new_len = offset + chunk_bytes;
        let len = usize::try_from(chunk_bytes).map_err(|_| StateError::InvalidConfig {
            field: "segment_bytes",
            reason: format!("a chunk of {chunk_bytes} bytes exceeds the address space"),
        })?;
        let mut map = match &self.file {
            Some(file) => {
                file.set_len(new_len).map_err(|source| StateError::Io {
                    path: self.path.clone(),
                    op: "grow",
                    source,
                })?;
                // SAFETY: the file is this store's own (created and truncated
                // by it, under its directory) and was just grown to cover the
                // range, so the map does not extend past the end of the file.
                // Other processes truncating it would be a misuse of the data
                // directory, outside the store's contract.
                unsafe { MmapOptions::new().offset(offset).len(len).map_mut(file) }
                    .map_err(|source| StateError::Io { path: self.path.clone(), op: "map", source })?
            }
            // Only touched pages are committed; like the file's, the chunk
            // costs address space until written.
            None => MmapOptions::new().len(len).no_reserve_swap().map_anon().map_err(|source| {
                StateError::Io { path: PathBuf::from("<anonymous memory>"), op: "map", source }
            })?,
        };
        self.bases.push(map.as_mut_ptr());
        self.chunks.push(Arc::new(map));
        let pages = (new_len >> PAGE_LOG2) as usize;
        self.dirty.resize(pages.div_ceil(64), 0);
        Ok(())
    }

    /// Pointer to `len` bytes at `loc`, checked to lie in one mapped chunk.
    /// Marks nothing: a caller that writes through it marks what it writes
    /// with [`SegmentFile::mark_dirty`] first.
    #[inline(always)]
    pub(crate) fn ptr(&self, loc: u64, len: usize) -> *mut u8 {
        let (chunk, off) = chunk_and_offset(loc, self.chunk_log2);
        assert!(
            chunk < self.bases.len() && off + len <= 1usize << self.chunk_log2,
            "state location {loc}+{len} outside the mapped segment file"
        );
        // SAFETY: `off + len` lies inside chunk `chunk` (checked above), whose
        // map is alive as long as `self`.
        unsafe { self.bases[chunk].add(off) }
    }

    /// The `len` bytes at `loc`.
    #[inline(always)]
    pub(crate) fn bytes(&self, loc: u64, len: usize) -> &[u8] {
        let p = self.ptr(loc, len);
        // SAFETY: `p..p+len` is mapped memory owned by `self` (see `ptr`);
        // mutation requires `&mut self`, so no `&mut` to it exists while the
        // returned borrow of `self` lives.
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// The `len` bytes at `loc` if they lie in one mapped chunk, else `None`
    /// (for reading a prefix of a record that may be shorter than `len`).
    #[inline(always)]
    pub(crate) fn bytes_within(&self, loc: u64, len: usize) -> Option<&[u8]> {
        let p = self.ptr_within(loc, len)?;
        // SAFETY: `p..p+len` is mapped memory owned by `self` (see
        // `ptr_within`); mutation requires `&mut self`, so no `&mut` to it
        // exists while the returned borrow of `self` lives.
        Some(unsafe { std::slice::from_raw_parts(p, len) })
    }

    /// Pointer to the `len` bytes at `loc` if they lie in one mapped chunk.
    /// Writing through it needs `&mut self` held (and the pages marked
    /// dirty with [`SegmentFile::mark_dirty`]).
    #[inline(always)]
    pub(crate) fn ptr_within(&self, loc: u64, len: usize) -> Option<*mut u8> {
        let (_, off) = chunk_and_offset(loc, self.chunk_log2);
        if off + len > 1usize << self.chunk_log2 {
            return None;
        }
        self.addr(loc)
    }

    /// A pointer to the byte at `loc` in its chunk's map, if the file has
    /// that chunk. A range from it may be read or (with `&mut self` held,
    /// after [`SegmentFile::mark_dirty`]) written only where the caller
    /// knows it lies in the same chunk (a record lies in one segment, and a
    /// segment in one chunk).
    #[inline(always)]
    pub(crate) fn addr(&self, loc: u64) -> Option<*mut u8> {
        let (chunk, off) = chunk_and_offset(loc, self.chunk_log2);
        // `off` is inside the chunk, whose map is alive as long as `self`.
        self.bases.get(chunk).map(|&base| base.wrapping_add(off))
    }

    /// A pointer for prefetching the byte at `loc`: never dereferenced, so
    /// it need not be valid (a location outside the file gives some address).
    #[inline(always)]
    pub(crate) fn prefetch_addr(&self, loc: u64) -> *const u8 {
        self.addr(loc).map_or(std::ptr::null(), <*mut u8>::cast_const)
    }

    /// The `len` bytes at `loc`, for writing: marks their pages dirty first.
    #[inline(always)]
    pub(crate) fn bytes_mut(&mut self, loc: u64, len: usize) -> &mut [u8] {
        let p = self.ptr(loc, len);
        self.mark_dirty(loc, len);
        // SAFETY: `p..p+len` is mapped memory owned by `self` (see `ptr`), and
        // the `&mut self` borrow makes this the only access while it lives.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    /// Writes `data` at `loc` (marking its pages dirty).
    #[inline(always)]
    pub(crate) fn write(&mut self, loc: u64, data: &[u8]) {
        self.bytes_mut(loc, data.len()).copy_from_slice(data);
    }

    /// Copies `len` bytes from `src` to `dst` (non-overlapping ranges).
    pub(crate) fn copy(&mut self, src: u64, dst: u64, len: usize) {
        debug_assert!(src + len as u64 <= dst || dst + len as u64 <= src);
        let s = self.ptr(src, len);
        let d = self.bytes_mut(dst, len).as_mut_ptr();
        // SAFETY: both ranges are mapped memory of `self` (checked by `ptr`
        // and `bytes_mut`) and do not overlap: they lie in different records.
        unsafe { std::ptr::copy_nonoverlapping(s, d, len) }
    }

    /// Marks the pages of `len` bytes at `loc` dirty, before they are
    /// written; while a checkpoint streams, first makes them safe to write
    /// (see `cow.rs`).
    #[inline(always)]
    pub(crate) fn mark_dirty(&mut self, loc: u64, len: usize) {
        if len == 0 {
            return;
        }
        let first = (loc >> PAGE_LOG2) as usize;
        let last = ((loc + len as u64 - 1) >> PAGE_LOG2) as usize;
        if self.cow_active {
            self.cow_before_write(first, last);
        }
        // One OR per page, no branch on whether it was dirty (the count is
        // taken when asked for).
        if first == last {
            // The common write: within one page.
            if let Some(word) = self.dirty.get_mut(first / 64) {
                *word |= 1u64 << (first % 64);
            }
            return;
        }
        for p in first..=last {
            if let Some(word) = self.dirty.get_mut(p / 64) {
                *word |= 1u64 << (p % 64);
            }
        }
    }

    /// Whether a checkpoint's copy-on-write is on (writes must go through
    /// [`SegmentFile::mark_dirty`] first, page by page).
    #[inline(always)]
    pub(crate) fn copying(&self) -> bool {
        self.cow_active
    }

    /// The dirty epoch (never 0). Pages marked with [`SegmentFile::mark_dirty`]
    /// stay dirty, and safe to write while a checkpoint streams, as long as
    /// this returns what it returned when they were marked.
    #[inline(always)]
    pub(crate) fn dirty_epoch(&self) -> u64 {
        self.epoch
    }

    /// Makes pages `first..=last` safe to write while a checkpoint streams:
    /// each page not settled yet goes through [`CowShared::before_write`].
    /// Once the stream has read every page, turns the copy-on-write off.
    #[cold]
    #[inline(never)]
    fn cow_before_write(&mut self, first: usize, last: usize) {
        let Self { cow, cow_active, bases, chunk_log2, .. } = self;
        let Some(cow) = cow.as_mut() else {
            *cow_active = false;
            return;
        };
        if cow.shared.phase() != Phase::Pages {
            // The streamer reads no page any more (the acquire load of the
            // phase orders its last reads before the writes that follow).
            *cow_active = false;
            return;
        }
        for p in first..=last {
            let (w, bit) = (p / 64, 1u64 << (p % 64));
            if cow.settled.get(w).is_none_or(|s| s & bit != 0) {
                continue;
            }
            let loc = (p as u64) << PAGE_LOG2;
            let (chunk, off) = chunk_and_offset(loc, *chunk_log2);
            let Some(&base) = bases.get(chunk) else {
                continue;
            };
            // SAFETY: this is the owning thread, about to write page `p`;
            // `base + off` is the page in chunk `chunk` (pages are aligned
            // to their size and chunks are whole pages), mapped while `self`
            // lives.
            unsafe { cow.shared.before_write(p as u64, base.add(off)) };
            cow.settled[w] |= bit;
        }
    }

    /// Maps the address space of a checkpoint shadow for the file as it is
    /// (none for an empty file): pages are committed only where the writer
    /// copies into them, and not counted against swap.
    pub(crate) fn map_shadow(&self) -> Result<Option<MmapMut>, StateError> {
        let file_pages = self.file_bytes() >> PAGE_LOG2;
        if file_pages == 0 {
            return Ok(None);
        }
        let bytes = usize::try_from(file_pages << PAGE_LOG2).map_err(|_| StateError::InvalidConfig {
            field: "segment_bytes",
            reason: format!("a checkpoint shadow of {file_pages} pages exceeds the address space"),
        })?;
        let map =
            MmapOptions::new().len(bytes).no_reserve_swap().map_anon().map_err(|source| StateError::Io {
                path: PathBuf::from("<anonymous memory>"),
                op: "map the checkpoint shadow",
                source,
            })?;
        Ok(Some(map))
    }

    /// Starts the copy-on-write of an asynchronous checkpoint of the pages
    /// of `set` (one bit per page of the file; bits past the file are
    /// dropped), or of every page of the file (`None`), with `shadow` from
    /// [`SegmentFile::map_shadow`] (the caller keeps it and hands it to the
    /// stream): returns the shared state and the live maps for the stream.
    /// Costs a few operations per 64 pages of the file.
    pub(crate) fn begin_cow(
        &mut self,
        set: Option<Vec<u64>>,
        shadow: &mut Option<MmapMut>,
    ) -> (Arc<CowShared>, LiveMaps) {
        debug_assert!(self.cow.is_none(), "a checkpoint is already streaming");
        let file_pages = self.file_bytes() >> PAGE_LOG2;
        let words = file_pages.div_ceil(64) as usize;
        let (mut set, settled) = match set {
            Some(mut set) => {
                set.resize(words, 0);
                let settled = set.iter().map(|w| !w).collect();
                (set, settled)
            }
            None => (vec![u64::MAX; words], vec![0; words]),
        };
        if !file_pages.is_multiple_of(64) {
            if let Some(w) = set.last_mut() {
                *w &= (1u64 << (file_pages % 64)) - 1;
            }
        }
        let (shadow_ptr, shadow_pages) = match shadow.as_mut() {
            Some(m) => (m.as_mut_ptr(), (m.len() / PAGE_BYTES) as u64),
            None => (std::ptr::null_mut(), 0),
        };
        debug_assert!(shadow_pages >= file_pages);
        let shared = Arc::new(CowShared::new(set, shadow_ptr, shadow_pages));
        self.cow = Some(CowWriter { shared: Arc::clone(&shared), settled });
        self.cow_active = true;
        // Pages marked before must be made safe to write again.
        self.epoch += 1;
        let live =
            LiveMaps { chunks: self.chunks.clone(), bases: self.bases.clone(), chunk_log2: self.chunk_log2 };
        (shared, live)
    }

    /// The phase of the checkpoint streaming (or ended and not yet taken
    /// with [`SegmentFile::end_cow`]), if any.
    pub(crate) fn cow_phase(&self) -> Option<Phase> {
        self.cow.as_ref().map(|c| c.shared.phase())
    }

    /// The pages of the checkpoint streaming (or ended and not taken), if
    /// any.
    pub(crate) fn cow_set(&self) -> Option<&[u64]> {
        self.cow.as_ref().map(|c| &c.shared.set[..])
    }

    /// Forgets the checkpoint whose stream ended (complete or abandoned),
    /// returning its shared state. The caller checked the phase: a stream
    /// still reading pages must not be forgotten.
    pub(crate) fn end_cow(&mut self) -> Option<Arc<CowShared>> {
        let cow = self.cow.take()?;
        debug_assert!(!matches!(cow.shared.phase(), Phase::Pages));
        self.cow_active = false;
        Some(cow.shared)
    }

    /// Marks the pages of `set` dirty again (those of an abandoned
    /// checkpoint).
    pub(crate) fn redirty(&mut self, set: &[u64]) {
        for (d, s) in self.dirty.iter_mut().zip(set) {
            *d |= s;
        }
    }

    /// Takes the dirty bitmap, leaving every page clean.
    pub(crate) fn take_dirty(&mut self) -> Vec<u64> {
        self.epoch += 1;
        let words = self.dirty.len();
        std::mem::replace(&mut self.dirty, vec![0; words])
    }

    /// Number of pages written since the last [`SegmentFile::clear_dirty`].
    pub(crate) fn dirty_page_count(&self) -> usize {
        self.dirty.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Number of pages dirty or in `set` (a page bitmap).
    pub(crate) fn dirty_page_count_with(&self, set: &[u64]) -> usize {
        let n = self.dirty.len().max(set.len());
        (0..n)
            .map(|i| {
                (self.dirty.get(i).copied().unwrap_or(0) | set.get(i).copied().unwrap_or(0)).count_ones()
                    as usize
            })
            .sum()
    }

    /// Whether page `p` of the file is dirty.
    #[cfg(test)]
    pub(crate) fn is_dirty(&self, p: usize) -> bool {
        self.dirty.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    /// Forgets every dirty bit.
    pub(crate) fn clear_dirty(&mut self) {
        self.epoch += 1;
        self.dirty.iter_mut().for_each(|w| *w = 0);
    }

    /// Log2 of the bytes of a full segment.
    pub(crate) fn segment_log2(&self) -> u32 {
        self.segment_log2
    }

    /// Full segments taken from the end of the file so far.
    pub(crate) fn next_segment(&self) -> u32 {
        self.next_segment
    }

    /// The free segments, by size class (`PAGE_BYTES << class` bytes).
    pub(crate) fn free_lists(&self) -> &[Vec<u64>] {
        &self.free
    }

    /// Sets the allocator to a restored layout: `next_segment` full
    /// segments taken (the file grows to hold them), `free` the free
    /// segments by class and `in_use` segments handed out. The caller
    /// checked that every location lies below the high-water mark.
    pub(crate) fn set_layout(
        &mut self,
        next_segment: u32,
        free: Vec<Vec<u64>>,
        in_use: usize,
    ) -> Result<(), StateError> {
        let end = u64::from(next_segment) << self.segment_log2;
        while self.file_bytes() < end {
            self.grow()?;
        }
        self.next_segment = next_segment;
        self.free = free;
        self.free.resize((self.segment_log2 - SEG_MIN_LOG2 + 1) as usize, Vec::new());
        self.in_use = in_use;
        Ok(())
    }

    /// Hands the maps to a restore's threads (see [`RestoreTarget`]); the
    /// exclusive borrow keeps every other access out while they write.
    pub(crate) fn restore_target(&mut self) -> RestoreTarget<'_> {
        debug_assert!(self.cow.is_none(), "a store being restored has no checkpoint streaming");
        RestoreTarget {
            bases: &self.bases,
            chunk_log2: self.chunk_log2,
            file: self.file.as_ref(),
            path: &self.path,
        }
    }
}

/// A segment file being filled by the threads of a restore: raw access to
/// its maps, shared by threads that each take the segments of other bins.
///
/// The methods that reach the memory are `unsafe`: a caller promises that
/// no two threads (nor two slices) reach the same bytes while one of them
/// writes. A restore keeps that promise by checking that no page belongs
/// to two segments of its layout, and by giving each bin to one thread.
pub(crate) struct RestoreTarget<'a> {
    bases: &'a [*mut u8],
    chunk_log2: u32,
    file: Option<&'a File>,
    path: &'a Path,
}

// SAFETY: the maps outlive `'a` (the segment file is borrowed mutably for
// it, so nothing else reaches them), and every access to their memory goes
// through the `unsafe` methods below, whose callers keep the ranges that
// different threads use disjoint.
unsafe impl Sync for RestoreTarget<'_> {}

impl<'a> RestoreTarget<'a> {
    /// Pointer to `len` bytes at `loc`, checked to lie in one mapped chunk.
    fn ptr(&self, loc: u64, len: usize) -> *mut u8 {
        let (chunk, off) = chunk_and_offset(loc, self.chunk_log2);
        assert!(
            chunk < self.bases.len() && off + len <= 1usize << self.chunk_log2,
            "restored location {loc}+{len} outside the mapped segment file"
        );
        // SAFETY: `off + len` lies inside chunk `chunk` (checked above), whose
        // map lives for `'a`.
        unsafe { self.bases[chunk].add(off) }
    }

    /// Whether pages are written with [`RestoreTarget::write_at`] (a file,
    /// on Unix) rather than through [`RestoreTarget::range_mut`].
    pub(crate) fn writes_file(&self) -> bool {
        cfg!(unix) && self.file.is_some()
    }

    /// The `len` bytes at `loc` (in one chunk), for writing.
    ///
    /// # Safety
    ///
    /// While the slice lives, no other slice of these bytes exists and no
    /// [`RestoreTarget::write_at`] writes them, on any thread.
    pub(crate) unsafe fn range_mut(&self, loc: u64, len: usize) -> &'a mut [u8] {
        let p = self.ptr(loc, len);
        // SAFETY: `p..p+len` is mapped for `'a` (see `ptr`); the caller
        // promises this slice is the only access to it while it lives.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    /// The `len` bytes at `loc` (in one chunk), for reading.
    ///
    /// # Safety
    ///
    /// While the slice lives, nothing writes these bytes (no slice from
    /// [`RestoreTarget::range_mut`], no [`RestoreTarget::write_at`]).
    pub(crate) unsafe fn range(&self, loc: u64, len: usize) -> &'a [u8] {
        let p = self.ptr(loc, len);
        // SAFETY: `p..p+len` is mapped for `'a` (see `ptr`); the caller
        // promises nothing writes it while the slice lives.
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// Writes `data` at `loc` into the file (one `pwrite`: a shared map
    /// and the file share the page cache, so the maps see it; it spares
    /// the page faults and page zeroing of writing through the map).
    ///
    /// # Safety
    ///
    /// No slice of these bytes lives meanwhile, on any thread.
    pub(crate) unsafe fn write_at(&self, loc: u64, data: &[u8]) -> Result<(), StateError> {
        let _ = self.ptr(loc, data.len());
        let err = |source| StateError::Io { path: self.path.to_path_buf(), op: "write", source };
        #[cfg(unix)]
        if let Some(file) = self.file {
            use std::os::unix::fs::FileExt;
            return file.write_all_at(data, loc).map_err(err);
        }
        Err(err(std::io::Error::other("no file to write the restored pages to")))
    }
}
