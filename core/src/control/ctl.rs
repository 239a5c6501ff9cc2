//! The client side of `spate ctl` ([`request`]): one request to a running
//! cluster's coordinator, on a control connection of its own (`adm:<n>`),
//! answered once it is done or refused (see [`Msg::Control`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_net::Connection;

use crate::control::error::ControlError;
use crate::control::msg::Msg;
use crate::control::peer::Peer;

/// Sends `request` to the coordinator listening at `addr` (job `cluster`)
/// and waits for its answer, at most `timeout`: `(done, text)`.
pub fn request(
    addr: SocketAddr,
    cluster: u64,
    request: &str,
    timeout: Duration,
) -> Result<(bool, String), ControlError> {
    let name = format!("adm:{}", std::process::id());
    let deadline = Instant::now() + timeout;
    let conn = Connection::connect(addr, &crate::link::net_config(name.clone(), cluster), deadline)
        .and_then(|c| c.wait())
        .map_err(|source| ControlError::Connection { node: format!("coordinator at {addr}"), source })?;
    let mut peer = Peer::new(format!("coordinator at {addr}"), conn);
    peer.send(&Msg::Control { request: request.to_string() }, Instant::now())?;
    loop {
        peer.poll(Instant::now())?;
        if let Some(i) = peer.inbox.iter().position(|m| matches!(m, Msg::Reply { .. })) {
            if let Msg::Reply { ok, text } = peer.inbox.remove(i) {
                return Ok((ok, text));
            }
        }
        if peer.closed {
            return Err(ControlError::Job(format!(
                "the coordinator at {addr} closed the connection before answering `{request}`"
            )));
        }
        if Instant::now() >= deadline {
            return Err(ControlError::Job(format!(
                "no answer to `{request}` from the coordinator at {addr} within {} s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How a rescale request bounds its steps: `--max-bins B` (bins a step
/// moves at most) and `--max-bytes N` (bytes of state a step moves, about:
/// [`crate::assignment::StepSizer`]), as `spate ctl` writes them after the
/// request's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBounds {
    /// Bins a step moves at most.
    pub max_bins: u32,
    /// Bytes a step moves at most, about (`u64::MAX`: no bound).
    pub max_bytes: u64,
}

impl StepBounds {
    /// Takes `--max-bins` and `--max-bytes` (each with its value) out of
    /// `words`; what is not given is `default`'s. The error names the
    /// option and what is wrong with its value.
    pub fn take(words: &mut Vec<&str>, default: StepBounds) -> Result<StepBounds, String> {
        let mut b = default;
        for flag in ["--max-bins", "--max-bytes"] {
            let Some(i) = words.iter().position(|w| *w == flag) else { continue };
            let v = words.get(i + 1).ok_or_else(|| format!("`{flag}` needs a number"))?;
            let n: u64 = v.parse().map_err(|_| format!("`{flag} {v}`: `{v}` is not a whole number"))?;
            if n == 0 {
                return Err(format!("`{flag} 0`: a step moves at least one bin"));
            }
            match flag {
                "--max-bins" => b.max_bins = n.min(u32::MAX as u64) as u32,
                _ => b.max_bytes = n,
            }
            words.drain(i..=i + 1);
        }
        Ok(b)
    }

    /// The options as `spate ctl` appends them to a request (`None`: not
    /// given).
    pub fn suffix(max_bins: Option<u32>, max_bytes: Option<u64>) -> String {
        let mut s = String::new();
        if let Some(k) = max_bins {
            s.push_str(&format!(" --max-bins {k}"));
        }
        if let Some(n) = max_bytes {
            s.push_str(&format!(" --max-bytes {n}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_bounds_are_taken_out_of_a_request() {
        let d = StepBounds { max_bins: 512, max_bytes: u64::MAX };
        let mut w: Vec<&str> = "scale 2 --max-bytes 1048576 --max-bins 64".split_whitespace().collect();
        assert_eq!(StepBounds::take(&mut w, d), Ok(StepBounds { max_bins: 64, max_bytes: 1 << 20 }));
        assert_eq!(w, ["scale", "2"]);
        let mut w: Vec<&str> = vec!["scale", "2"];
        assert_eq!(StepBounds::take(&mut w, d), Ok(d));
        for bad in [
            "scale 2 --max-bytes",
            "scale 2 --max-bytes 1.5",
            "scale 2 --max-bins 0",
            "scale 2 --max-bytes -3",
        ] {
            let mut w: Vec<&str> = bad.split_whitespace().collect();
            let e = StepBounds::take(&mut w, d).err().unwrap_or_else(|| panic!("{bad} taken"));
            assert!(e.contains("--max-b"), "{bad}: {e}");
        }
        assert_eq!(StepBounds::suffix(Some(8), Some(100)), " --max-bins 8 --max-bytes 100");
    }
}
