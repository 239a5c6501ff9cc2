//! Fuzzes the checkpoint chunk decoder and the backup store's receive path:
//! arbitrary bytes, or a valid checkpoint mutated by the input, must never
//! panic; the decoder must never claim more bytes than it was given; the
//! backup must acknowledge a checkpoint only after a trailer, and whatever it
//! acknowledges must restore (or be refused with an error) without panicking.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spate_state::checkpoint::{decode_chunk, FRAME_BYTES};
use spate_state::{hash_u64, BackupStore, BinRange, Durability, StateStore, StoreConfig, ValueState};

const BINS_LOG2: u8 = 2;

/// A scratch directory of this process.
fn scratch() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("spate-state-fuzz-{}", std::process::id()))
}

/// The chunks of a small valid checkpoint (a full image), built once.
fn valid_chunks() -> &'static [Vec<u8>] {
    static CHUNKS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CHUNKS.get_or_init(|| {
        let config = StoreConfig::new(scratch().join("seed"), BINS_LOG2).with_segment_bytes(4096);
        let Ok(mut store) = StateStore::create(config, BinRange::all(BINS_LOG2)) else {
            return Vec::new();
        };
        let Ok(mut sums) = ValueState::<u64, u64>::register(&mut store, "sums") else {
            return Vec::new();
        };
        for k in 0..40u64 {
            let _ = sums.put(&mut store, hash_u64(k), &k, &(k * 3));
        }
        store.checkpoint(1, b"seed").map(|c| c.into_chunks()).unwrap_or_default()
    })
}

/// Rewrites the crc32 of every length-delimited chunk in `s` to match its
/// bytes, so that the fuzzer gets past the crc to the payload checks.
fn fix_crcs(s: &mut [u8]) {
    let mut pos = 0usize;
    while pos + FRAME_BYTES <= s.len() {
        let len = u32::from_le_bytes([s[pos], s[pos + 1], s[pos + 2], s[pos + 3]]) as usize;
        let Some(end) = (pos + 8).checked_add(len) else { return };
        if len == 0 || end > s.len() {
            return;
        }
        let crc = crc32fast::hash(&s[pos + 8..end]);
        s[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}

/// Cuts `s` into chunks by their length fields (the rest as a last piece).
fn split(s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < s.len() {
        let end = if pos + 4 <= s.len() {
            let len = u32::from_le_bytes([s[pos], s[pos + 1], s[pos + 2], s[pos + 3]]) as usize;
            pos.saturating_add(8).saturating_add(len).min(s.len())
        } else {
            s.len()
        };
        out.push(&s[pos..end.max(pos + 1)]);
        pos = end.max(pos + 1);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    // The stream: the input itself, or a valid checkpoint with the input's
    // (offset, xor) pairs applied.
    let mut stream: Vec<u8> = if ctl & 1 == 0 {
        rest.to_vec()
    } else {
        let mut s = valid_chunks().concat();
        for pair in rest.chunks_exact(3) {
            if s.is_empty() {
                break;
            }
            let at = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % s.len();
            s[at] ^= pair[2];
        }
        s
    };
    if ctl & 2 != 0 {
        fix_crcs(&mut stream);
    }

    // The decoder, chunk after chunk.
    let mut at = 0;
    while at < stream.len() {
        match decode_chunk(&stream[at..]) {
            Ok((chunk, n)) => {
                assert!(n >= FRAME_BYTES && n <= stream.len() - at);
                assert_eq!(chunk.payload.len() + FRAME_BYTES, n);
                at += n;
            }
            Err(_) => break,
        }
    }

    // The backup store, one chunk per receive.
    let Ok(mut backup) = BackupStore::open(scratch().join("backup"), Durability::Memory) else { return };
    let mut acked = None;
    let mut trailer_seen = false;
    for piece in split(&stream) {
        let is_trailer =
            decode_chunk(piece).is_ok_and(|(c, _)| c.kind == spate_state::checkpoint::ChunkKind::Trailer);
        match backup.receive("fuzz", piece) {
            Ok(Some(ack)) => {
                assert!(is_trailer, "acknowledged on a chunk that is not a trailer");
                trailer_seen = true;
                acked = Some(ack.checkpoint);
            }
            Ok(None) => {}
            Err(_) => {}
        }
    }
    assert!(acked.is_none() || trailer_seen);
    if acked.is_some() {
        // Restore checks everything again: it loads or refuses, never panics.
        let config = StoreConfig::new(scratch().join("restored"), BINS_LOG2);
        let _ = StateStore::restore(config, &backup, "fuzz");
    }
});
