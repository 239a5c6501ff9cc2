//! The copy-on-write shadow of an asynchronous checkpoint.
//!
//! [`crate::StateStore::begin_checkpoint`] fixes the checkpoint's *page
//! set* and hands it to a [`CowShared`], shared by two parties:
//!
//! - the **writer**: the store's owning thread, the only one that ever
//!   writes the segment file. Every write marks its pages dirty first
//!   (`SegmentFile::mark_dirty`); while a checkpoint streams, that call also
//!   runs [`CowShared::before_write`] for each page it has not settled yet.
//! - the **streamer**: whichever thread pulls the
//!   [`crate::checkpoint::CheckpointStream`], which reads the pages the
//!   checkpoint holds with [`CowShared::read_page`], in ascending order.
//!
//! The page set of an increment is the dirty pages; that of a full image is
//! every page of the file, of which the stream reads those of the bins'
//! segments (it learns them from the header snapshot: building their bitmap
//! at the begin would cost a step per segment). Each page of the set is
//! *claimed* at most once, by an atomic `fetch_and` that clears its bit in
//! `pending`:
//!
//! - claimed by the **writer** (it is about to write a page the streamer has
//!   not read yet): the writer copies the page into the *shadow* (an
//!   anonymous map with a slot per page of the file, committed only where
//!   written) and then sets its bit in `copied` (release). The streamer,
//!   finding the bit already cleared, waits for `copied` (acquire) and reads
//!   the shadow: the page as it was at the begin.
//! - claimed by the **streamer**: it had published the page in `reading`
//!   before the claim, copies the page from the live map, then stores
//!   `NO_PAGE` in `reading` (release). A writer that finds the bit already
//!   cleared and its `copied` bit unset spins while `reading` holds the page.
//!
//! # Ordering
//!
//! Every write to the file is preceded, on the writer's thread, by
//! `before_write` of each page it touches (or by the page being settled
//! earlier in this checkpoint, which only a completed `before_write` does).
//!
//! - Writer claims `p`: the streamer's claim of `p` fails and it waits for
//!   the `copied` bit, whose release store follows the writer's copy, so the
//!   shadow holds the page before any write (the writes follow the copy in
//!   the writer's program order). The streamer never reads `p` live.
//! - Streamer claims `p`: its store of `p` to `reading` is sequenced before
//!   its claim, a release read-modify-write. The writer saw the bit cleared
//!   by an acquire load or acquire read-modify-write of the same word, which
//!   reads the streamer's claim or a later value of the word, so the claim
//!   synchronises with it and `reading == p` (or a later store) is visible
//!   to the writer's acquire load of `reading`. Every later store to
//!   `reading` (`NO_PAGE`, or the next page) is a release sequenced after the
//!   streamer's reads of `p`, so once the writer sees a value other than `p`
//!   those reads happen before the writer's write. Bits are only ever
//!   cleared, so a page is claimed once.
//! - The end: the stream runs [`CowShared::close`] (which leaves no page
//!   to claim and no copy in flight), then stores the phase (release). A
//!   writer that loads a phase other than [`Phase::Pages`] (acquire) stops
//!   copying: every read of the stream happens before its next write.
//!
//! The writer waits at most for one page copy (4 KiB) by the streamer, and
//! only if it writes that very page at that moment (or longer if the
//! streamer's thread is descheduled right then); the streamer waits at most
//! for one page copy by the writer.
//!
//! # Lifetime
//!
//! The shadow map is owned by the stream. The writer dereferences the shadow
//! only after winning a claim, and the stream drops the shadow only when no
//! claim can be won any more and every claim won by the writer has its copy
//! done: after [`CowShared::close`] has cleared every pending bit and waited
//! for the copies of the claims the writer won, which the stream runs after
//! its last page, or when it is dropped unfinished.
//! The live maps are kept alive by the stream's own `Arc`s, so a stream
//! outlives its store safely.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Bytes per page: the unit of dirty tracking, of copy-on-write and of
/// checkpoint chunks.
pub const PAGE_BYTES: usize = 4096;

