//! Panics are failures, never hangs (docs/ARCHITECTURE.md, decision 44).
//!
//! Every thread Spate starts — a runtime worker (`spate-w<W>`), a backup
//! writer (`spate-backup-w<W>`), the replica service (`spate-replica-<port>`)
//! — and a node's control loop catch a panic once, at the thread's
//! boundary, around its whole body (never per record: `catch_unwind` costs
//! nothing until something panics), and turn it into a [`ThreadPanic`]: the
//! failure of the job, naming the thread, what it was running (the
//! operators of a worker's work item, where known) and the panic's
//! message. The panic hook still prints where it happened.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A panic caught at a thread's boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadPanic {
    /// The thread's name.
    pub thread: String,
    /// What the thread was running, if known ("building the dataflow",
    /// "running source `numbers` or an operator its records reach on this worker").
    pub during: Option<String>,
    /// The panic's message.
    pub message: String,
}

impl ThreadPanic {
    /// The panic of the current thread whose payload is `payload`.
    pub fn here(payload: &(dyn Any + Send), during: Option<String>) -> Self {
        Self { thread: current_thread(), during, message: message(payload) }
    }
}

impl fmt::Display for ThreadPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "thread `{}` panicked", self.thread)?;
        if let Some(d) = &self.during {
            write!(f, " while {d}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Error for ThreadPanic {}

/// The name of the current thread (`unnamed` for one without).
pub fn current_thread() -> String {
    std::thread::current().name().unwrap_or("unnamed").to_string()
}

/// A panic's message: its payload when that is a string (as `panic!`
/// makes it), else a note that it is not.
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic whose payload is not a string)".to_string()
    }
}

/// Runs `f`, catching a panic as a [`ThreadPanic`] of the current thread
/// (with `during`). For a thread's whole body, or a cold step of it: what
/// `f` touches is dropped or failed by the caller after a panic.
pub fn catch<R>(during: Option<&str>, f: impl FnOnce() -> R) -> Result<R, ThreadPanic> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| ThreadPanic::here(&*p, during.map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_names_thread_step_and_message() {
        let t = std::thread::Builder::new().name("spate-test-panics".into()).spawn(|| {
            let e = match catch(Some("testing"), || -> u32 { panic!("boom {}", 7) }) {
                Ok(_) => panic!("not caught"),
                Err(e) => e,
            };
            let s = match catch(None, || -> u32 { std::panic::panic_any("static") }) {
                Ok(_) => panic!("not caught"),
                Err(e) => e,
            };
            let other = match catch(None, || -> u32 { std::panic::panic_any(5u8) }) {
                Ok(_) => panic!("not caught"),
                Err(e) => e,
            };
            (e, s, other, catch(None, || 3))
        });
        let (e, s, other, fine) = match t.map(|h| h.join()) {
            Ok(Ok(r)) => r,
            _ => panic!("the test thread failed"),
        };
        assert_eq!(e.to_string(), "thread `spate-test-panics` panicked while testing: boom 7");
        assert_eq!(s.message, "static");
        assert!(other.message.contains("not a string"), "{other}");
        assert_eq!(fine, Ok(3));
    }
}
