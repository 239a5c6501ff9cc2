//! The TCP transport over real loopback sockets: both ends are polled from
//! the test's thread (nothing blocks), ports come from the OS, and every
//! loop is bounded by a deadline.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener, TcpStream};
use std::time::{Duration, Instant};

use spate_net::conn::{Connection, Delivery, Listener, NetConfig};
use spate_net::error::{HandshakeStage, NetError, NetErrorKind};
use spate_net::frame::{encode_control, encode_data, DataHeader, Frame, FrameError, Kind};
use spate_net::hello::{GoodbyeReason, Hello, Rejection};

const CLUSTER: u64 = 0x5eed_0001;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn within(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

fn check(deadline: Instant, what: &str) {
    assert!(Instant::now() < deadline, "timed out waiting for {what}");
}

fn config(node: &str) -> NetConfig {
    NetConfig::new(node, CLUSTER)
}

/// Connects `client` to `listener`, polling both ends from this thread.
fn connect_pair(listener: &mut Listener, client: &NetConfig, deadline: Instant) -> (Connection, Connection) {
    let mut connecting = Connection::connect(listener.local_addr(), client, deadline).unwrap();
    let (mut a, mut b) = (None, None);
    while a.is_none() || b.is_none() {
        check(deadline, "the handshake");
        if a.is_none() {
            a = connecting.poll().unwrap();
        }
        if b.is_none() {
            b = listener.poll_accept().unwrap();
        }
    }
    (a.unwrap(), b.unwrap())
}

/// A received frame, copied out for checking.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Got {
    kind: Kind,
    channel: u32,
    seq: u64,
    data: Option<DataHeader>,
    payload: Vec<u8>,
}

fn got(f: &Frame<'_>) -> Got {
    Got {
        kind: f.header.kind,
        channel: f.header.channel,
        seq: f.header.seq,
        data: f.data,
        payload: f.payload.to_vec(),
    }
}

/// One pass of both ends' loops: I/O, then every received frame (consumed).
fn pump(a: &mut Connection, b: &mut Connection, at_a: &mut Vec<Got>, at_b: &mut Vec<Got>) {
    a.poll_io().unwrap();
    b.poll_io().unwrap();
    a.poll_recv(1024, |f| {
        at_a.push(got(&f));
        Delivery::Consumed
    })
    .unwrap();
    b.poll_recv(1024, |f| {
        at_b.push(got(&f));
        Delivery::Consumed
    })
    .unwrap();
}

fn header(edge: u32, seq: u64) -> DataHeader {
    DataHeader { edge, producer: 7, watermark: seq * 10, count: 1, flags: 0 }
}

fn hello_frame(node: &str, cluster: u64, window: u32) -> Vec<u8> {
    let mut payload = Vec::new();
    Hello { node: node.into(), cluster, credit_window: window, auth: spate_net::hello::HelloAuth::None }
        .encode(&mut payload);
    let mut out = Vec::new();
    encode_control(Kind::Hello, 0, 0, &payload, &mut out).unwrap();
    out
}

fn data_frame(channel: u32, seq: u64, records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_data(channel, seq, &header(channel, seq), records, &mut out).unwrap();
    out
}