/// `reading` when the streamer reads no page from the live map.
const NO_PAGE: u64 = u64::MAX;
/// Spins of a wait before it yields the CPU (a page copy takes well under
/// a microsecond; past that, the other side's thread is likely not
/// running, perhaps on this very CPU).
const SPINS_BEFORE_YIELD: u32 = 256;

/// Waits until `done()`: a page copy by the other side, which is short.
#[inline]
fn wait_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Where an asynchronous checkpoint's stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Pages are being streamed: the writer copies before writing.
    Pages = 0,
    /// Every page was read; the trailer is not handed out yet.
    PagesDone = 1,
    /// The trailer was handed out: the checkpoint is whole.
    Complete = 2,
    /// The stream was dropped before its trailer.
    Abandoned = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Pages,
            1 => Phase::PagesDone,
            2 => Phase::Complete,
            _ => Phase::Abandoned,
        }
    }
}

/// The state an asynchronous checkpoint's writer and streamer share.
pub(crate) struct CowShared {
    /// The checkpoint's pages (bit `p % 64` of word `p / 64`); never
    /// changes.
    pub(crate) set: Box<[u64]>,
    /// Pages of `set` not claimed yet.
    pending: Box<[AtomicU64]>,
    /// Pages the writer claimed and copied into the shadow.
    copied: Box<[AtomicU64]>,
    /// The page the streamer is reading from the live map, or `NO_PAGE`.
    reading: AtomicU64,
    /// A [`Phase`].
    phase: AtomicU8,
    /// Base of the shadow map: the copy of page `p` is at
    /// `shadow + p * PAGE_BYTES`, for `p < shadow_pages`.
    shadow: *mut u8,
    shadow_pages: u64,
}

// SAFETY: `shadow` points into a map owned by the checkpoint stream, which
// keeps it alive while any thread may dereference it (see "Lifetime" above);
// the page copies through it are ordered by the atomics (see "Ordering").
// Everything else in the struct is atomic or immutable.
unsafe impl Send for CowShared {}
// SAFETY: as for `Send`: shared access goes through atomics, the immutable
// `set`, or the shadow under the claim protocol.
unsafe impl Sync for CowShared {}

