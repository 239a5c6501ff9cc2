//! Unit tests of the wire format, the reassembly and the hello names.

use std::error::Error;

use spate_state::Ack;

use super::error::{Malformation, ReplicaError};
use super::reassembly::Reassembly;
use super::wire::*;
use super::{Totals, ERROR_MESSAGE_BYTES_MAX, PART_HEADER_BYTES};

fn ack(instance: &str) -> Ack {
    Ack { instance: instance.into(), checkpoint: 7, bytes: 99 }
}

#[test]
fn messages_round_trip() {
    let mut out = Vec::new();
    encode_part(&mut out, "op-1", 10, 4, b"abc");
    let p = parse_part(&out).unwrap();
    assert_eq!((p.instance, p.chunk_len, p.offset, p.bytes), ("op-1", 10, 4, &b"abc"[..]));
    assert_eq!(parse_ack(&encode_ack(&ack("op"))).unwrap(), ("op", 7, 99));
    assert_eq!(parse_error(&encode_error("op", 3, "bad crc")).unwrap(), ("op", 3, "bad crc"));
    assert_eq!(parse_error(&encode_error("", 0, "")).unwrap(), ("", 0, ""));
    assert_eq!(parse_request(&encode_request(5, 9)).unwrap(), (5, 9));
    let t = Totals { instances: 1, checkpoints: 2, chunks: 3, bytes: 4 };
    encode_done(&mut out, &t);
    assert_eq!(parse_done(&out).unwrap(), t);
}

#[test]
fn every_truncation_is_an_error_naming_the_field() {
    let mut part = Vec::new();
    encode_part(&mut part, "op-1", 3, 0, b"abc");
    let mut done = Vec::new();
    encode_done(&mut done, &Totals::default());
    // A part's bytes run to the end of its frame (whose length the
    // transport checks): a part cut after its first byte of chunk is a
    // shorter part, which the reassembly then finds incomplete.
    let part_fixed = PART_HEADER_BYTES + "op-1".len() + 1;
    type Parse = fn(&[u8]) -> Result<(), ReplicaError>;
    let cases: Vec<(Vec<u8>, usize, Parse)> = vec![
        (part, part_fixed, |b| parse_part(b).map(drop)),
        (encode_ack(&ack("op")), 20, |b| parse_ack(b).map(drop)),
        (encode_request(1, 2), 16, |b| parse_request(b).map(drop)),
        (done, 32, |b| parse_done(b).map(drop)),
    ];
    for (bytes, fixed, parse) in cases {
        assert!(parse(&bytes).is_ok());
        for cut in 0..fixed {
            let e = parse(&bytes[..cut]).unwrap_err();
            assert!(matches!(e, ReplicaError::Malformed { .. }), "{e:?}");
            assert!(e.to_string().starts_with("malformed"), "{e}");
        }
        if fixed == bytes.len() {
            let mut long = bytes.clone();
            long.push(0);
            let e = parse(&long).unwrap_err();
            assert!(matches!(
                e,
                ReplicaError::Malformed { fault: Malformation::TrailingBytes { extra: 1 }, .. }
            ));
            assert!(e.to_string().contains("1 bytes after its end"));
        }
    }
    let e = parse_part(&[1, 0]).unwrap_err();
    let ReplicaError::Malformed { message, fault } = &e else { panic!("{e:?}") };
    assert_eq!(*message, "chunk part");
    assert_eq!(*fault, Malformation::Truncated { field: "chunk_len", have: 0, need: 4, len: 2 });
    assert!(e.to_string().contains("`chunk_len`: 0 of 4 bytes (2 in all)"), "{e}");
}

#[test]
fn bad_fields_are_refused() {
    let mut out = Vec::new();
    encode_part(&mut out, "op", 3, 0, b"abc");
    // Bytes beyond the chunk length.
    out[2..6].copy_from_slice(&2u32.to_le_bytes());
    let e = parse_part(&out).unwrap_err().to_string();
    assert!(
        e.starts_with("malformed chunk part message of `op`: 3 bytes at offset 0 of a chunk of 2 bytes"),
        "{e}"
    );
    // Zero chunk length, empty name, name not UTF-8.
    out[2..6].copy_from_slice(&0u32.to_le_bytes());
    assert!(parse_part(&out).unwrap_err().to_string().contains("chunk of 0 bytes"));
    let mut empty_name = Vec::new();
    encode_part(&mut empty_name, "op", 3, 0, b"abc");
    empty_name[0..2].copy_from_slice(&0u16.to_le_bytes());
    assert!(parse_part(&empty_name).unwrap_err().to_string().contains("name of 0 bytes"));
    let mut bad_utf8 = Vec::new();
    encode_part(&mut bad_utf8, "op", 3, 0, b"abc");
    bad_utf8[10] = 0xff;
    assert!(parse_part(&bad_utf8).unwrap_err().to_string().contains("not UTF-8"));
}