/// Polls `listener` until it yields a connection or an error.
fn accept_one(listener: &mut Listener, deadline: Instant) -> Result<Connection, NetError> {
    loop {
        check(deadline, "poll_accept");
        if let Some(c) = listener.poll_accept()? {
            return Ok(c);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Polls `conn` (consuming frames into `frames`) until it fails.
fn run_until_error(conn: &mut Connection, frames: &mut Vec<Got>, deadline: Instant) -> NetError {
    loop {
        check(deadline, "the connection to fail");
        let r = conn.poll_io().and_then(|_| {
            conn.poll_recv(64, |f| {
                frames.push(got(&f));
                Delivery::Consumed
            })
        });
        if let Err(e) = r {
            return e;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A good connection still works on `listener`.
fn assert_listener_serves(listener: &mut Listener, deadline: Instant) {
    let (mut a, mut b) = connect_pair(listener, &config("good"), deadline);
    assert_eq!(b.peer().node, "good");
    assert!(a.try_send_data(1, 0, &header(1, 0), b"still serving").unwrap());
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    while at_b.is_empty() {
        check(deadline, "a frame on the good connection");
        pump(&mut a, &mut b, &mut at_a, &mut at_b);
    }
    assert_eq!(at_b[0].payload, b"still serving");
}

#[test]
fn round_trip_of_data_and_control_frames_on_multiplexed_channels() {
    let deadline = within(20);
    let mut listener = Listener::bind(any_port(), config("node-b")).unwrap();
    let (mut a, mut b) = connect_pair(&mut listener, &config("node-a"), deadline);
    assert_eq!(a.peer().node, "node-b");
    assert_eq!(a.peer().addr, listener.local_addr());
    assert_eq!(b.peer().node, "node-a");
    assert_eq!(b.peer().addr, a.local_addr().unwrap());

    // a → b: 3 channels × 40 batches (more than a window each), with
    // control frames between; b → a: one channel and an ack.
    let channels = [1u32, 2, 900];
    let per_channel = 40u64;
    let mut to_send: Vec<(u32, u64)> =
        (0..per_channel).flat_map(|s| channels.iter().map(move |&c| (c, s))).collect();
    to_send.reverse();
    assert!(a.try_send_control(Kind::Deploy, 0, 1, b"the plan").unwrap());
    assert!(b.try_send_data(77, 0, &header(77, 0), b"from b").unwrap());
    assert!(b.try_send_control(Kind::Ack, 3, 41, b"").unwrap());
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    let mut sent_report = false;
    while at_b.len() < channels.len() * per_channel as usize + 2 || at_a.len() < 2 {
        check(deadline, "all frames");
        while let Some(&(c, s)) = to_send.last() {
            let payload = format!("channel {c} batch {s}");
            if !a.try_send_data(c, s, &header(c, s), payload.as_bytes()).unwrap() {
                break;
            }
            to_send.pop();
        }
        if to_send.is_empty() && !sent_report {
            sent_report = a.try_send_control(Kind::Report, 5, 2, b"metrics").unwrap();
        }
        pump(&mut a, &mut b, &mut at_a, &mut at_b);
    }

    // Per channel, in order and intact; control frames where they were sent.
    assert_eq!(
        at_b[0],
        Got { kind: Kind::Deploy, channel: 0, seq: 1, data: None, payload: b"the plan".to_vec() }
    );
    assert_eq!(at_b.last().unwrap().kind, Kind::Report);
    assert_eq!(at_b.last().unwrap().payload, b"metrics");
    for &c in &channels {
        let on_c: Vec<&Got> = at_b.iter().filter(|g| g.kind == Kind::Data && g.channel == c).collect();
        assert_eq!(on_c.len(), per_channel as usize);
        for (s, g) in on_c.iter().enumerate() {
            let s = s as u64;
            assert_eq!(g.seq, s);
            assert_eq!(g.data, Some(header(c, s)));
            assert_eq!(g.payload, format!("channel {c} batch {s}").as_bytes());
        }
    }
    assert_eq!(at_a[0].data, Some(header(77, 0)));
    assert_eq!(at_a[0].payload, b"from b");
    assert_eq!(at_a[1], Got { kind: Kind::Ack, channel: 3, seq: 41, data: None, payload: vec![] });
    // Credits come back: every channel gets its full window again.
    while channels.iter().any(|&c| a.send_credits(c) < a.peer().credit_window) {
        check(deadline, "the last credit grants");
        pump(&mut a, &mut b, &mut at_a, &mut at_b);
    }
    assert_eq!(at_a.len(), 2);

    // An orderly goodbye, then the close: b sees both, in that order.
    assert!(a.try_send_control(Kind::Goodbye, 0, 0, &[GoodbyeReason::Orderly.code()]).unwrap());
    while a.unsent_bytes() > 0 {
        check(deadline, "the goodbye to be written");
        a.poll_io().unwrap();
    }
    drop(a);
    let mut frames = Vec::new();
    let e = run_until_error(&mut b, &mut frames, deadline);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].kind, Kind::Goodbye);
    assert!(matches!(e.kind, NetErrorKind::PeerClosed), "{e}");
    assert_eq!(e.node.as_deref(), Some("node-a"));
    assert!(matches!(b.poll_io().unwrap_err().kind, NetErrorKind::Closed));
}

#[test]
fn hundred_thousand_frames_arrive_in_order() {
    let deadline = within(60);
    let mut listener = Listener::bind(any_port(), config("sink")).unwrap();
    let (mut a, mut b) = connect_pair(&mut listener, &config("source"), deadline);
    const FRAMES: u64 = 100_000;
    let mut records = [0u8; 40];
    let (mut sent, mut received) = (0u64, 0u64);
    let mut max_capacity = (0, 0);
    while received < FRAMES {
        check(deadline, "100k frames");
        while sent < FRAMES {
            records[..8].copy_from_slice(&sent.to_le_bytes());
            records[8..].fill(sent as u8);
            if !a.try_send_data(4, sent, &header(4, sent), &records).unwrap() {
                break;
            }
            sent += 1;
        }
        a.poll_io().unwrap();
        b.poll_io().unwrap();
        b.poll_recv(usize::MAX, |f| {
            assert_eq!(f.header.seq, received, "out of order");
            assert_eq!(f.data.map(|d| d.watermark), Some(received * 10));
            assert_eq!(f.payload[..8], received.to_le_bytes());
            assert!(f.payload[8..].iter().all(|&x| x == received as u8));
            received += 1;
            Delivery::Consumed
        })
        .unwrap();
        a.poll_recv(16, |_| Delivery::Consumed).unwrap();
        max_capacity.0 = max_capacity.0.max(a.buffer_capacity());
        max_capacity.1 = max_capacity.1.max(b.buffer_capacity());
    }
    assert_eq!(sent, FRAMES);
    // Buffers stayed at their working size (one read chunk and a window of
    // small frames), however many frames went through.
    assert!(max_capacity.0 < 256 << 10 && max_capacity.1 < 256 << 10, "{max_capacity:?}");
}

#[test]
fn credit_backpressure_stops_the_sender_and_release_resumes_it() {
    let deadline = within(20);
    let mut b_config = config("slow-sink");
    b_config.credit_window = 8;
    b_config.grant_threshold = 2;
    let mut listener = Listener::bind(any_port(), b_config).unwrap();
    let (mut a, mut b) = connect_pair(&mut listener, &config("fast-source"), deadline);
    assert_eq!(a.peer().credit_window, 8);
    const CH: u32 = 5;
    const TOTAL: u64 = 40;
    let records = vec![0xabu8; 4096];
    let mut sent = 0u64;
    let mut held: Vec<u64> = Vec::new();
    let mut released_all = false;
    let step = |a: &mut Connection, b: &mut Connection, sent: &mut u64, held: &mut Vec<u64>| {
        while *sent < TOTAL && a.try_send_data(CH, *sent, &header(CH, *sent), &records).unwrap() {
            *sent += 1;
        }
        a.poll_io().unwrap();
        b.poll_io().unwrap();
        b.poll_recv(64, |f| {
            held.push(f.header.seq);
            Delivery::Held // kept: the application has not consumed it yet
        })
        .unwrap();
        a.poll_recv(64, |_| Delivery::Consumed).unwrap();
    };

    // The receiver holds everything: the sender stops after one window.
    let stop_at = Instant::now() + Duration::from_millis(200);
    while Instant::now() < stop_at {
        step(&mut a, &mut b, &mut sent, &mut held);
    }
    assert_eq!(sent, 8);
    assert_eq!(held, (0..8).collect::<Vec<_>>());
    assert_eq!(b.held(CH), 8);
    assert_eq!(a.send_credits(CH), 0);
    assert_eq!(a.unsent_bytes(), 0);
    assert!(!a.try_send_data(CH, sent, &header(CH, sent), &records).unwrap());
    // Memory is bounded on both sides: a window of 4 KiB frames plus one
    // read chunk, nowhere near the 40 frames the sender wanted to send.
    assert!(a.buffer_capacity() <= 128 << 10, "sender holds {} bytes", a.buffer_capacity());
    assert!(b.buffer_capacity() <= 256 << 10, "receiver holds {} bytes", b.buffer_capacity());

    // Releasing 3 grants 3 credits (at least the threshold of 2): 3 more go.
    b.release(CH, 3).unwrap();
    while held.len() < 11 {
        check(deadline, "3 more frames after release");
        step(&mut a, &mut b, &mut sent, &mut held);
    }
    let pause = Instant::now() + Duration::from_millis(50);
    while Instant::now() < pause {
        step(&mut a, &mut b, &mut sent, &mut held);
    }
    assert_eq!(sent, 11);
    assert_eq!(b.held(CH), 8);

    // Release as frames come in: everything arrives, in order.
    while held.len() < TOTAL as usize || !released_all {
        check(deadline, "all frames after releasing");
        let h = b.held(CH);
        if h > 0 {
            b.release(CH, h).unwrap();
        }
        released_all = b.held(CH) == 0 && held.len() == TOTAL as usize;
        step(&mut a, &mut b, &mut sent, &mut held);
    }
    assert_eq!(held, (0..TOTAL).collect::<Vec<_>>());
    // Misuse is reported and leaves the connection usable.
    let e = b.release(CH, 1).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::OverRelease { channel: CH, .. }) && !e.is_fatal(), "{e}");
    assert!(!b.is_closed());
}

#[test]
fn full_send_buffer_refuses_frames_when_the_receiver_does_not_read() {
    let deadline = within(20);
    let mut b_config = config("stalled");
    b_config.credit_window = 1 << 20; // credits never stop the sender here
    let mut listener = Listener::bind(any_port(), b_config).unwrap();
    let mut a_config = config("eager");
    a_config.send_buffer_bytes = 64 << 10;
    let (mut a, mut b) = connect_pair(&mut listener, &a_config, deadline);
    let records = vec![7u8; 16 << 10];
    let frame_bytes = records.len() + 48;
    let mut sent = 0u64;
    // b never polls: the kernel's buffers fill, then a's send buffer.
    let mut refusals = 0;
    while refusals < 200 {
        check(deadline, "the send buffer to fill");
        if a.try_send_data(1, sent, &header(1, sent), &records).unwrap() {
            sent += 1;
            refusals = 0;
        } else {
            refusals += 1;
            a.poll_io().unwrap();
        }
        assert!(a.unsent_bytes() <= (64 << 10) + frame_bytes);
    }
    assert!(a.unsent_bytes() > (64 << 10) - frame_bytes, "send buffer not full: {}", a.unsent_bytes());
    assert!(a.buffer_capacity() <= 256 << 10, "sender holds {} bytes", a.buffer_capacity());
    // b reads: everything arrives and the sender goes on.
    let mut received = 0u64;
    let total = sent + 10;
    while received < total {
        check(deadline, "the stalled frames");
        if sent < total && a.try_send_data(1, sent, &header(1, sent), &records).unwrap() {
            sent += 1;
        }
        a.poll_io().unwrap();
        b.poll_io().unwrap();
        b.poll_recv(usize::MAX, |f| {
            assert_eq!(f.header.seq, received);
            received += 1;
            Delivery::Consumed
        })
        .unwrap();
        assert!(b.buffer_capacity() <= 1 << 20, "receiver holds {} bytes", b.buffer_capacity());
    }
}

#[test]
fn corrupt_frame_closes_that_connection_only() {
    let deadline = within(20);
    let mut listener = Listener::bind(any_port(), config("node-b")).unwrap();
    let mut raw = TcpStream::connect(listener.local_addr()).unwrap();
    let mut bytes = hello_frame("raw-corrupt", CLUSTER, 16);
    bytes.extend(data_frame(3, 0, b"good batch"));
    let mut bad = data_frame(3, 1, b"bad batch");
    let last = bad.len() - 1;
    bad[last] ^= 0x40; // one flipped bit in the records: the crc disagrees
    bytes.extend(bad);
    raw.write_all(&bytes).unwrap();

    let mut conn = accept_one(&mut listener, deadline).unwrap();
    assert_eq!(conn.peer().node, "raw-corrupt");
    let mut frames = Vec::new();
    let e = run_until_error(&mut conn, &mut frames, deadline);
    // The frame before the corrupt one was handed out.
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].payload, b"good batch");
    assert!(matches!(e.kind, NetErrorKind::Frame(FrameError::BadCrc { .. })), "{e}");
    assert_eq!(e.node.as_deref(), Some("raw-corrupt"));
    assert_eq!(e.addr, raw.local_addr().unwrap());
    let msg = e.to_string();
    assert!(msg.contains("raw-corrupt") && msg.contains(&raw.local_addr().unwrap().to_string()), "{msg}");
    assert!(msg.contains("corrupt frame: crc mismatch"), "{msg}");
    assert!(conn.is_closed());
    assert_listener_serves(&mut listener, deadline);
}

