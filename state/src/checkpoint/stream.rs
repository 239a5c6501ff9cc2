//! The chunk stream of an asynchronous checkpoint.

use std::sync::Arc;

use memmap2::MmapMut;

use super::{frame, Checkpoint, ChunkKind, HeaderSnapshot, PAGE_CHUNK, PAGE_PAYLOAD};
use crate::store::cow::{CowShared, Phase};
use crate::store::file::LiveMaps;
use crate::store::PAGE_BYTES;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Pages,
    Trailer,
    Done,
}

/// The chunks of a checkpoint begun with
/// [`crate::StateStore::begin_checkpoint`], produced on any thread while
/// the store goes on being written: the header, one chunk per page in
/// ascending page order, the trailer (the format of
/// [`crate::checkpoint`]), exactly the store's state at the begin.
///
/// Pull the chunks with [`CheckpointStream::next_chunk`] (no allocation per
/// chunk) and hand each to the backups in order. The store cannot begin
/// another checkpoint until the trailer is handed out or the stream is
/// dropped; a stream dropped before its trailer is forgotten by the store
/// (its pages are dirty again), so it can be dropped at any point, for
/// example when a backup fails.
///
/// While pages are left to read, the store copies each page of the
/// checkpoint it is about to write (once, 4 KiB) into a shadow that this
/// stream owns: pull the stream steadily, since that copy-on-write costs the
/// store's thread, and the shadow memory (at most the checkpoint's pages),
/// until the last page is read.
///
/// ```
/// use spate_state::{hash_u64, BackupStore, BinRange, Durability, StateStore, StoreConfig, ValueState};
/// # let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
/// # let e = |e: spate_state::StateError| e.to_string();
/// let mut store = StateStore::create(StoreConfig::new(dir.path().join("s"), 4), BinRange::all(4)).map_err(e)?;
/// let mut sums = ValueState::<u64, u64>::register(&mut store, "sums").map_err(e)?;
/// for k in 0..1000u64 {
///     sums.put(&mut store, hash_u64(k), &k, &k).map_err(e)?;
/// }
/// let mut backup = BackupStore::open(dir.path().join("b"), Durability::Memory).map_err(e)?;
/// let mut stream = store.begin_checkpoint(1, b"meta").map_err(e)?;
/// // Another thread streams the checkpoint while this one goes on writing.
/// let streamer = std::thread::spawn(move || {
///     let mut ack = None;
///     while let Some(chunk) = stream.next_chunk() {
///         ack = backup.receive("op-1", chunk)?;
///     }
///     Ok::<_, spate_state::StateError>((backup, ack))
/// });
/// for k in 0..1000u64 {
///     sums.update(&mut store, hash_u64(k), &k, |v| v.unwrap_or(0) + 1).map_err(e)?;
/// }
/// let (backup, ack) = streamer.join().map_err(|_| "streamer panicked")?.map_err(e)?;
/// assert_eq!(ack.map(|a| a.checkpoint), Some(1));
/// // The checkpoint holds the state at the begin, not the updates after it.
/// let (mut restored, _, _) =
///     StateStore::restore(StoreConfig::new(dir.path().join("r"), 4), &backup, "op-1").map_err(e)?;
/// let mut sums_r = ValueState::<u64, u64>::register(&mut restored, "sums").map_err(e)?;
/// assert_eq!(sums_r.get(&restored, hash_u64(7), &7), Some(7));
/// assert_eq!(sums.get(&store, hash_u64(7), &7), Some(8));
/// # Ok::<(), String>(())
/// ```
pub struct CheckpointStream {
    id: u64,
    base: u64,
    pages: u64,
    /// The header, encoded when the stream hands out its chunk.
    snapshot: HeaderSnapshot,
    /// The crc32 of the header chunk's payload, for the trailer.
    header_crc: u32,
    shared: Arc<CowShared>,
    /// The pages to read (one bit per page of the file): the dirty pages,
    /// or those of the bins' segments for a full image. Filled when the
    /// header is handed out.
    read: Vec<u64>,
    live: LiveMaps,
    /// The shadow map, dropped (on the stream's thread) once every page is
    /// read.
    shadow: Option<MmapMut>,
    stage: Stage,
    /// The word of the page bitmap being read, and its pages not read yet.
    word: usize,
    unread: u64,
    pages_read: u64,
    bytes: u64,
    /// The chunk handed out last.
    buf: Vec<u8>,
}

