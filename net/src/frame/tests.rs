//! Tests of the wire format: round trips, corruption, truncation, limits.

use super::decode::le_u32;
use super::*;
use proptest::prelude::*;

fn ctl(kind: Kind, channel: u32, seq: u64) -> FrameHeader {
    FrameHeader { kind, flags: 0, channel, seq }
}

/// Decodes a whole stream, fed in one piece.
fn decode_all(bytes: &[u8]) -> Result<Vec<(FrameHeader, Option<DataHeader>, Vec<u8>)>, FrameError> {
    let mut d = FrameDecoder::new();
    d.feed(bytes);
    let mut out = Vec::new();
    while let Some(f) = d.next_frame()? {
        out.push((f.header, f.data, f.payload.to_vec()));
    }
    d.finish()?;
    Ok(out)
}

fn sample_stream() -> Vec<u8> {
    let mut out = Vec::new();
    let dh = DataHeader { edge: 3, producer: 7, watermark: 123_456, count: 2, flags: 1 };
    encode_data(9, 42, &dh, b"records-go-here", &mut out).unwrap();
    encode_control(Kind::Hello, 0, 1, b"node-a", &mut out).unwrap();
    encode_credit(9, 2, 16, &mut out);
    encode_control(Kind::Heartbeat, 0, 3, &[], &mut out).unwrap();
    out
}

#[test]
fn round_trip_simple() {
    let frames = decode_all(&sample_stream()).unwrap();
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0].0, ctl(Kind::Data, 9, 42));
    assert_eq!(
        frames[0].1,
        Some(DataHeader { edge: 3, producer: 7, watermark: 123_456, count: 2, flags: 1 })
    );
    assert_eq!(frames[0].2, b"records-go-here");
    assert_eq!(frames[1].0, ctl(Kind::Hello, 0, 1));
    assert_eq!(frames[1].1, None);
    assert_eq!(frames[1].2, b"node-a");
    assert_eq!(frames[2].2, 16u32.to_le_bytes());
    assert_eq!(frames[3].2, b"");
}

#[test]
fn needed_counts_missing_bytes() {
    let stream = sample_stream();
    let first = LEN_BYTES + le_u32(&stream, 0) as usize;
    let mut d = FrameDecoder::new();
    assert_eq!(d.needed(), LEN_BYTES);
    d.feed(&stream[..2]);
    assert_eq!(d.needed(), 2);
    d.feed(&stream[2..10]);
    assert_eq!(d.needed(), first - 10);
    d.feed(&stream[10..first]);
    assert_eq!(d.needed(), 0);
    assert!(d.next_frame().unwrap().is_some());
    // An oversized or short length is decidable at once: 0 needed.
    let mut d = FrameDecoder::with_max_frame_bytes(64);
    d.feed(&1000u32.to_le_bytes());
    assert_eq!(d.needed(), 0);
    assert!(d.next_frame().is_err());
    assert_eq!(d.needed(), 0);
    let mut d = FrameDecoder::new();
    d.feed(&3u32.to_le_bytes());
    assert_eq!(d.needed(), 0);
}

#[test]
fn credit_grant_accessor() {
    let mut out = Vec::new();
    encode_credit(5, 1, 77, &mut out);
    let mut d = FrameDecoder::new();
    d.feed(&out);
    let f = d.next_frame().unwrap().unwrap();
    assert_eq!(f.credit_grant(), Some(Ok(77)));
    assert_eq!(f.header.channel, 5);
    // A credit frame with the wrong payload size is a header error.
    let mut bad = Vec::new();
    encode_control(Kind::Credit, 5, 1, &[1, 2, 3], &mut bad).unwrap();
    assert_eq!(decode_all(&bad), Err(FrameError::BadHeader(BadHeader::BadCreditPayload { payload: 3 })));
}

#[test]
fn header_mismatch_rejected_by_encoder() {
    let mut out = Vec::new();
    assert_eq!(
        encode_frame(&ctl(Kind::Data, 0, 0), None, b"x", &mut out),
        Err(FrameError::DataHeaderMismatch(Kind::Data))
    );
    assert_eq!(
        encode_frame(&ctl(Kind::Ack, 0, 0), Some(&DataHeader::default()), b"x", &mut out),
        Err(FrameError::DataHeaderMismatch(Kind::Ack))
    );
    assert!(out.is_empty());
}