#[test]
fn truncated_frame_at_close_is_reported() {
    let deadline = within(20);
    let mut listener = Listener::bind(any_port(), config("node-b")).unwrap();
    let mut raw = TcpStream::connect(listener.local_addr()).unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let mut bytes = hello_frame("raw-truncated", CLUSTER, 16);
    bytes.extend(data_frame(3, 0, b"whole batch"));
    let cut = data_frame(3, 1, b"this batch is cut short");
    bytes.extend(&cut[..cut.len() - 5]);
    raw.write_all(&bytes).unwrap();
    raw.shutdown(Shutdown::Write).unwrap();

    let mut conn = accept_one(&mut listener, deadline).unwrap();
    let mut frames = Vec::new();
    let e = run_until_error(&mut conn, &mut frames, deadline);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].payload, b"whole batch");
    let need = cut.len() as u64;
    assert!(
        matches!(e.kind, NetErrorKind::Frame(FrameError::Truncated { have, need: Some(n) }) if have == need - 5 && n == need),
        "{e}"
    );
    assert_eq!((e.node.as_deref(), e.addr), (Some("raw-truncated"), raw_addr));
    assert!(e.to_string().contains("truncated frame"), "{e}");
    drop(raw);
    assert_listener_serves(&mut listener, deadline);
}

