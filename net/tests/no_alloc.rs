//! Once warm, a connection moves frames without allocating: sending,
//! writing, reading, decoding, handing out, crediting back. A counting
//! global allocator (this test binary only) checks it on the test's thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use spate_net::conn::{Connection, Delivery, Listener, NetConfig};
use spate_net::frame::DataHeader;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds GlobalAlloc's contract; the counter is a const-initialised
// thread-local Cell without a destructor, so touching it never allocates or
// re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn steady_state_moves_frames_without_allocating() {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listener = Listener::bind("127.0.0.1:0".parse().unwrap(), NetConfig::new("sink", 1)).unwrap();
    let mut connecting =
        Connection::connect(listener.local_addr(), &NetConfig::new("source", 1), deadline).unwrap();
    let (mut a, mut b) = (None, None);
    while a.is_none() || b.is_none() {
        assert!(Instant::now() < deadline, "handshake timed out");
        if a.is_none() {
            a = connecting.poll().unwrap();
        }
        if b.is_none() {
            b = listener.poll_accept().unwrap();
        }
    }
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    let channels = [1u32, 2, 3];
    let mut records = [0u8; 200];
    let (mut sent, mut received, mut checksum) = (0u64, 0u64, 0u64);
    let mut run = |a: &mut Connection, b: &mut Connection, frames: u64| {
        let target = sent + frames;
        while received < target {
            assert!(Instant::now() < deadline, "frames timed out");
            while sent < target {
                let c = channels[(sent % 3) as usize];
                records[..8].copy_from_slice(&sent.to_le_bytes());
                let h = DataHeader { edge: c, producer: 0, watermark: sent, count: 1, flags: 0 };
                if !a.try_send_data(c, sent, &h, &records).unwrap() {
                    break;
                }
                sent += 1;
            }
            a.poll_io().unwrap();
            b.poll_io().unwrap();
            b.poll_recv(usize::MAX, |f| {
                checksum = checksum.wrapping_add(f.payload[0] as u64 + f.header.seq);
                received += 1;
                Delivery::Consumed
            })
            .unwrap();
            a.poll_recv(usize::MAX, |_| Delivery::Consumed).unwrap();
            a.poll_heartbeat(Instant::now()).unwrap();
        }
    };
    let start = allocations();
    run(&mut a, &mut b, 20_000); // warm-up: buffers and channel maps grow
    let before = allocations();
    assert!(before > start, "the counter sees the warm-up's allocations");
    run(&mut a, &mut b, 50_000);
    let during = allocations() - before;
    assert_eq!(during, 0, "{during} allocations while moving 50k frames");
    assert!(checksum > 0);
}