impl CowShared {
    /// The shared state of a checkpoint of the pages of `set`, with a
    /// shadow of `shadow_pages` pages at `shadow` (which must cover every
    /// page of `set`).
    pub(crate) fn new(set: Vec<u64>, shadow: *mut u8, shadow_pages: u64) -> Self {
        debug_assert!(set.len() as u64 * 64 <= shadow_pages.div_ceil(64) * 64);
        let pending = set.iter().map(|&w| AtomicU64::new(w)).collect();
        let copied = set.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            set: set.into_boxed_slice(),
            pending,
            copied,
            reading: AtomicU64::new(NO_PAGE),
            phase: AtomicU8::new(Phase::Pages as u8),
            shadow,
            shadow_pages,
        }
    }

    /// The stream's phase (acquire: what the streamer did before it set the
    /// phase happens before what the caller does next).
    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Sets the phase (release).
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Pages in the checkpoint.
    pub(crate) fn page_count(&self) -> u64 {
        self.set.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Writer side: makes page `p` safe to write. If the streamer has not
    /// claimed it, claims it and copies it into the shadow; if the streamer
    /// is reading it from the live map, waits until it is done.
    ///
    /// # Safety
    ///
    /// Only the store's owning thread (the only writer of the file) calls
    /// it, before writing page `p`, and `live` points to the page's
    /// `PAGE_BYTES` bytes in the live map.
    pub(crate) unsafe fn before_write(&self, p: u64, live: *const u8) {
        let (w, bit) = ((p / 64) as usize, 1u64 << (p % 64));
        let Some(pending) = self.pending.get(w) else {
            return;
        };
        // Pending pages lie in the file as it was at the begin, which the
        // shadow covers; checked before the claim, which the stream may then
        // wait on (a claim is always followed by its copy).
        let candidate = pending.load(Ordering::Acquire) & bit != 0;
        assert!(
            !candidate || p < self.shadow_pages,
            "checkpoint page {p} outside its shadow of {} pages",
            self.shadow_pages
        );
        if candidate && pending.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            // SAFETY: the claim gives this thread the shadow slot of `p`
            // until `copied` says otherwise, and keeps the shadow alive (the
            // stream drops it only after waiting for this copy); `live` is
            // the page in the live map, which only this thread writes.
            unsafe {
                std::ptr::copy_nonoverlapping(live, self.shadow.add(p as usize * PAGE_BYTES), PAGE_BYTES);
            }
            self.copied[w].fetch_or(bit, Ordering::Release);
            return;
        }
        // Copied earlier by this thread: the streamer reads the shadow.
        if self.copied[w].load(Ordering::Relaxed) & bit != 0 {
            return;
        }
        // Claimed by the streamer (or not in the checkpoint): wait while it
        // reads the page.
        wait_until(|| self.reading.load(Ordering::Acquire) != p);
    }

    /// Streamer side: copies page `p` of the checkpoint, as it was at the
    /// begin, into `out`: from the live map if the writer has not claimed
    /// it, else from the shadow once the writer's copy is done.
    ///
    /// # Safety
    ///
    /// Only the stream calls it, once per page of the set, in ascending
    /// order, while it owns the shadow; `live` points to the page's
    /// `PAGE_BYTES` bytes in a live map the stream keeps alive.
    pub(crate) unsafe fn read_page(&self, p: u64, live: *const u8, out: &mut [u8]) {
        assert_eq!(out.len(), PAGE_BYTES);
        let (w, bit) = ((p / 64) as usize, 1u64 << (p % 64));
        debug_assert!(self.set[w] & bit != 0);
        self.reading.store(p, Ordering::Release);
        if self.pending[w].fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            // SAFETY: the claim keeps the writer off page `p` until the
            // release store below; `live` is mapped (kept alive by the
            // stream).
            unsafe { std::ptr::copy_nonoverlapping(live, out.as_mut_ptr(), PAGE_BYTES) };
            self.reading.store(NO_PAGE, Ordering::Release);
            return;
        }
        self.reading.store(NO_PAGE, Ordering::Release);
        wait_until(|| self.copied[w].load(Ordering::Acquire) & bit != 0);
        // SAFETY: the writer won the claim of `p` and its copy is done (the
        // acquire load above synchronises with its release); nothing writes
        // the slot again, and the caller owns the shadow.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.shadow.add(p as usize * PAGE_BYTES).cast_const(),
                out.as_mut_ptr(),
                PAGE_BYTES,
            )
        };
    }

    /// Streamer side, when the stream reads no more pages (all read, or
    /// dropped unfinished): claims every page still pending and waits for
    /// the writer's copies of the pages it claimed. The stream claimed the
    /// pages of `read` (its page bitmap) in the words before `word` and
    /// those of word `word` not in `unread`. After it no claim can be won
    /// and no copy is in flight: the writer never touches the shadow again.
    pub(crate) fn close(&self, read: &[u64], word: usize, unread: u64) {
        for (w, pending) in self.pending.iter().enumerate() {
            // Bits are only cleared: a word seen empty stays empty.
            let left =
                if pending.load(Ordering::Acquire) == 0 { 0 } else { pending.swap(0, Ordering::AcqRel) };
            let by_stream = match w.cmp(&word) {
                std::cmp::Ordering::Less => read.get(w).copied().unwrap_or(0),
                std::cmp::Ordering::Equal => read.get(w).copied().unwrap_or(0) & !unread,
                std::cmp::Ordering::Greater => 0,
            };
            let by_writer = self.set[w] & !left & !by_stream;
            wait_until(|| self.copied[w].load(Ordering::Acquire) & by_writer == by_writer);
        }
    }
}
