//! A bounded single-producer, single-consumer ring between two workers.
//!
//! Workers poll their rings instead of waiting on wakers: a worker's task
//! tries to pop (or push), and if the ring is empty (or full) it sleeps a few
//! microseconds on its executor's timer and tries again. Polling costs one
//! cache line read per try; it cannot lose a wake-up, which glommio 0.9's
//! cross-executor channels were seen to do under load (a sender waiting for
//! room and its receiver waiting for data on the same channel, both forever;
//! see docs/ARCHITECTURE.md, decision 15).
//!
//! The ring is Lamport's: the producer owns `tail`, the consumer owns `head`,
//! each publishes its index with release ordering and reads the other's with
//! acquire ordering; slots between `head` and `tail` are initialised.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Pads a value to its own cache line, so producer and consumer indices do
/// not share one.
#[repr(align(128))]
struct Padded<T>(T);

struct Ring<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// Next slot to pop (consumer-owned).
    head: Padded<AtomicUsize>,
    /// Next slot to push (producer-owned).
    tail: Padded<AtomicUsize>,
    producer_gone: AtomicBool,
    consumer_gone: AtomicBool,
}

// SAFETY: the ring hands each `T` from exactly one thread (the producer) to
// exactly one other (the consumer); slot access is ordered by the
// acquire/release protocol on `head` and `tail` (see the module doc), so no
// slot is touched by both threads at once. `T: Send` is required to move it.
unsafe impl<T: Send> Sync for Ring<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Ring<T> {}

/// The sending end.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
}

/// The receiving end.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
}

/// A ring holding at most `capacity` items (at least 1).
pub fn ring<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let cap = capacity.max(1);
    let slots = (0..cap).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    let ring = Arc::new(Ring {
        slots,
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
        producer_gone: AtomicBool::new(false),
        consumer_gone: AtomicBool::new(false),
    });
    (Producer { ring: ring.clone() }, Consumer { ring })
}

impl<T> Producer<T> {
    /// Pushes `v`, or gives it back if the ring is full.
    pub fn try_push(&self, v: T) -> Result<(), T> {
        let r = &*self.ring;
        let tail = r.tail.0.load(Ordering::Relaxed);
        let head = r.head.0.load(Ordering::Acquire);
        if tail.wrapping_sub(head) >= r.slots.len() {
            return Err(v);
        }
        let slot = &r.slots[tail % r.slots.len()];
        // SAFETY: `tail - head < len`, so this slot is outside the consumer's
        // initialised window and only the (single) producer writes it.
        unsafe { (*slot.get()).write(v) };
        r.tail.0.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Whether the consumer has gone (its end was dropped).
    pub fn is_closed(&self) -> bool {
        self.ring.consumer_gone.load(Ordering::Acquire)
    }
}

impl<T> Consumer<T> {
    /// Pops the oldest item, if any.
    pub fn try_pop(&self) -> Option<T> {
        let r = &*self.ring;
        let head = r.head.0.load(Ordering::Relaxed);
        let tail = r.tail.0.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let slot = &r.slots[head % r.slots.len()];
        // SAFETY: `head != tail`, so the producer initialised this slot and
        // published it with the release store of `tail` we acquired; only the
        // (single) consumer reads it, once, before advancing `head`.
        let v = unsafe { (*slot.get()).assume_init_read() };
        r.head.0.store(head.wrapping_add(1), Ordering::Release);
        Some(v)
    }

    /// Items waiting now (a snapshot: the producer may be adding more).
    pub fn len(&self) -> usize {
        let r = &*self.ring;
        r.tail.0.load(Ordering::Acquire).wrapping_sub(r.head.0.load(Ordering::Relaxed))
    }

    /// Whether no item waits now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.ring.slots.len()
    }

    /// Whether the producer has gone and every item was taken.
    pub fn is_finished(&self) -> bool {
        let r = &*self.ring;
        r.producer_gone.load(Ordering::Acquire)
            && r.head.0.load(Ordering::Relaxed) == r.tail.0.load(Ordering::Acquire)
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.ring.producer_gone.store(true, Ordering::Release);
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.ring.consumer_gone.store(true, Ordering::Release);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Both ends are gone: drop what is still in flight.
        let (mut head, tail) = (*self.head.0.get_mut(), *self.tail.0.get_mut());
        while head != tail {
            let slot = &mut self.slots[head % self.slots.len()];
            // SAFETY: slots in head..tail are initialised (see try_pop) and no
            // other reference to the ring exists any more.
            unsafe { slot.get_mut().assume_init_drop() };
            head = head.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_bounded() {
        let (p, c) = ring::<u32>(3);
        assert!(p.try_push(1).is_ok() && p.try_push(2).is_ok() && p.try_push(3).is_ok());
        assert_eq!(p.try_push(4), Err(4));
        assert_eq!(c.try_pop(), Some(1));
        assert!(p.try_push(4).is_ok());
        assert_eq!((c.try_pop(), c.try_pop(), c.try_pop(), c.try_pop()), (Some(2), Some(3), Some(4), None));
        assert!(!c.is_finished());
        drop(p);
        assert!(c.is_finished());
    }

    #[test]
    fn crosses_threads_in_order_and_drops_leftovers() {
        let (p, c) = ring::<Vec<u64>>(8);
        let n = 200_000u64;
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < n {
                match p.try_push(vec![i]) {
                    Ok(()) => i += 1,
                    Err(_) => std::hint::spin_loop(),
                }
            }
            // Leave some in flight at the end.
            let _ = p.try_push(vec![u64::MAX]);
        });
        let mut next = 0;
        while next < n {
            if let Some(v) = c.try_pop() {
                assert_eq!(v, vec![next]);
                next += 1;
            }
        }
        t.join().unwrap_or_else(|_| panic!("producer panicked"));
        // The leftover item is dropped with the ring (no leak under Miri/ASan).
        drop(c);
    }
}
