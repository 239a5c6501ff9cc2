//! Throughput of one spate-net connection over loopback: a sender thread
//! and a receiver thread, each busy-polling its end as a worker's loop
//! would (no blocking, no await). Data frames only, one channel, the
//! receiver consuming every frame at once (so credit returns as fast as
//! it can). Prints frames/s and MB/s (payload bytes; 1 MB = 10^6 bytes)
//! as the median of the runs, with min and max.
//!
//! A pass of either loop that moved nothing calls `thread::yield_now`, so
//! the figures measure the transport rather than the scheduler's luck when
//! both threads share a core (as on a small, shared machine).
//!
//! ```text
//! cargo run --release -p spate-net --example loopback_bench -- [--runs 3] [--quick]
//! ```
//!
//! The clock starts on the sender after the handshake and stops on the
//! receiver when the last frame has been handed out.

use std::time::{Duration, Instant};

use spate_net::conn::{Connection, Delivery, Listener, NetConfig};
use spate_net::frame::{DataHeader, DATA_HEADER_BYTES, FRAME_OVERHEAD};

/// Frames a receiver hands out per `poll_recv` (like a worker's per-visit
/// budget).
const RECV_BUDGET: usize = 256;

struct Case {
    payload_bytes: usize,
    frames: u64,
    window: u32,
}

struct Outcome {
    elapsed: Duration,
    checksum: u64,
}

fn run_once(case: &Case) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sink_config = NetConfig::new("sink", 0xbe7c);
    sink_config.credit_window = case.window;
    let mut listener = Listener::bind("127.0.0.1:0".parse().expect("literal address"), sink_config)
        .expect("bind a loopback listener");
    let addr = listener.local_addr();
    let frames = case.frames;
    let receiver = std::thread::spawn(move || {
        let mut conn = loop {
            assert!(Instant::now() < deadline, "no connection");
            if let Some(c) = listener.poll_accept().expect("accept") {
                break c;
            }
            std::hint::spin_loop();
        };
        let (mut received, mut checksum) = (0u64, 0u64);
        while received < frames {
            let moved = conn.poll_io().expect("receiver I/O");
            let got = conn
                .poll_recv(RECV_BUDGET, |f| {
                    assert_eq!(f.header.seq, received, "frames out of order");
                    checksum = checksum.wrapping_add(u64::from(f.payload[0]) ^ f.header.seq);
                    received += 1;
                    Delivery::Consumed
                })
                .expect("receive");
            if !moved && got == 0 {
                std::thread::yield_now();
            }
        }
        let end = Instant::now();
        // Let the last credit grants go out before closing.
        conn.poll_io().expect("receiver I/O");
        (end, checksum)
    });

    let mut conn = Connection::connect(addr, &NetConfig::new("source", 0xbe7c), deadline)
        .expect("connect")
        .wait()
        .expect("handshake");
    let mut records = vec![0u8; case.payload_bytes];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < frames {
        let queued_from = sent;
        loop {
            records[0] = sent as u8;
            let h = DataHeader { edge: 1, producer: 0, watermark: sent, count: 1, flags: 0 };
            if sent == frames || !conn.try_send_data(7, sent, &h, &records).expect("send") {
                break;
            }
            sent += 1;
        }
        let moved = conn.poll_io().expect("sender I/O");
        conn.poll_recv(RECV_BUDGET, |_| Delivery::Consumed).expect("sender receive");
        if !moved && sent == queued_from {
            std::thread::yield_now();
        }
    }
    while conn.unsent_bytes() > 0 {
        conn.poll_io().expect("sender I/O");
    }
    let (end, checksum) = receiver.join().expect("receiver thread");
    Outcome { elapsed: end - start, checksum }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 3usize;
    let mut quick = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => {
                i += 1;
                runs = args.get(i).and_then(|s| s.parse().ok()).filter(|&n| n > 0).unwrap_or_else(|| {
                    eprintln!("--runs needs a positive number");
                    std::process::exit(2)
                });
            }
            "--quick" => quick = true,
            other => {
                eprintln!("unknown argument {other:?}; usage: loopback_bench [--runs N] [--quick]");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let scale = if quick { 100 } else { 1 };
    let cases = [
        Case { payload_bytes: 64 << 10, frames: 20_000 / scale, window: 16 },
        Case { payload_bytes: 64, frames: 2_000_000 / scale, window: 16 },
        Case { payload_bytes: 64, frames: 2_000_000 / scale, window: 256 },
    ];
    println!(
        "spate-net loopback: 1 connection, 1 channel, sender and receiver threads busy-polling; {runs} runs"
    );
    println!(
        "{:>9} {:>7} {:>10} {:>26} {:>24} {:>10}",
        "payload", "window", "frames", "frames/s median (min-max)", "payload MB/s med (min-max)", "wire MB/s"
    );
    for case in &cases {
        let mut fps = Vec::new();
        let mut mbs = Vec::new();
        let mut checksum = None;
        for _ in 0..runs {
            let o = run_once(case);
            assert!(checksum.is_none() || checksum == Some(o.checksum), "runs disagree");
            checksum = Some(o.checksum);
            let secs = o.elapsed.as_secs_f64();
            fps.push(case.frames as f64 / secs);
            mbs.push(case.frames as f64 * case.payload_bytes as f64 / secs / 1e6);
        }
        let wire_per_payload =
            (case.payload_bytes + FRAME_OVERHEAD + DATA_HEADER_BYTES) as f64 / case.payload_bytes as f64;
        let (fmin, fmax) =
            (fps.iter().copied().fold(f64::MAX, f64::min), fps.iter().copied().fold(0.0, f64::max));
        let (mmin, mmax) =
            (mbs.iter().copied().fold(f64::MAX, f64::min), mbs.iter().copied().fold(0.0, f64::max));
        let (fmed, mmed) = (median(&mut fps), median(&mut mbs));
        let payload = if case.payload_bytes >= 1024 {
            format!("{} KiB", case.payload_bytes >> 10)
        } else {
            format!("{} B", case.payload_bytes)
        };
        println!(
            "{payload:>9} {:>7} {:>10} {:>10.0} ({:.0}-{:.0}) {:>9.0} ({:.0}-{:.0}) {:>10.0}",
            case.window,
            case.frames,
            fmed,
            fmin,
            fmax,
            mmed,
            mmin,
            mmax,
            mmed * wire_per_payload,
        );
    }
}