#[test]
fn encoder_rejects_oversize_and_leaves_buffer_intact() {
    let mut out = vec![1, 2, 3];
    let big = vec![0u8; MAX_FRAME_BYTES as usize];
    let e = encode_control(Kind::Deploy, 0, 0, &big, &mut out).unwrap_err();
    assert!(matches!(e, FrameError::TooLarge { max: MAX_FRAME_BYTES, .. }));
    assert_eq!(out, [1, 2, 3]);
    // begin/finish path truncates back too.
    let open = begin_frame(&ctl(Kind::Deploy, 0, 0), None, &mut out).unwrap();
    out.extend_from_slice(&big);
    assert!(matches!(finish_frame(open, &mut out), Err(FrameError::TooLarge { .. })));
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn begin_finish_equals_encode() {
    let dh = DataHeader { edge: 1, producer: 2, watermark: 3, count: 4, flags: 5 };
    let mut a = Vec::new();
    encode_data(8, 9, &dh, b"abcdef", &mut a).unwrap();
    let mut b = Vec::new();
    let open = begin_frame(&ctl(Kind::Data, 8, 9), Some(&dh), &mut b).unwrap();
    b.extend_from_slice(b"abc");
    b.extend_from_slice(b"def");
    assert_eq!(finish_frame(open, &mut b).unwrap(), a.len());
    assert_eq!(a, b);
}

#[test]
fn encoder_does_not_allocate_once_warm() {
    let dh = DataHeader::default();
    let mut out = Vec::new();
    encode_data(0, 0, &dh, &[7u8; 1000], &mut out).unwrap();
    let cap = out.capacity();
    let ptr = out.as_ptr();
    for seq in 0..100 {
        out.clear();
        encode_data(0, seq, &dh, &[7u8; 1000], &mut out).unwrap();
    }
    assert_eq!(out.capacity(), cap);
    assert_eq!(out.as_ptr(), ptr);
}

#[test]
fn decoder_does_not_allocate_once_warm() {
    let stream = sample_stream();
    let mut d = FrameDecoder::new();
    let mut n = 0;
    for chunk in stream.chunks(7) {
        d.feed(chunk);
        while d.next_frame().unwrap().is_some() {
            n += 1;
        }
    }
    assert_eq!(n, 4);
    let cap = d.capacity();
    for _ in 0..200 {
        for chunk in stream.chunks(7) {
            d.feed(chunk);
            while d.next_frame().unwrap().is_some() {}
        }
    }
    assert_eq!(d.capacity(), cap);
    assert!(cap <= stream.len() + 64, "decoder buffer {cap} for a {}-byte stream", stream.len());
}

#[test]
fn read_buf_commit_path() {
    let stream = sample_stream();
    let mut d = FrameDecoder::new();
    let mut frames = 0;
    let mut pos = 0;
    while pos < stream.len() {
        let buf = d.read_buf(5);
        let n = buf.len().min(5).min(stream.len() - pos);
        buf[..n].copy_from_slice(&stream[pos..pos + n]);
        d.commit(n);
        pos += n;
        while d.next_frame().unwrap().is_some() {
            frames += 1;
        }
    }
    assert_eq!(frames, 4);
    d.finish().unwrap();
}

#[test]
fn every_single_byte_corruption_is_detected() {
    let stream = sample_stream();
    for i in 0..stream.len() {
        for delta in [0x01u8, 0x80, 0xff, 0x5a] {
            let mut s = stream.clone();
            s[i] ^= delta;
            let r = decode_all(&s);
            assert!(r.is_err(), "corruption of byte {i} by {delta:#x} went undetected: {r:?}");
        }
    }
}

#[test]
fn truncation_is_detected() {
    let stream = sample_stream();
    // Frame boundaries: truncation there is a clean end of stream.
    let mut bounds = vec![0];
    let mut p = 0;
    while p < stream.len() {
        p += 4 + le_u32(&stream, p) as usize;
        bounds.push(p);
    }
    for cut in 0..stream.len() {
        let r = decode_all(&stream[..cut]);
        if bounds.contains(&cut) {
            assert!(r.is_ok(), "cut at boundary {cut}: {r:?}");
        } else {
            assert!(matches!(r, Err(FrameError::Truncated { .. })), "cut at {cut}: {r:?}");
        }
    }
}

#[test]
fn oversize_rejected_without_allocating() {
    for len in [MAX_FRAME_BYTES + 1, u32::MAX] {
        let mut d = FrameDecoder::new();
        d.feed(&len.to_le_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len: u64::from(len), max: MAX_FRAME_BYTES }));
        assert!(d.capacity() < 1024, "capacity {}", d.capacity());
        // Poisoned: keeps failing, ignores further input.
        d.feed(&[0u8; 100]);
        assert!(d.next_frame().is_err());
        assert!(d.capacity() < 1024);
    }
    // A smaller configured limit applies too.
    let mut d = FrameDecoder::with_max_frame_bytes(100);
    let mut out = Vec::new();
    encode_control(Kind::Deploy, 0, 0, &[0u8; 200], &mut out).unwrap();
    d.feed(&out[..4]);
    assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len: 220, max: 100 }));
}

