//! Fuzzes `FrameDecoder`: arbitrary bytes, fed in pieces whose sizes come
//! from the input itself, must never panic, never yield a frame after an
//! error, and never grow the buffer beyond what was fed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate_net::frame::{FrameDecoder, Kind};

/// Rewrites the crc of every length-delimited frame in `s` to match its bytes.
fn fix_crcs(s: &mut [u8]) {
    let mut pos = 0usize;
    while pos + 8 <= s.len() {
        let len = u32::from_le_bytes([s[pos], s[pos + 1], s[pos + 2], s[pos + 3]]) as usize;
        let Some(end) = (pos + 4).checked_add(len) else { return };
        if len < 4 || end > s.len() {
            return;
        }
        let crc = crc32fast::hash(&s[pos + 8..end]);
        s[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte picks the limit, whether crcs are repaired (so the fuzzer
    // gets past the crc check to the header checks) and the split step.
    let Some((&ctl, stream)) = data.split_first() else { return };
    let max = if ctl & 1 == 0 { 64 } else { spate_net::frame::MAX_FRAME_BYTES };
    let mut owned = stream.to_vec();
    if ctl & 2 != 0 {
        fix_crcs(&mut owned);
    }
    let stream = &owned[..];
    let step = 1 + (ctl >> 2) as usize;
    let mut d = FrameDecoder::with_max_frame_bytes(max);
    let mut failed = false;
    for (i, chunk) in stream.chunks(step).enumerate() {
        if i % 2 == 0 {
            d.feed(chunk);
        } else {
            let buf = d.read_buf(chunk.len());
            buf[..chunk.len()].copy_from_slice(chunk);
            d.commit(chunk.len());
        }
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(!failed, "frame after an error");
                    assert!(f.payload.len() < max as usize);
                    assert_eq!(f.data.is_some(), f.header.kind == Kind::Data);
                    let _ = f.credit_grant();
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
    }
    let _ = d.finish();
    assert!(d.capacity() <= 2 * stream.len() + 256);
});