#[test]
fn bad_handshakes_are_dropped_and_the_listener_serves_others() {
    let deadline = within(20);
    let mut listener = Listener::bind(any_port(), config("node-b")).unwrap();
    let addr = listener.local_addr();

    // A hello with a bad crc.
    let mut raw = TcpStream::connect(addr).unwrap();
    let mut hello = hello_frame("x", CLUSTER, 16);
    hello[10] ^= 1;
    raw.write_all(&hello).unwrap();
    let e = accept_one(&mut listener, deadline).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::Frame(FrameError::BadCrc { .. })), "{e}");
    assert_eq!((e.node.as_deref(), e.addr), (None, raw.local_addr().unwrap()));

    // Half a hello, then close.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(&hello_frame("y", CLUSTER, 16)[..12]).unwrap();
    raw.shutdown(Shutdown::Write).unwrap();
    let e = accept_one(&mut listener, deadline).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::Frame(FrameError::Truncated { have: 12, .. })), "{e}");
    assert_eq!(e.addr, raw.local_addr().unwrap());

    // A huge length prefix: refused before anything is buffered for it.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    let e = accept_one(&mut listener, deadline).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::OversizedHello { .. }), "{e}");

    // A frame other than hello first.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(&data_frame(1, 0, b"too early")).unwrap();
    let e = accept_one(&mut listener, deadline).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::NotHello(Kind::Data)), "{e}");

    // A malformed hello payload.
    let mut raw = TcpStream::connect(addr).unwrap();
    let mut frame = Vec::new();
    encode_control(Kind::Hello, 0, 0, &[1, 2, 3], &mut frame).unwrap();
    raw.write_all(&frame).unwrap();
    let e = accept_one(&mut listener, deadline).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::BadHello(_)), "{e}");

    // A peer of another cluster: refused on both sides.
    let mut other = config("other-job");
    other.cluster = CLUSTER + 1;
    let mut connecting = Connection::connect(addr, &other, deadline).unwrap();
    let (mut mine, mut theirs) = (None, None);
    while mine.is_none() || theirs.is_none() {
        check(deadline, "the wrong-cluster refusal");
        if mine.is_none() {
            mine = connecting.poll().err();
        }
        if theirs.is_none() {
            theirs = listener.poll_accept().err();
        }
    }
    let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
    assert!(matches!(mine.kind, NetErrorKind::RejectedByPeer(GoodbyeReason::WrongCluster)), "{mine}");
    assert!(matches!(theirs.kind, NetErrorKind::WrongCluster { .. }), "{theirs}");
    assert_eq!(theirs.node.as_deref(), Some("other-job"));

    // A credit overrun after the handshake: our window is 16.
    let mut raw = TcpStream::connect(addr).unwrap();
    let mut bytes = hello_frame("greedy", CLUSTER, 16);
    for s in 0..17 {
        bytes.extend(data_frame(2, s, b"x"));
    }
    raw.write_all(&bytes).unwrap();
    let mut conn = accept_one(&mut listener, deadline).unwrap();
    let mut held = 0;
    let e = loop {
        check(deadline, "the overrun");
        let r = conn.poll_io().and_then(|_| {
            conn.poll_recv(64, |_| {
                held += 1;
                Delivery::Held
            })
        });
        if let Err(e) = r {
            break e;
        }
    };
    assert_eq!(held, 16);
    assert!(matches!(e.kind, NetErrorKind::Credit { channel: 2, .. }), "{e}");
    assert_eq!(e.node.as_deref(), Some("greedy"));

    assert_eq!(listener.pending_handshakes(), 0);
    assert_listener_serves(&mut listener, deadline);
}

