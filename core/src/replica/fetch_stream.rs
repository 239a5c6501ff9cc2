//! The service side of a fetch: which stored checkpoints a fetch streams
//! (planned up front, refusing a fetch of a checkpoint that is not
//! complete), and streaming them, read back chunk by chunk from the
//! store's memory or files and checked again, as chunk parts and the end
//! marker.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use spate_net::frame::Kind;
use spate_net::Connection;
use spate_state::checkpoint::{decode_chunk, CHUNK_MAX};
use spate_state::BackupStore;

use super::error::{Missing, ReplicaError, StoredFault};
use super::wire::{encode_done, encode_part};
use super::{Totals, FETCH_BYTES_PER_PASS, PART_BYTES_MAX};

/// Why a fetch stream stopped.
pub(super) enum Pumped {
    /// The connection failed.
    Net,
    /// The stored data could not be read: the error for the client.
    Store(ReplicaError),
}

/// Where a stored checkpoint's chunks are read from.
enum Source {
    /// The store's memory (borrowed again for each chunk), from this
    /// offset.
    Memory(usize),
    /// The file, read chunk by chunk.
    File(BufReader<File>, PathBuf),
}

/// The checkpoints a fetch streams, and where it stands.
pub(super) struct FetchStream {
    /// Instances left, each with the checkpoints of its chain left.
    todo: VecDeque<(String, VecDeque<u64>)>,
    /// The checkpoint being sent: its instance and id, and its chunks.
    current: Option<(String, u64, Source)>,
    /// The chunk being sent, and the bytes of it sent.
    chunk: Vec<u8>,
    chunk_sent: usize,
    /// The next message, built and not yet queued.
    message: Vec<u8>,
    staged: Option<Kind>,
    totals: Totals,
    finished: bool,
}

impl FetchStream {
    /// The fetch of checkpoint `id` of every instance of `store`, or the
    /// error naming what is missing.
    pub(super) fn plan(store: &BackupStore, origin: usize, id: u64) -> Result<Self, ReplicaError> {
        let instances = store.instances();
        if instances.is_empty() {
            return Err(ReplicaError::NothingStored { origin });
        }
        let mut todo = VecDeque::new();
        let mut missing = Vec::new();
        for instance in instances {
            let complete = store.complete_checkpoints(&instance);
            let latest_complete = complete.last().copied().unwrap_or(0);
            if !complete.contains(&id) {
                missing.push(Missing { instance, latest_complete, chain: None });
                continue;
            }
            match store.chain(&instance, id) {
                Ok(chain) => todo.push_back((instance, chain.into())),
                Err(e) => missing.push(Missing { instance, latest_complete, chain: Some(Arc::new(e)) }),
            }
        }
        if !missing.is_empty() {
            return Err(ReplicaError::Incomplete { origin, checkpoint: id, missing });
        }
        Ok(Self {
            todo,
            current: None,
            chunk: Vec::new(),
            chunk_sent: 0,
            message: Vec::new(),
            staged: None,
            totals: Totals::default(),
            finished: false,
        })
    }

    /// Queues messages until the send buffer is full or the pass's budget
    /// is spent; whether anything moved, and whether the fetch is all
    /// queued (end marker included).
    pub(super) fn pump(
        &mut self,
        conn: &mut Connection,
        store: &BackupStore,
        seq: &mut u64,
    ) -> Result<(bool, bool), Pumped> {
        let mut progress = false;
        let mut queued = 0;
        while queued < FETCH_BYTES_PER_PASS {
            let kind = match self.staged {
                Some(k) => k,
                None => match self.next_message(store).map_err(Pumped::Store)? {
                    Some(k) => {
                        self.staged = Some(k);
                        k
                    }
                    None => return Ok((progress, true)),
                },
            };
            if conn.try_send_control(kind, 0, *seq, &self.message).map_err(|_| Pumped::Net)? {
                *seq += 1;
                self.staged = None;
                queued += self.message.len();
                progress = true;
            } else if !conn.poll_io().map_err(|_| Pumped::Net)? {
                break; // the socket takes no more for now
            }
        }
        Ok((progress, false))
    }