/// A frame with a valid crc over arbitrary header bytes.
fn raw_frame(version: u8, kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![version, kind];
    body.extend_from_slice(&[0u8; HEADER_BYTES - 2]);
    body.extend_from_slice(rest);
    let mut f = ((CRC_BYTES + body.len()) as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    f.extend_from_slice(&body);
    f
}

#[test]
fn unknown_kind_rejected() {
    for k in [0u8, 13, 99, 255] {
        assert_eq!(decode_all(&raw_frame(WIRE_VERSION, k, b"")), Err(FrameError::UnknownKind(k)));
    }
    for k in Kind::ALL {
        assert_eq!(Kind::from_u8(k as u8), Some(k));
    }
}

#[test]
fn bad_version_and_short_frames_rejected() {
    // The version before this one (its batches had no compact layout)
    // and one after it.
    for v in [WIRE_VERSION - 1, WIRE_VERSION + 1] {
        assert_eq!(decode_all(&raw_frame(v, Kind::Hello as u8, b"")), Err(FrameError::BadVersion(v)));
    }
    assert_eq!(
        decode_all(&raw_frame(WIRE_VERSION, Kind::Data as u8, &[0u8; 23])),
        Err(FrameError::BadHeader(BadHeader::ShortDataHeader { payload: 23 }))
    );
    for len in [0u32, 1, MIN_FRAME_LEN - 1] {
        let mut s = len.to_le_bytes().to_vec();
        s.extend_from_slice(&[0u8; 64]);
        assert_eq!(decode_all(&s), Err(FrameError::BadHeader(BadHeader::ShortFrame { len })));
    }
}

/// Deterministic xorshift for the no-panic sweep.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn drain(d: &mut FrameDecoder) -> usize {
    let mut n = 0;
    loop {
        match d.next_frame() {
            Ok(Some(f)) => {
                // Touch everything the frame exposes.
                n += f.payload.len();
                let _ = f.credit_grant();
            }
            Ok(None) | Err(_) => return n,
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let stream = sample_stream();
    for i in 0..4000 {
        let mut bytes: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 {
            // Mostly-valid input: a real stream with a few random mutations,
            // so the deeper checks are reached too.
            bytes = stream.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            if i % 4 == 0 {
                bytes.truncate(rng.below(bytes.len() + 1));
            }
        }
        let mut d = FrameDecoder::with_max_frame_bytes(if i % 3 == 0 { 64 } else { MAX_FRAME_BYTES });
        let mut pos = 0;
        while pos < bytes.len() {
            let n = 1 + rng.below(bytes.len() - pos);
            d.feed(&bytes[pos..pos + n]);
            pos += n;
            drain(&mut d);
        }
        let _ = d.finish();
        assert!(d.capacity() <= bytes.len().max(16) * 2 + 64);
    }
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    (0..Kind::ALL.len()).prop_map(|i| Kind::ALL[i])
}

type Spec = (Kind, u16, u32, u64, DataHeader, Vec<u8>);

fn arb_frame() -> impl Strategy<Value = Spec> {
    (
        arb_kind(),
        any::<u16>(),
        any::<u32>(),
        any::<u64>(),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>()),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(
            |(kind, flags, channel, seq, (edge, producer, watermark, count, bflags), mut payload)| {
                if kind == Kind::Credit {
                    payload.resize(4, 0);
                }
                let dh = DataHeader { edge, producer, watermark, count, flags: bflags };
                (kind, flags, channel, seq, dh, payload)
            },
        )
}

proptest! {
    #[test]
    fn round_trip_split_anywhere(
        frames in proptest::collection::vec(arb_frame(), 0..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut stream = Vec::new();
        for (kind, flags, channel, seq, dh, payload) in &frames {
            let h = FrameHeader { kind: *kind, flags: *flags, channel: *channel, seq: *seq };
            let data = kind.is_data().then_some(dh);
            encode_frame(&h, data, payload, &mut stream).unwrap();
        }
        let mut cut_at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cut_at.push(0);
        cut_at.push(stream.len());
        cut_at.sort_unstable();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for w in cut_at.windows(2) {
            d.feed(&stream[w[0]..w[1]]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push((f.header, f.data, f.payload.to_vec()));
            }
        }
        d.finish().unwrap();
        prop_assert_eq!(got.len(), frames.len());
        for (g, (kind, flags, channel, seq, dh, payload)) in got.iter().zip(&frames) {
            prop_assert_eq!(g.0, FrameHeader { kind: *kind, flags: *flags, channel: *channel, seq: *seq });
            prop_assert_eq!(g.1, kind.is_data().then_some(*dh));
            prop_assert_eq!(&g.2, payload);
        }
    }
}