#[test]
fn silent_peer_times_out_while_others_are_served() {
    let deadline = within(20);
    let mut cfg = config("node-b");
    cfg.handshake_timeout = Duration::from_millis(200);
    let mut listener = Listener::bind(any_port(), cfg).unwrap();
    let started = Instant::now();
    let silent = TcpStream::connect(listener.local_addr()).unwrap();
    // While the silent one waits, a good peer completes its handshake.
    assert_listener_serves(&mut listener, deadline);
    assert_eq!(listener.pending_handshakes(), 1);
    let e = accept_one(&mut listener, deadline).unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(e.kind, NetErrorKind::HandshakeTimeout { stage: HandshakeStage::AwaitingHello, waited }
            if waited >= Duration::from_millis(200)),
        "{e}"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!((e.node.as_deref(), e.addr), (None, silent.local_addr().unwrap()));
    assert!(e.to_string().contains("handshake timed out"), "{e}");
    assert_eq!(listener.pending_handshakes(), 0);
}

#[test]
fn connect_times_out_when_the_peer_never_says_hello() {
    let mute = StdListener::bind(any_port()).unwrap(); // the kernel completes TCP; nobody answers
    let addr = mute.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut connecting = Connection::connect(addr, &config("node-a"), deadline).unwrap();
    let e = loop {
        check(deadline + Duration::from_secs(5), "the connect timeout");
        match connecting.poll() {
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Ok(Some(_)) => panic!("handshake with a mute peer succeeded"),
            Err(e) => break e,
        }
    };
    assert!(Instant::now() >= deadline);
    assert!(
        matches!(e.kind, NetErrorKind::HandshakeTimeout { stage: HandshakeStage::AwaitingHello, .. }),
        "{e}"
    );
    assert_eq!(e.addr, addr);
    assert!(matches!(connecting.poll().unwrap_err().kind, NetErrorKind::Closed));
}

