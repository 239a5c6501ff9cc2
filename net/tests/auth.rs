//! Cluster authentication in the handshake (decision 46), over real
//! loopback sockets: peers with the secret connect, peers without it or
//! with another are refused on both sides, a replayed transcript fails,
//! and idle connections never keep a real peer out (connection hygiene).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use spate_net::auth::{ClusterSecret, Role, NONCE_BYTES};
use spate_net::conn::{Connection, Listener, NetConfig};
use spate_net::error::{NetError, NetErrorKind};
use spate_net::frame::{encode_control, FrameDecoder, Kind};
use spate_net::hello::{Hello, HelloAuth, Rejection};
use spate_net::limits::{PENDING_HANDSHAKES_MAX, PENDING_PER_ADDR_MAX};

const CLUSTER: u64 = 0x5eed_0002;

fn secret(s: &str) -> Option<ClusterSecret> {
    Some(ClusterSecret::from_bytes(s.as_bytes()).unwrap())
}

fn config(node: &str, key: Option<ClusterSecret>) -> NetConfig {
    let mut c = NetConfig::new(node, CLUSTER);
    c.secret = key;
    c
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs one handshake, both ends polled from this thread: each side's
/// outcome.
fn handshake(
    listener: &mut Listener,
    client: &NetConfig,
) -> (Result<Connection, NetError>, Result<Connection, NetError>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut connecting = Connection::connect(listener.local_addr(), client, deadline).unwrap();
    let (mut a, mut b) = (None, None);
    while a.is_none() || b.is_none() {
        assert!(Instant::now() < deadline, "handshake did not end");
        if a.is_none() {
            match connecting.poll() {
                Ok(Some(c)) => a = Some(Ok(c)),
                Ok(None) => {}
                Err(e) => a = Some(Err(e)),
            }
        }
        if b.is_none() {
            match listener.poll_accept() {
                Ok(Some(c)) => b = Some(Ok(c)),
                Ok(None) => {}
                Err(e) => b = Some(Err(e)),
            }
        }
        // A connector that completed while the acceptor refused sees the
        // goodbye on its first read; stop once the acceptor decided.
        if matches!(b, Some(Err(_))) && a.is_none() && Instant::now() + Duration::from_secs(4) > deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    (
        a.unwrap_or_else(|| Err(NetError { addr: any_port(), node: None, kind: NetErrorKind::Closed })),
        b.unwrap(),
    )
}

#[test]
fn peers_with_the_secret_connect_and_data_flows() {
    let key = secret("correct horse battery staple");
    let mut l = Listener::bind(any_port(), config("acceptor", key.clone())).unwrap();
    assert!(l.authenticates());
    let (a, b) = handshake(&mut l, &config("bak:w0@3", key));
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    assert_eq!(b.peer().node, "bak:w0@3");
    assert_eq!(a.peer().node, "acceptor");
    assert!(a.try_send_control(Kind::Report, 0, 1, b"after the proof").unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(Instant::now() < deadline);
        a.poll_io().unwrap();
        b.poll_io().unwrap();
        b.poll_recv(8, |f| {
            got.extend_from_slice(f.payload);
            spate_net::Delivery::Consumed
        })
        .unwrap();
    }
    assert_eq!(got, b"after the proof");
}

#[test]
fn a_wrong_secret_is_refused_on_both_sides() {
    let mut l = Listener::bind(any_port(), config("acceptor", secret("the cluster's own secret"))).unwrap();
    let (a, b) = handshake(&mut l, &config("bak:w0@99", secret("a guess at the secret!")));
    let a = a.unwrap_err();
    // The connector checks the acceptor's proof first and gives up.
    assert!(matches!(a.kind, NetErrorKind::Unauthenticated(_)), "{a}");
    let b = b.unwrap_err();
    assert!(matches!(b.kind, NetErrorKind::Unauthenticated(_) | NetErrorKind::PeerClosed), "acceptor: {b}");
    assert!(b.to_string().contains("127.0.0.1"), "{b}");
}

#[test]
fn a_peer_without_a_secret_is_refused_and_told_why() {
    let mut l = Listener::bind(any_port(), config("acceptor", secret("the cluster's own secret"))).unwrap();
    let (a, b) = handshake(&mut l, &config("bak:w0@99", None));
    let b = b.unwrap_err();
    assert!(b.to_string().contains("did not authenticate"), "{b}");
    assert_eq!(b.node.as_deref(), Some("bak:w0@99"));
    let a = a.unwrap_err();
    assert!(
        matches!(
            a.kind,
            NetErrorKind::RejectedByPeer(spate_net::hello::GoodbyeReason::Rejected(
                Rejection::Unauthenticated
            ))
        ),
        "{a}"
    );
    // And an acceptor without a secret refuses a connector that has one.
    let mut open = Listener::bind(any_port(), config("acceptor", None)).unwrap();
    let (a, b) = handshake(&mut open, &config("ctl:b", secret("the cluster's own secret")));
    assert!(b.unwrap_err().to_string().contains("has none configured"));
    assert!(a.is_err());
}

fn write_hello(s: &mut TcpStream, name: &str, auth: HelloAuth) {
    let mut payload = Vec::new();
    Hello { node: name.into(), cluster: CLUSTER, credit_window: 16, auth }.encode(&mut payload);
    let mut frame = Vec::new();
    encode_control(Kind::Hello, 0, 0, &payload, &mut frame).unwrap();
    s.write_all(&frame).unwrap();
}

/// Reads the acceptor's hello from a blocking socket.
fn read_hello(s: &mut TcpStream) -> Hello {
    let mut d = FrameDecoder::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        if let Some(f) = d.next_frame().unwrap() {
            assert_eq!(f.header.kind, Kind::Hello);
            return Hello::decode(f.payload).unwrap();
        }
        let buf = d.read_buf(4096);
        let n = s.read(buf).unwrap();
        assert!(n > 0, "acceptor closed");
        d.commit(n);
    }
}

/// Polls the listener until it yields a connection or an error.
fn accept(l: &mut Listener) -> Result<Connection, NetError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "listener decided nothing");
        if let Some(c) = l.poll_accept()? {
            return Ok(c);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn a_replayed_transcript_is_refused() {
    let key = secret("the cluster's own secret");
    let k = key.clone().unwrap();
    let mut l = Listener::bind(any_port(), config("acceptor", key)).unwrap();
    let nc = [9u8; NONCE_BYTES];
    // A real client's session, recorded: its hello and its proof.
    let mut s = TcpStream::connect(l.local_addr()).unwrap();
    write_hello(&mut s, "bak:w0@1", HelloAuth::Nonce(nc));
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.is_none() {
        assert!(Instant::now() < deadline);
        assert!(l.poll_accept().unwrap().is_none());
        if l.pending_handshakes() == 1 {
            first = Some(read_hello(&mut s));
        }
    }
    let HelloAuth::Challenge { nonce: na, .. } = first.unwrap().auth else { panic!("no challenge") };
    let proof = k.prove(Role::Connector, CLUSTER, &nc, &na, "bak:w0@1");
    let mut frame = Vec::new();
    encode_control(Kind::Auth, 0, 0, &proof, &mut frame).unwrap();
    s.write_all(&frame).unwrap();
    assert_eq!(accept(&mut l).unwrap().peer().node, "bak:w0@1");
    // The same bytes again: the acceptor draws a new nonce, so the old
    // proof is wrong.
    let mut replay = TcpStream::connect(l.local_addr()).unwrap();
    write_hello(&mut replay, "bak:w0@1", HelloAuth::Nonce(nc));
    replay.write_all(&frame).unwrap();
    let e = accept(&mut l).unwrap_err();
    assert!(matches!(e.kind, NetErrorKind::Unauthenticated(spate_net::auth::AuthFailure::BadProof)), "{e}");
    // A proof reflected back (the acceptor's own, as the connector's) too.
    let mut reflect = TcpStream::connect(l.local_addr()).unwrap();
    write_hello(&mut reflect, "bak:w0@1", HelloAuth::Nonce(nc));
    let mut ch = None;
    while ch.is_none() {
        assert!(l.poll_accept().unwrap().is_none());
        if l.pending_handshakes() == 1 {
            ch = Some(read_hello(&mut reflect));
        }
    }
    let HelloAuth::Challenge { proof: theirs, .. } = ch.unwrap().auth else { panic!("no challenge") };
    let mut frame = Vec::new();
    encode_control(Kind::Auth, 0, 0, &theirs, &mut frame).unwrap();
    reflect.write_all(&frame).unwrap();
    assert!(matches!(accept(&mut l).unwrap_err().kind, NetErrorKind::Unauthenticated(_)));
}

#[test]
fn idle_connections_never_keep_a_real_peer_out() {
    let key = secret("the cluster's own secret");
    let mut l = Listener::bind(any_port(), config("acceptor", key.clone())).unwrap();
    // 150 idle connections, accepted (and the oldest dropped) as they come.
    let mut idle = Vec::new();
    let mut dropped = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut quiet_polls = 0;
    while idle.len() < 150 || quiet_polls < 200 {
        assert!(Instant::now() < deadline, "only {dropped} dropped");
        if idle.len() < 150 {
            idle.push(TcpStream::connect(l.local_addr()).unwrap());
        } else {
            quiet_polls += 1;
        }
        match l.poll_accept() {
            Err(e) if matches!(e.kind, NetErrorKind::Rejected(Rejection::Busy)) => dropped += 1,
            Err(e) => panic!("{e}"),
            Ok(c) => assert!(c.is_none()),
        }
    }
    // All from one address: at most PENDING_PER_ADDR_MAX stay pending; the
    // others were dropped (reported up to the pending limit).
    assert!(l.pending_handshakes() <= PENDING_PER_ADDR_MAX, "{} pending", l.pending_handshakes());
    assert!(dropped >= PENDING_HANDSHAKES_MAX.min(150 - PENDING_PER_ADDR_MAX), "{dropped} reported");
    let t = Instant::now();
    let deadline = t + Duration::from_secs(5);
    let mut connecting = Connection::connect(l.local_addr(), &config("ctl:b", key), deadline).unwrap();
    let (mut a, mut b) = (None, None);
    while a.is_none() || b.is_none() {
        assert!(Instant::now() < deadline, "no handshake beside 150 idle connections");
        if a.is_none() {
            a = connecting.poll().unwrap();
        }
        match l.poll_accept() {
            Ok(Some(c)) => b = Some(c),
            Ok(None) => {}
            // Idle ones dropped to make room.
            Err(e) if matches!(e.kind, NetErrorKind::Rejected(Rejection::Busy)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(b.unwrap().peer().node, "ctl:b");
    assert!(t.elapsed() < Duration::from_secs(1), "took {:?} beside 150 idle connections", t.elapsed());
    drop(idle);
}