impl std::fmt::Debug for CheckpointStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStream")
            .field("id", &self.id)
            .field("base", &self.base)
            .field("pages", &self.pages)
            .field("pages_read", &self.pages_read)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl CheckpointStream {
    /// The stream of the checkpoint of `snapshot`, holding `pages` pages.
    pub(crate) fn new(
        snapshot: HeaderSnapshot,
        pages: u64,
        shared: Arc<CowShared>,
        shadow: Option<MmapMut>,
        live: LiveMaps,
    ) -> Self {
        Self {
            id: snapshot.id,
            base: snapshot.base,
            pages,
            snapshot,
            header_crc: 0,
            shared,
            read: Vec::new(),
            live,
            shadow,
            stage: Stage::Header,
            word: 0,
            unread: 0,
            pages_read: 0,
            bytes: 0,
            buf: Vec::new(),
        }
    }

    /// The checkpoint's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The id of the checkpoint this one is an increment on (0 for a full
    /// image).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Whether this is a full image.
    pub fn is_full(&self) -> bool {
        self.base == 0
    }

    /// Number of page chunks the checkpoint holds.
    pub fn page_count(&self) -> u64 {
        self.pages
    }

    /// Number of page chunks handed out so far.
    pub fn pages_streamed(&self) -> u64 {
        self.pages_read
    }

    /// Bytes of the chunks handed out so far.
    pub fn bytes_streamed(&self) -> u64 {
        self.bytes
    }

    /// Whether the trailer was handed out (the checkpoint is whole).
    pub fn is_finished(&self) -> bool {
        self.stage == Stage::Done
    }

    /// The next chunk, in stream order, or `None` after the trailer. The
    /// bytes are valid until the next call (a buffer the stream reuses).
    pub fn next_chunk(&mut self) -> Option<&[u8]> {
        loop {
            match self.stage {
                Stage::Header => {
                    let header = self.snapshot.encode();
                    self.header_crc = crc32fast::hash(&header);
                    self.buf = frame(ChunkKind::Header, &[&header]);
                    let words = self.shared.set.len();
                    self.read = if self.is_full() {
                        self.snapshot.layout_page_set(words)
                    } else {
                        self.shared.set.to_vec()
                    };
                    debug_assert_eq!(
                        self.read.iter().map(|w| u64::from(w.count_ones())).sum::<u64>(),
                        self.pages
                    );
                    self.word = 0;
                    self.unread = self.read.first().copied().unwrap_or(0);
                    self.stage = Stage::Pages;
                    break;
                }
                Stage::Pages => {
                    if self.unread != 0 {
                        let p = self.word as u64 * 64 + u64::from(self.unread.trailing_zeros());
                        self.unread &= self.unread - 1;
                        self.page_chunk(p);
                        self.pages_read += 1;
                        break;
                    }
                    self.word += 1;
                    match self.read.get(self.word) {
                        Some(&w) => self.unread = w,
                        None => self.pages_done(),
                    }
                }
                Stage::Trailer => {
                    debug_assert_eq!(self.pages_read, self.pages);
                    let mut t = self.pages_read.to_le_bytes().to_vec();
                    t.extend_from_slice(&self.header_crc.to_le_bytes());
                    self.buf = frame(ChunkKind::Trailer, &[&t]);
                    self.stage = Stage::Done;
                    self.shared.set_phase(Phase::Complete);
                    break;
                }
                Stage::Done => return None,
            }
        }
        self.bytes += self.buf.len() as u64;
        Some(&self.buf)
    }

    /// Drains the stream into a [`Checkpoint`] (its chunks in memory).
    pub fn into_checkpoint(mut self) -> Checkpoint {
        let mut chunks = Vec::with_capacity(self.pages as usize + 2);
        while let Some(c) = self.next_chunk() {
            chunks.push(c.to_vec());
        }
        Checkpoint { id: self.id, base: self.base, pages: self.pages, chunks }
    }

    /// Every page is read: the store stops copying, and the shadow goes.
    fn pages_done(&mut self) {
        self.shared.close(&self.read, self.word, 0);
        self.shared.set_phase(Phase::PagesDone);
        self.shadow = None;
        self.stage = Stage::Trailer;
    }

    /// Frames page `p`, read as it was at the begin, into `buf`.
    fn page_chunk(&mut self, p: u64) {
        if self.buf.len() != PAGE_CHUNK {
            self.buf.clear();
            self.buf.resize(PAGE_CHUNK, 0);
        }
        let buf = &mut self.buf[..];
        buf[0..4].copy_from_slice(&((1 + PAGE_PAYLOAD) as u32).to_le_bytes());
        buf[8] = ChunkKind::Page.code();
        buf[9..17].copy_from_slice(&p.to_le_bytes());
        let live = self.live.page_ptr(p);
        // SAFETY: the stream reads each page of its set once, in ascending
        // order, and owns the shadow until every page is read; `live` is
        // page `p` in maps `self.live` keeps alive.
        unsafe { self.shared.read_page(p, live, &mut buf[21..]) };
        let data_crc = crc32fast::hash(&buf[21..]);
        buf[17..21].copy_from_slice(&data_crc.to_le_bytes());
        // The chunk's crc covers kind, index, page crc and page: the page's
        // crc extends that of the 13 bytes before it, without a second pass.
        let mut h = crc32fast::Hasher::new();
        h.update(&buf[8..21]);
        h.combine(&crc32fast::Hasher::new_with_initial_len(data_crc, PAGE_BYTES as u64));
        buf[4..8].copy_from_slice(&h.finalize().to_le_bytes());
    }
}

impl Drop for CheckpointStream {
    fn drop(&mut self) {
        match self.stage {
            Stage::Done => {}
            // Pages left: take them all from the writer, wait for its copies
            // in flight, then the shadow may go.
            Stage::Header | Stage::Pages => {
                self.shared.close(&self.read, self.word, self.unread);
                self.shared.set_phase(Phase::Abandoned);
            }
            Stage::Trailer => self.shared.set_phase(Phase::Abandoned),
        }
    }
}