#[test]
fn random_bytes_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 48) as usize;
        let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect();
        let _ = parse_part(&bytes);
        let _ = parse_ack(&bytes);
        let _ = parse_error(&bytes);
        let _ = parse_request(&bytes);
        let _ = parse_done(&bytes);
    }
}

#[test]
fn reassembly_checks_order() {
    let mut asm = Reassembly::default();
    let part = |instance, chunk_len, offset, bytes| Part { instance, chunk_len, offset, bytes };
    // One part: handed back in place.
    assert_eq!(asm.push(part("a", 3, 0, b"xyz")).unwrap(), Some(("a", &b"xyz"[..])));
    // Several parts.
    assert_eq!(asm.push(part("a", 5, 0, b"ab")).unwrap(), None);
    assert_eq!(asm.push(part("a", 5, 2, b"cde")).unwrap(), Some(("a", &b"abcde"[..])));
    // A part without its predecessors, or of another chunk in between.
    let e = asm.push(part("a", 5, 2, b"cde")).unwrap_err();
    assert!(matches!(e, ReplicaError::PartWithoutStart { offset: 2, chunk_len: 5, .. }), "{e:?}");
    assert!(e.to_string().contains("without the parts before it"));
    assert_eq!(asm.push(part("a", 5, 0, b"ab")).unwrap(), None);
    assert!(asm.push(part("b", 5, 2, b"cde")).unwrap_err().to_string().contains("does not continue"));
    let e = asm.push(part("a", 5, 3, b"de")).unwrap_err();
    assert!(matches!(e, ReplicaError::PartDoesNotContinue { offset: 3, received: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("does not continue"));
}

#[test]
fn hello_names() {
    assert_eq!(parse_hello_name("bak:w3"), Some((Purpose::Backup, 3)));
    assert_eq!(parse_hello_name("fetch:w12"), Some((Purpose::Fetch, 12)));
    for bad in ["bak:w", "bak:w+3", "bak:wx", "ctl:a", "fetch:w-1", "3>4", "bak:w99999999999999999999999"] {
        assert_eq!(parse_hello_name(bad), None, "{bad}");
    }
}

#[test]
fn error_messages_are_cut_at_a_char_boundary() {
    let long = "é".repeat(ERROR_MESSAGE_BYTES_MAX);
    let e = encode_error("op", 1, &long);
    let (_, _, m) = parse_error(&e).unwrap();
    assert!(m.len() <= ERROR_MESSAGE_BYTES_MAX && m.len() >= ERROR_MESSAGE_BYTES_MAX - 1);
}

#[test]
fn errors_name_their_context_and_keep_their_source() {
    let addr: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let cause = ReplicaError::NoAck {
        instance: "op".into(),
        checkpoint: 3,
        timeout: std::time::Duration::from_millis(200),
    };
    let e = ReplicaError::Stream { origin: 2, addr, source: Box::new(cause) };
    assert_eq!(
        e.to_string(),
        "replica stream of worker 2 to 127.0.0.1:4000: no acknowledgement of checkpoint 3 of `op` within 200ms"
    );
    assert!(matches!(e.inner(), ReplicaError::NoAck { checkpoint: 3, .. }));
    assert!(e.source().unwrap().to_string().starts_with("no acknowledgement"));
    // A clone says the same (a broken client returns its error again).
    assert_eq!(e.clone().to_string(), e.to_string());
    let refused = ReplicaError::CheckpointRefused {
        instance: "op".into(),
        checkpoint: None,
        message: "bad crc".into(),
    };
    assert_eq!(refused.to_string(), "the backup refused a checkpoint of `op`: bad crc");
    assert!(refused.source().is_none());
}

#[test]
fn a_panic_of_the_service_is_caught_and_told_to_its_node() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let server = super::ReplicaServer::start(
        "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        dir.path().join("bak"),
        7,
        spate_state::Durability::PageCache,
    )
    .unwrap_or_else(|e| panic!("start: {e}"));
    let handle = server.completion();
    assert!(handle.panicked().is_none());
    let port = server.addr().port();
    super::server::PANIC_PORT.store(port, std::sync::atomic::Ordering::Release);
    let t = std::time::Instant::now();
    while handle.panicked().is_none() {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "the panic was not told");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let p = handle.panicked().map(ToString::to_string).unwrap_or_default();
    assert_eq!(
        p,
        format!("thread `spate-replica-{port}` panicked while serving backups and fetches: the test made this service panic")
    );
    assert_eq!(server.panicked().map(ToString::to_string), Some(p));
    // Stopping a service whose thread ended returns.
    server.stop();
}