#[test]
fn connecting_to_a_closed_port_names_the_address() {
    let addr = {
        let l = StdListener::bind(any_port()).unwrap();
        l.local_addr().unwrap()
    };
    let deadline = within(10);
    let e = match Connection::connect(addr, &config("node-a"), deadline) {
        Err(e) => e,
        Ok(mut connecting) => loop {
            check(deadline, "the refusal");
            match connecting.poll() {
                Ok(None) => std::thread::sleep(Duration::from_micros(200)),
                Ok(Some(_)) => panic!("connected to a closed port"),
                Err(e) => break e,
            }
        },
    };
    assert!(
        matches!(&e.kind, NetErrorKind::Connect(io) if io.kind() == std::io::ErrorKind::ConnectionRefused),
        "{e}"
    );
    assert_eq!(e.addr, addr);
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[test]
fn unknown_and_duplicate_node_names_are_refused() {
    let deadline = within(20);
    let mut listener = Listener::bind(any_port(), config("coordinator")).unwrap();
    let addr = listener.local_addr();
    let known = ["node-1", "node-2"];
    let mut connected: Vec<String> = Vec::new();
    let attempt = |listener: &mut Listener, name: &str, connected: &mut Vec<String>| {
        let mut connecting = Connection::connect(addr, &config(name), deadline).unwrap();
        let (mut mine, mut theirs) = (None, None);
        while mine.is_none() || theirs.is_none() {
            check(deadline, "the handshake outcome");
            if mine.is_none() {
                mine = connecting.poll().transpose();
            }
            if theirs.is_none() {
                theirs = listener
                    .poll_accept_with(|peer| {
                        if !known.contains(&peer.node.as_str()) {
                            Err(Rejection::UnknownNode)
                        } else if connected.contains(&peer.node) {
                            Err(Rejection::DuplicateNode)
                        } else {
                            Ok(())
                        }
                    })
                    .transpose();
            }
        }
        let theirs = theirs.unwrap();
        if let Ok(c) = &theirs {
            connected.push(c.peer().node.clone());
        }
        (mine.unwrap(), theirs)
    };
    let (mine, theirs) = attempt(&mut listener, "node-1", &mut connected);
    assert!(mine.is_ok() && theirs.is_ok());
    let (mine, theirs) = attempt(&mut listener, "stranger", &mut connected);
    let (mine, theirs) = (mine.unwrap_err(), theirs.unwrap_err());
    assert!(matches!(
        mine.kind,
        NetErrorKind::RejectedByPeer(GoodbyeReason::Rejected(Rejection::UnknownNode))
    ));
    assert!(matches!(theirs.kind, NetErrorKind::Rejected(Rejection::UnknownNode)));
    assert_eq!(theirs.node.as_deref(), Some("stranger"));
    assert!(theirs.to_string().contains("unknown node name"), "{theirs}");
    let (mine, theirs) = attempt(&mut listener, "node-1", &mut connected);
    let (mine, theirs) = (mine.unwrap_err(), theirs.unwrap_err());
    assert!(matches!(
        mine.kind,
        NetErrorKind::RejectedByPeer(GoodbyeReason::Rejected(Rejection::DuplicateNode))
    ));
    assert!(matches!(theirs.kind, NetErrorKind::Rejected(Rejection::DuplicateNode)), "{theirs}");
    let (mine, theirs) = attempt(&mut listener, "node-2", &mut connected);
    assert!(mine.is_ok() && theirs.is_ok());
}

#[test]
fn heartbeats_keep_last_heard_fresh_and_silence_shows() {
    let deadline = within(20);
    let mut cfg = config("node-b");
    cfg.heartbeat_interval = Duration::from_millis(10);
    let mut listener = Listener::bind(any_port(), cfg.clone()).unwrap();
    cfg.node = "node-a".into();
    let (mut a, mut b) = connect_pair(&mut listener, &cfg, deadline);
    let mut delivered = 0;
    let mut beats = 0;
    let until = Instant::now() + Duration::from_millis(150);
    while Instant::now() < until {
        beats += a.poll_heartbeat(Instant::now()).unwrap() as u32;
        a.poll_io().unwrap();
        b.poll_io().unwrap();
        delivered += b.poll_recv(16, |_| Delivery::Consumed).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(beats >= 5, "{beats} heartbeats");
    assert_eq!(delivered, 0, "heartbeats are not handed out");
    assert!(b.last_heard().elapsed() < Duration::from_millis(100));
    // a falls silent (still connected): b sees the silence grow.
    let until = Instant::now() + Duration::from_millis(120);
    while Instant::now() < until {
        b.poll_io().unwrap();
        b.poll_recv(16, |_| Delivery::Consumed).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(b.last_heard().elapsed() >= Duration::from_millis(100));
    assert!(!b.is_closed());
}

#[test]
fn misuse_is_refused_without_closing() {
    let deadline = within(20);
    let mut listener = Listener::bind(any_port(), config("node-b")).unwrap();
    let (mut a, _b) = connect_pair(&mut listener, &config("node-a"), deadline);
    for kind in [Kind::Data, Kind::Hello, Kind::Credit] {
        let e = a.try_send_control(kind, 0, 0, b"").unwrap_err();
        assert!(matches!(e.kind, NetErrorKind::InvalidSend(k) if k == kind) && !e.is_fatal(), "{e}");
    }
    let huge = vec![0u8; spate_net::frame::MAX_FRAME_BYTES as usize];
    let e = a.try_send_data(1, 0, &header(1, 0), &huge).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::FrameTooLarge { .. }), "{e}");
    assert_eq!(a.send_credits(1), a.peer().credit_window);
    let e = a.release(1, 1).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::OverRelease { .. }), "{e}");
    assert!(!a.is_closed());
    assert!(a.try_send_data(1, 0, &header(1, 0), b"ok").unwrap());
    let mut bad = config("");
    bad.credit_window = 0;
    let e = Connection::connect(listener.local_addr(), &bad, deadline).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::Config { field: "node", .. }), "{e}");
}
