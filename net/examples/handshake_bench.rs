//! The cost of a connection's handshake with and without a cluster secret
//! (decision 46): loopback connect + accept, both ends polled from one
//! thread, alternating rounds; prints the median µs a handshake of each.
//!
//! `cargo run --release -p spate-net --example handshake_bench [ROUNDS] [PER_ROUND]`

use std::time::{Duration, Instant};

use spate_net::auth::ClusterSecret;
use spate_net::conn::{Connection, Listener, NetConfig};

fn config(node: &str, secret: &Option<ClusterSecret>) -> NetConfig {
    let mut c = NetConfig::new(node, 0xbe7c);
    c.secret = secret.clone();
    c
}

/// Median µs of `n` handshakes.
fn handshakes(n: usize, secret: &Option<ClusterSecret>) -> Result<f64, Box<dyn std::error::Error>> {
    let mut listener = Listener::bind("127.0.0.1:0".parse()?, config("acceptor", secret))?;
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(5);
        let mut connecting =
            Connection::connect(listener.local_addr(), &config("bak:w0@1", secret), deadline)?;
        let (mut a, mut b) = (None, None);
        while a.is_none() || b.is_none() {
            if Instant::now() > deadline {
                return Err("a handshake took over 5 s".into());
            }
            if a.is_none() {
                a = connecting.poll()?;
            }
            if b.is_none() {
                b = listener.poll_accept()?;
            }
        }
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    Ok(us[us.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(7), |s| s.parse())?;
    let per_round: usize = args.next().map_or(Ok(500), |s| s.parse())?;
    let secret = Some(ClusterSecret::from_bytes(b"a benchmark's cluster secret")?);
    let (mut plain, mut auth) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(handshakes(per_round, &None)?);
        auth.push(handshakes(per_round, &secret)?);
    }
    plain.sort_by(f64::total_cmp);
    auth.sort_by(f64::total_cmp);
    let (p, a) = (plain[rounds / 2], auth[rounds / 2]);
    println!(
        "{{\"rounds\":{rounds},\"per_round\":{per_round},\"plain_us\":{p:.1},\"auth_us\":{a:.1},\"extra_us\":{:.1}}}",
        a - p
    );
    Ok(())
}