    /// Builds the next message into `self.message`: a part, or the end
    /// marker; `None` after the end marker.
    fn next_message(&mut self, store: &BackupStore) -> Result<Option<Kind>, ReplicaError> {
        loop {
            if let Some((instance, _, _)) = &self.current {
                if self.chunk_sent < self.chunk.len() {
                    let end = (self.chunk_sent + PART_BYTES_MAX).min(self.chunk.len());
                    let bytes = &self.chunk[self.chunk_sent..end];
                    encode_part(&mut self.message, instance, self.chunk.len(), self.chunk_sent, bytes);
                    self.chunk_sent = end;
                    return Ok(Some(Kind::CheckpointChunk));
                }
            }
            if let Some((instance, id, source)) = &mut self.current {
                if next_stored_chunk(store, instance, *id, source, &mut self.chunk).map_err(|fault| {
                    ReplicaError::Stored { instance: instance.clone(), checkpoint: *id, fault }
                })? {
                    self.chunk_sent = 0;
                    self.totals.chunks += 1;
                    self.totals.bytes += self.chunk.len() as u64;
                } else {
                    self.current = None;
                }
                continue;
            }
            let Some((instance, ids)) = self.todo.front_mut() else {
                if self.finished {
                    return Ok(None);
                }
                self.finished = true;
                encode_done(&mut self.message, &self.totals);
                return Ok(Some(Kind::Ack));
            };
            let Some(id) = ids.pop_front() else {
                self.todo.pop_front();
                self.totals.instances += 1;
                continue;
            };
            let instance = instance.clone();
            let source = match store.checkpoint_path(&instance, id) {
                Some(path) => match File::open(&path) {
                    Ok(f) => Source::File(BufReader::with_capacity(1 << 20, f), path),
                    Err(e) => {
                        let fault = StoredFault::Open { path, source: Arc::new(e) };
                        return Err(ReplicaError::Stored { instance, checkpoint: id, fault });
                    }
                },
                None => Source::Memory(0),
            };
            self.totals.checkpoints += 1;
            self.chunk.clear();
            self.chunk_sent = 0;
            self.current = Some((instance, id, source));
        }
    }
}

/// Reads the next chunk of `instance`'s stored checkpoint `id` into `buf`,
/// checking it with `decode_chunk`; false at the end.
fn next_stored_chunk(
    store: &BackupStore,
    instance: &str,
    id: u64,
    source: &mut Source,
    buf: &mut Vec<u8>,
) -> Result<bool, StoredFault> {
    buf.clear();
    match source {
        Source::Memory(pos) => {
            // Borrowed, not copied, for a store in memory.
            let bytes = store.read(instance, id).map_err(|e| StoredFault::Read(Arc::new(e)))?;
            let Some(rest) = bytes.get(*pos..).filter(|r| !r.is_empty()) else {
                return Ok(false);
            };
            let (_, n) = decode_chunk(rest).map_err(|reason| StoredFault::CorruptAt { pos: *pos, reason })?;
            buf.extend_from_slice(&rest[..n]);
            *pos += n;
            Ok(true)
        }
        Source::File(reader, path) => {
            let mut prefix = [0u8; 8];
            let mut got = 0;
            while got < prefix.len() {
                match reader.read(&mut prefix[got..]) {
                    Ok(0) if got == 0 => return Ok(false),
                    Ok(0) => return Err(StoredFault::TruncatedFraming { path: path.clone(), got }),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(StoredFault::ReadFile { path: path.clone(), source: Arc::new(e) }),
                }
            }
            let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if len == 0 || len > CHUNK_MAX {
                return Err(StoredFault::ChunkLength { path: path.clone(), len });
            }
            buf.extend_from_slice(&prefix);
            buf.resize(8 + len, 0);
            reader
                .read_exact(&mut buf[8..])
                .map_err(|e| StoredFault::ReadFile { path: path.clone(), source: Arc::new(e) })?;
            let (_, n) =
                decode_chunk(buf).map_err(|reason| StoredFault::Corrupt { path: path.clone(), reason })?;
            debug_assert_eq!(n, buf.len());
            Ok(true)
        }
    }
}
