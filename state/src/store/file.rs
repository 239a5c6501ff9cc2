//! The segment file: one sparse file per store, cut into fixed-size segments,
//! mapped in fixed-size chunks, with a dirty bit per 4 KiB page.
//!
//! A *location* (`loc`) is a byte offset in the file. Segment `s` covers
//! `s * segment_bytes .. (s + 1) * segment_bytes`; chunk `c` covers
//! `c * chunk_bytes .. (c + 1) * chunk_bytes` and is one `MmapMut`. Growing
//! the file maps one more chunk and never touches the existing maps, so a
//! pointer into a chunk stays valid for the life of the store.
//!
//! Dirty tracking: bit `p` of the bitmap is page `p` of the file, so segment
//! `s` owns bits `s * pages_per_segment .. (s + 1) * pages_per_segment`.
//! Every write goes through [`SegmentFile::bytes_mut`] or
//! [`SegmentFile::write`], which set the bits before handing out memory; a
//! copy-on-write shadow for asynchronous checkpoints hooks into the same spot.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

use crate::error::StateError;

/// Bytes per page: the unit of dirty tracking and of checkpoint chunks.
pub const PAGE_BYTES: usize = 4096;
const PAGE_LOG2: u32 = 12;
/// Bytes mapped at once when the segment file grows (or one segment, when
/// segments are larger). Only touched pages are committed, so a large chunk
/// costs address space, not memory or disk.
pub const CHUNK_BYTES: usize = 32 << 20;
/// Largest number of segments one store can address.
pub const SEGMENTS_MAX: u64 = u32::MAX as u64;

/// The name of a store's segment file inside its directory.
pub const SEGMENT_FILE_NAME: &str = "segments.spate";

/// One store's segment file and its maps.
pub(crate) struct SegmentFile {
    path: PathBuf,
    file: File,
    segment_log2: u32,
    chunk_log2: u32,
    /// The maps, one per chunk; kept alive for `bases`.
    chunks: Vec<MmapMut>,
    /// Base pointer of each chunk, taken once when it was mapped.
    bases: Vec<*mut u8>,
    /// Segments handed out so far (the high-water mark).
    next_segment: u32,
    /// Segments given back, reused before the file grows.
    free: Vec<u32>,
    /// One bit per page of the file.
    dirty: Vec<u64>,
    dirty_pages: usize,
}

// SAFETY: the raw pointers in `bases` point into maps owned by this struct
// and used only through it; moving the struct to another thread moves that
// exclusive ownership with it (the struct is not `Sync`).
unsafe impl Send for SegmentFile {}

impl SegmentFile {
    /// Creates (or truncates) the segment file in `dir`.
    pub(crate) fn create(dir: &Path, segment_bytes: usize) -> Result<Self, StateError> {
        debug_assert!(segment_bytes.is_power_of_two() && segment_bytes >= PAGE_BYTES);
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            op: "create directory",
            source,
        })?;
        let path = dir.join(SEGMENT_FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| StateError::Io { path: path.clone(), op: "create", source })?;
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
            free: Vec::new(),
            dirty: Vec::new(),
            dirty_pages: 0,
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes per segment.
    #[inline(always)]
    pub(crate) fn segment_bytes(&self) -> u64 {
        1u64 << self.segment_log2
    }

    /// Location of the first byte of segment `s`.
    #[inline(always)]
    pub(crate) fn segment_loc(&self, s: u32) -> u64 {
        u64::from(s) << self.segment_log2
    }

    /// Segments currently handed out (allocated and not freed).
    #[cfg(test)]
    pub(crate) fn segments_in_use(&self) -> usize {
        self.next_segment as usize - self.free.len()
    }

    /// Bytes of the file (mapped).
    pub(crate) fn file_bytes(&self) -> u64 {
        (self.chunks.len() as u64) << self.chunk_log2
    }

    /// Hands out a segment, growing the file by a chunk when needed. The
    /// segment's contents are unspecified (zero when fresh).
    pub(crate) fn alloc_segment(&mut self) -> Result<u32, StateError> {
        if let Some(s) = self.free.pop() {
            return Ok(s);
        }
        if u64::from(self.next_segment) >= SEGMENTS_MAX {
            return Err(StateError::StoreFull { segments_max: SEGMENTS_MAX });
        }
        let s = self.next_segment;
        let end = self.segment_loc(s) + self.segment_bytes();
        while self.file_bytes() < end {
            self.grow()?;
        }
        self.next_segment += 1;
        Ok(s)
    }

    /// Gives a segment back for reuse.
    pub(crate) fn free_segment(&mut self, s: u32) {
        debug_assert!(s < self.next_segment && !self.free.contains(&s));
        self.free.push(s);
    }

    fn grow(&mut self) -> Result<(), StateError> {
        let chunk_bytes = 1u64 << self.chunk_log2;
        let offset = self.file_bytes();
        let new_len = offset + chunk_bytes;
        self.file.set_len(new_len).map_err(|source| StateError::Io {
            path: self.path.clone(),
            op: "grow",
            source,
        })?;
        let len = usize::try_from(chunk_bytes).map_err(|_| StateError::InvalidConfig {
            field: "segment_bytes",
            reason: format!("a chunk of {chunk_bytes} bytes exceeds the address space"),
        })?;
        // SAFETY: the file is this store's own (created and truncated by it,
        // under its directory) and was just grown to cover the range, so the
        // map does not extend past the end of the file. Other processes
        // truncating it would be a misuse of the data directory, outside the
        // store's contract.
        let mut map = unsafe { MmapOptions::new().offset(offset).len(len).map_mut(&self.file) }
            .map_err(|source| StateError::Io { path: self.path.clone(), op: "map", source })?;
        self.bases.push(map.as_mut_ptr());
        self.chunks.push(map);
        let pages = (new_len >> PAGE_LOG2) as usize;
        self.dirty.resize(pages.div_ceil(64), 0);
        Ok(())
    }

    /// Pointer to `len` bytes at `loc`, checked to lie in one mapped chunk.
    #[inline(always)]
    fn ptr(&self, loc: u64, len: usize) -> *mut u8 {
        let chunk = (loc >> self.chunk_log2) as usize;
        let off = (loc & ((1u64 << self.chunk_log2) - 1)) as usize;
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

    #[inline(always)]
    fn mark_dirty(&mut self, loc: u64, len: usize) {
        if len == 0 {
            return;
        }
        let first = (loc >> PAGE_LOG2) as usize;
        let last = ((loc + len as u64 - 1) >> PAGE_LOG2) as usize;
        for p in first..=last {
            let (w, b) = (p / 64, 1u64 << (p % 64));
            if let Some(word) = self.dirty.get_mut(w) {
                if *word & b == 0 {
                    *word |= b;
                    self.dirty_pages += 1;
                }
            }
        }
    }

    /// Number of pages written since the last [`SegmentFile::clear_dirty`].
    pub(crate) fn dirty_page_count(&self) -> usize {
        self.dirty_pages
    }

    /// Whether page `p` of the file is dirty.
    #[cfg(test)]
    pub(crate) fn is_dirty(&self, p: usize) -> bool {
        self.dirty.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    /// Forgets every dirty bit.
    pub(crate) fn clear_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|w| *w = 0);
        self.dirty_pages = 0;
    }
}
