//! Checkpoint replication over real TCP on loopback: stream checkpoints of
//! real state stores through a `ReplicaClient` to a `ReplicaServer`, fetch
//! them back and restore them; corrupt chunks, missing checkpoints, a
//! server that goes away, chunks larger than a frame, refused peers, and a
//! throughput figure.

use std::path::Path;
use std::time::{Duration, Instant};

use spate_core::replica::{fetch, ReplicaClient, ReplicaError, ReplicaServer};
use spate_net::frame::{Kind, MAX_FRAME_BYTES};
use spate_net::{Connection, Delivery, NetConfig};
use spate_state::{
    hash_u64, BackupStore, BinRange, Durability, ListState, StateStore, StoreConfig, TableId, ValueState,
};

const CLUSTER: u64 = 0x5ea7;
const T: Duration = Duration::from_secs(10);
const BINS_LOG2: u8 = 4;

/// A store with three tables.
struct World {
    store: StateStore,
    sums: ValueState<u64, u64>,
    blobs: ValueState<u64, Vec<u8>>,
    lists: ListState<u64, Vec<u8>>,
}

type Dump = Vec<(usize, u64, Vec<u8>, Vec<u8>, Vec<Vec<u8>>)>;

impl World {
    fn create(dir: &Path, segment_bytes: usize) -> Self {
        let config = StoreConfig::new(dir, BINS_LOG2).with_segment_bytes(segment_bytes);
        Self::handles(StateStore::create(config, BinRange::all(BINS_LOG2)).unwrap())
    }

    fn handles(mut store: StateStore) -> Self {
        let sums = ValueState::register(&mut store, "sums").unwrap();
        let blobs = ValueState::register(&mut store, "blobs").unwrap();
        let lists = ListState::register(&mut store, "lists").unwrap();
        Self { store, sums, blobs, lists }
    }

    /// Writes round `round` of keys `keys` (values change every round).
    fn write(&mut self, keys: std::ops::Range<u64>, round: u64, blob_bytes: usize) {
        for k in keys {
            let h = hash_u64(k);
            self.sums.put(&mut self.store, h, &k, &(k * 1000 + round)).unwrap();
            let blob = vec![(k + round) as u8; blob_bytes + (k % 7) as usize];
            self.blobs.put(&mut self.store, h, &k, &blob).unwrap();
            if k % 3 == 0 {
                self.lists.append(&mut self.store, h, &k, &vec![round as u8; 5]).unwrap();
            }
        }
    }

    fn tables(&self) -> [TableId; 3] {
        [self.sums.table(), self.blobs.table(), self.lists.table()]
    }

    fn dump(&self) -> Dump {
        let mut out = Vec::new();
        for (ti, t) in self.tables().into_iter().enumerate() {
            self.store.for_each(t, |hash, key, value| {
                let items = self.store.list_items(t, hash, key).map(|i| i.to_vec()).collect();
                out.push((ti, hash, key.to_vec(), value.to_vec(), items));
            });
        }
        out.sort();
        out
    }
}

/// Streams checkpoint `id` of `w` through `client` as `instance`; its bytes.
fn send(
    client: &mut ReplicaClient,
    instance: &str,
    w: &mut World,
    id: u64,
    meta: &[u8],
) -> Result<u64, String> {
    let mut stream = w.store.begin_checkpoint(id, meta).map_err(|e| e.to_string())?;
    let mut bytes = 0;
    while let Some(chunk) = stream.next_chunk() {
        bytes += chunk.len() as u64;
        client.send_chunk(instance, chunk).map_err(|e| e.to_string())?;
    }
    Ok(bytes)
}

/// The chunks of checkpoint `id` of `w`.
fn chunks(w: &mut World, id: u64) -> Vec<Vec<u8>> {
    let mut stream = w.store.begin_checkpoint(id, b"").unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next_chunk() {
        out.push(chunk.to_vec());
    }
    out
}

/// Restores `instance`'s checkpoint `id` from `backup` into `dir`: its
/// contents and meta.
fn restored(backup: &BackupStore, instance: &str, id: u64, dir: &Path) -> (Dump, Vec<u8>) {
    let config = StoreConfig::new(dir, BINS_LOG2);
    let (store, meta, got) = StateStore::restore_id(config, backup, instance, id).unwrap();
    assert_eq!(got, id);
    (World::handles(store).dump(), meta)
}

fn server(root: &Path, durability: Durability) -> ReplicaServer {
    ReplicaServer::start("127.0.0.1:0".parse().unwrap(), root.to_path_buf(), CLUSTER, durability).unwrap()
}

fn local_store() -> BackupStore {
    BackupStore::open("/nonexistent-memory-store", Durability::Memory).unwrap()
}

#[test]
fn full_and_incremental_checkpoints_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::PageCache);
    let mut a = World::create(&dir.path().join("a"), 16 * 1024);
    let mut b = World::create(&dir.path().join("b"), 16 * 1024);
    let mut client = ReplicaClient::connect(srv.addr(), CLUSTER, 3, T).unwrap();
    let mut dumps = Vec::new();
    for id in 1..=4u64 {
        // Checkpoint 1 is a full image, the others increments.
        a.write((id - 1) * 300..id * 300 + 50, id, 40);
        b.write(0..100 * id, id, 8);
        dumps.push((a.dump(), b.dump()));
        let meta = format!("meta {id}");
        send(&mut client, "op-a", &mut a, id, meta.as_bytes()).unwrap();
        send(&mut client, "op-b", &mut b, id, meta.as_bytes()).unwrap();
        client.wait_ack("op-a", id, T).unwrap();
        client.wait_ack("op-b", id, T).unwrap();
    }
    for id in [4u64, 2] {
        let mut local = local_store();
        let report = fetch(srv.addr(), CLUSTER, 3, id, &mut local, T).unwrap();
        assert_eq!(report.instances, ["op-a", "op-b"]);
        // The chain of `id`: the full image 1, then 2..=id.
        assert_eq!(report.checkpoints, 2 * id);
        assert_eq!(local.chain("op-a", id).unwrap(), (1..=id).collect::<Vec<_>>());
        let (da, meta) = restored(&local, "op-a", id, &dir.path().join(format!("ra{id}")));
        let (db, _) = restored(&local, "op-b", id, &dir.path().join(format!("rb{id}")));
        assert_eq!(meta, format!("meta {id}").as_bytes());
        let (ea, eb) = &dumps[id as usize - 1];
        assert!(!ea.is_empty());
        assert!(da == *ea && db == *eb, "checkpoint {id} restored different contents");
    }
    srv.stop();
    // The checkpoints are in files under root/w3/, listed by a new store.
    let reopened = BackupStore::open(dir.path().join("bak/w3"), Durability::PageCache).unwrap();
    assert_eq!(reopened.complete_checkpoints("op-a"), [1, 2, 3, 4]);
    // And served by a new server on the same root.
    let srv = server(&dir.path().join("bak"), Durability::PageCache);
    let mut local = local_store();
    fetch(srv.addr(), CLUSTER, 3, 3, &mut local, T).unwrap();
    let (da, _) = restored(&local, "op-a", 3, &dir.path().join("ra3"));
    assert!(da == dumps[2].0);
}

#[test]
fn two_workers_stream_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::Fsync);
    let addr = srv.addr();
    let workers: Vec<_> = (0..2usize)
        .map(|worker| {
            let sdir = dir.path().join(format!("s{worker}"));
            std::thread::spawn(move || {
                let mut w = World::create(&sdir, 16 * 1024);
                let mut client = ReplicaClient::connect(addr, CLUSTER, worker, T).unwrap();
                let mut last = Vec::new();
                for id in 1..=3u64 {
                    // Different contents per worker, same instance name.
                    w.write(0..(500 + 300 * worker as u64), id * 10 + worker as u64, 100);
                    last = w.dump();
                    send(&mut client, "op", &mut w, id, &[worker as u8]).unwrap();
                    client.wait_ack("op", id, T).unwrap();
                }
                last
            })
        })
        .collect();
    let expected: Vec<Dump> = workers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_ne!(expected[0], expected[1]);
    for (worker, want) in expected.iter().enumerate() {
        let mut local = local_store();
        let report = fetch(addr, CLUSTER, worker, 3, &mut local, T).unwrap();
        assert_eq!(report.instances, ["op"]);
        let (got, meta) = restored(&local, "op", 3, &dir.path().join(format!("r{worker}")));
        assert_eq!(meta, [worker as u8]);
        assert!(got == *want, "worker {worker}: restored different contents");
    }
}

#[test]
fn corrupt_chunk_is_refused_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::PageCache);
    let mut w = World::create(&dir.path().join("s"), 16 * 1024);
    let mut client = ReplicaClient::connect(srv.addr(), CLUSTER, 0, T).unwrap();
    w.write(0..500, 1, 30);
    send(&mut client, "op", &mut w, 1, b"").unwrap();
    client.wait_ack("op", 1, T).unwrap();
    w.write(0..200, 2, 30);
    let want = w.dump();
    let good = chunks(&mut w, 2);
    assert!(good.len() > 3);
    let mut bad = good.clone();
    bad[2][40] ^= 0x10; // a page chunk's byte
    for c in &bad {
        client.send_chunk("op", c).unwrap();
    }
    let e = client.wait_ack("op", 2, T).unwrap_err().to_string();
    assert!(e.contains("refused checkpoint 2 of `op`") && e.contains("crc"), "{e}");
    // Not acknowledged, not stored: a second wait times out.
    let e = client.wait_ack("op", 2, Duration::from_millis(200)).unwrap_err().to_string();
    assert!(e.contains("no acknowledgement"), "{e}");
    // The same connection, and the server, go on: the intact stream is
    // stored.
    for c in &good {
        client.send_chunk("op", c).unwrap();
    }
    client.wait_ack("op", 2, T).unwrap();
    let mut local = local_store();
    fetch(srv.addr(), CLUSTER, 0, 2, &mut local, T).unwrap();
    assert!(restored(&local, "op", 2, &dir.path().join("r")).0 == want);
}

#[test]
fn fetching_a_missing_checkpoint_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::Memory);
    let mut a = World::create(&dir.path().join("a"), 16 * 1024);
    let mut b = World::create(&dir.path().join("b"), 16 * 1024);
    let mut client = ReplicaClient::connect(srv.addr(), CLUSTER, 1, T).unwrap();
    a.write(0..100, 1, 10);
    b.write(0..100, 1, 10);
    send(&mut client, "op-a", &mut a, 1, b"").unwrap();
    send(&mut client, "op-b", &mut b, 1, b"").unwrap();
    send(&mut client, "op-a", &mut a, 2, b"").unwrap();
    client.wait_ack("op-b", 1, T).unwrap();
    client.wait_ack("op-a", 2, T).unwrap();
    let start = Instant::now();
    // op-b has no checkpoint 2.
    let e = fetch(srv.addr(), CLUSTER, 1, 2, &mut local_store(), T).unwrap_err().to_string();
    assert!(e.contains("checkpoint 2") && e.contains("`op-b`") && !e.contains("`op-a`"), "{e}");
    // No instance has checkpoint 9.
    let e = fetch(srv.addr(), CLUSTER, 1, 9, &mut local_store(), T).unwrap_err().to_string();
    assert!(e.contains("`op-a`") && e.contains("`op-b`"), "{e}");
    // Nothing stored for worker 5.
    let e = fetch(srv.addr(), CLUSTER, 5, 1, &mut local_store(), T).unwrap_err().to_string();
    assert!(e.contains("no checkpoint of worker 5"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2), "errors took {:?}", start.elapsed());
    // A local store that already holds the checkpoint refuses it again.
    let mut local = local_store();
    fetch(srv.addr(), CLUSTER, 1, 1, &mut local, T).unwrap();
    let e = fetch(srv.addr(), CLUSTER, 1, 1, &mut local, T).unwrap_err().to_string();
    assert!(e.contains("local backup store refused"), "{e}");
}

#[test]
fn a_server_that_stops_fails_the_client_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::Memory);
    let addr = srv.addr();
    let mut w = World::create(&dir.path().join("s"), 64 * 1024);
    w.write(0..20_000, 1, 400); // about 8 MiB
    let all = chunks(&mut w, 1);
    let mut client = ReplicaClient::connect(addr, CLUSTER, 0, Duration::from_secs(30)).unwrap();
    let half = all.len() / 2;
    for c in &all[..half] {
        client.send_chunk("op", c).unwrap();
    }
    srv.stop();
    let start = Instant::now();
    let e = all[half..].iter().try_for_each(|c| client.send_chunk("op", c)).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(2), "noticed after {:?}", start.elapsed());
    assert!(e.contains("connection lost"), "{e}");
    // Every later call fails at once.
    let start = Instant::now();
    assert!(client.wait_ack("op", 1, Duration::from_secs(30)).is_err());
    assert!(client.send_chunk("op", &all[0]).is_err());
    assert!(start.elapsed() < Duration::from_millis(100));

    // A client waiting for an ack when its server stops.
    let srv = server(&dir.path().join("bak2"), Durability::Memory);
    let mut client = ReplicaClient::connect(srv.addr(), CLUSTER, 0, T).unwrap();
    client.send_chunk("op", &all[0]).unwrap();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        srv.stop();
    });
    let start = Instant::now();
    let e = client.wait_ack("op", 1, Duration::from_secs(30)).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(2), "noticed after {:?}", start.elapsed());
    assert!(e.contains("connection lost"), "{e}");
    stopper.join().unwrap();
    // A fetch from a server that is gone.
    let e = fetch(addr, CLUSTER, 0, 1, &mut local_store(), Duration::from_secs(2)).unwrap_err();
    assert!(matches!(e.inner(), ReplicaError::Connect { addr: a, .. } if *a == addr), "{e:?}");
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[test]
fn chunks_larger_than_a_frame_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::PageCache);
    let mut w = World::create(&dir.path().join("s"), 16 * 1024);
    w.write(0..300, 1, 20);
    // The header chunk carries the meta bytes: 20 MiB, beyond a frame.
    let meta: Vec<u8> = (0..20u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut client = ReplicaClient::connect(srv.addr(), CLUSTER, 2, T).unwrap();
    let bytes = send(&mut client, "op", &mut w, 1, &meta).unwrap();
    assert!(bytes > u64::from(MAX_FRAME_BYTES));
    client.wait_ack("op", 1, T).unwrap();
    let mut local = local_store();
    let report = fetch(srv.addr(), CLUSTER, 2, 1, &mut local, T).unwrap();
    assert_eq!(report.bytes, bytes);
    let (got, got_meta) = restored(&local, "op", 1, &dir.path().join("r"));
    assert!(got == w.dump());
    assert!(got_meta == meta);
}

#[test]
fn bad_arguments_are_errors_and_leave_the_client_usable() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::Memory);
    let mut client = ReplicaClient::connect(srv.addr(), CLUSTER, 0, T).unwrap();
    let e = client.send_chunk("", b"x").unwrap_err().to_string();
    assert!(e.contains("instance name of 0 bytes"), "{e}");
    let e = client.send_chunk(&"n".repeat(2000), b"x").unwrap_err().to_string();
    assert!(e.contains("instance name of 2000 bytes"), "{e}");
    let e = client.send_chunk("op", b"").unwrap_err().to_string();
    assert!(e.contains("chunk of `op` of 0 bytes"), "{e}");
    let mut w = World::create(&dir.path().join("s"), 16 * 1024);
    w.write(0..10, 1, 5);
    send(&mut client, "op", &mut w, 1, b"").unwrap();
    client.wait_ack("op", 1, T).unwrap();
}

#[test]
fn peers_of_other_clusters_and_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::Memory);
    let e = ReplicaClient::connect(srv.addr(), CLUSTER + 1, 0, T).unwrap_err().to_string();
    assert!(e.contains("cluster"), "{e}");
    let e = fetch(srv.addr(), CLUSTER + 1, 0, 1, &mut local_store(), T).unwrap_err().to_string();
    assert!(e.contains("cluster"), "{e}");
    let deadline = Instant::now() + T;
    let e = Connection::connect(srv.addr(), &NetConfig::new("ctl:node-a", CLUSTER), deadline)
        .and_then(|c| c.wait())
        .unwrap_err();
    assert!(e.to_string().contains("unknown node name"), "{e}");
    // The server still serves.
    ReplicaClient::connect(srv.addr(), CLUSTER, 0, T).unwrap();
}

#[test]
fn a_malformed_message_gets_an_error_and_only_its_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::Memory);
    let deadline = Instant::now() + T;
    let mut raw = Connection::connect(srv.addr(), &NetConfig::new("bak:w4", CLUSTER), deadline)
        .and_then(|c| c.wait())
        .unwrap();
    // A chunk part cut inside its header.
    assert!(raw.try_send_control(Kind::CheckpointChunk, 0, 0, &[2, 0, 9]).unwrap());
    let mut report = None;
    let mut closed = false;
    while !closed {
        assert!(Instant::now() < deadline, "no answer to a malformed message");
        let r = raw.poll_io().and_then(|_| {
            raw.poll_recv(16, |f| {
                if f.header.kind == Kind::Report {
                    report = Some(String::from_utf8_lossy(f.payload).into_owned());
                }
                Delivery::Consumed
            })
        });
        closed = r.is_err();
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = report.unwrap();
    assert!(report.contains("malformed chunk part message: truncated at `chunk_len`"), "{report}");
    // Other connections are served.
    let mut w = World::create(&dir.path().join("s"), 16 * 1024);
    w.write(0..50, 1, 5);
    let mut client = ReplicaClient::connect(srv.addr(), CLUSTER, 4, T).unwrap();
    send(&mut client, "op", &mut w, 1, b"").unwrap();
    client.wait_ack("op", 1, T).unwrap();
    // A client whose stream is refused gets the server's reason.
    let mut raw = Connection::connect(srv.addr(), &NetConfig::new("bak:w4", CLUSTER), deadline)
        .and_then(|c| c.wait())
        .unwrap();
    assert!(raw.try_send_control(Kind::Recovery, 0, 0, &[0; 16]).unwrap());
    let mut report = None;
    while report.is_none() {
        assert!(Instant::now() < deadline);
        let _ = raw.poll_io();
        let _ = raw.poll_recv(16, |f| {
            report = Some(String::from_utf8_lossy(f.payload).into_owned());
            Delivery::Consumed
        });
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(report.unwrap().contains("unexpected Recovery frame on a backup stream"));
}

/// Loopback throughput of the whole path (client, TCP, server, the
/// server's backup store), for a stream of page chunks and for a few large
/// chunks, and of a fetch. Small by default; `SPATE_REPLICA_BENCH_MB=256
/// cargo test --release -p spate-core --test replica -- --nocapture
/// throughput` for real figures (`SPATE_REPLICA_BENCH_DURABILITY=pagecache`
/// for a server storing into files; default: memory).
#[test]
fn throughput() {
    let mb: usize = std::env::var("SPATE_REPLICA_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let durability = match std::env::var("SPATE_REPLICA_BENCH_DURABILITY").as_deref() {
        Ok("pagecache") => Durability::PageCache,
        Ok("fsync") => Durability::Fsync,
        _ => Durability::Memory,
    };
    let runs = if mb > 16 { 5 } else { 1 };
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::create(&dir.path().join("s"), 1 << 20);
    let value_bytes = 1000;
    w.write(0..(mb << 20) as u64 / value_bytes as u64, 1, value_bytes);
    let pages = chunks(&mut w, 1);
    // Large chunks: header chunks with up to 64 MiB of meta, each its own
    // full checkpoint of a tiny store.
    let n = mb.div_ceil(64).max(1);
    let big: Vec<Vec<u8>> = {
        let mut small = World::create(&dir.path().join("t"), 16 * 1024);
        small.store.set_checkpoint_full_every(0);
        let meta = vec![0x5au8; (mb << 20) / n];
        (1..=n as u64)
            .flat_map(|id| {
                let mut s = small.store.begin_checkpoint(id, &meta).unwrap();
                let mut v = Vec::new();
                while let Some(c) = s.next_chunk() {
                    v.push(c.to_vec());
                }
                v
            })
            .collect()
    };
    let mut figures: Vec<(&str, Vec<f64>)> =
        vec![("page chunks", vec![]), ("large chunks", vec![]), ("fetch", vec![])];
    for run in 0..runs {
        let srv = server(&dir.path().join(format!("bak{run}")), durability);
        for (i, (label, stream)) in [("p", &pages), ("b", &big)].into_iter().enumerate() {
            let bytes: usize = stream.iter().map(Vec::len).sum();
            let mut client = ReplicaClient::connect(srv.addr(), CLUSTER, i, T).unwrap();
            let start = Instant::now();
            for c in stream.iter() {
                client.send_chunk(label, c).unwrap();
            }
            let last = if i == 0 { 1 } else { n as u64 };
            client.wait_ack(label, last, Duration::from_secs(60)).unwrap();
            figures[i].1.push(bytes as f64 / start.elapsed().as_secs_f64() / 1e6);
        }
        let mut local = local_store();
        let start = Instant::now();
        let report = fetch(srv.addr(), CLUSTER, 0, 1, &mut local, Duration::from_secs(60)).unwrap();
        figures[2].1.push(report.bytes as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    let page_bytes: usize = pages.iter().map(Vec::len).sum();
    println!(
        "replica throughput over loopback, {} page chunks ({} MB), {n} header chunks of {} MB, {runs} runs, \
         server store {durability:?}:",
        pages.len(),
        page_bytes / 1_000_000,
        (mb << 20) / n / 1_000_000
    );
    for (label, mut v) in figures {
        v.sort_by(f64::total_cmp);
        println!(
            "  {label:>12}: median {:7.0} MB/s (min {:.0}, max {:.0})",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
}

#[test]
fn chains_are_compacted_once_the_job_completed_their_checkpoint() {
    use spate_core::replica::COMPACT_EVERY;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bak");
    let srv = server(&root, Durability::PageCache);
    let completion = srv.completion();
    let files = || walk(&root).into_iter().filter(|p| p.extension().is_some_and(|e| e == "ckpt")).count();
    // Worker 0 stores one checkpoint more than the job completed; worker 1
    // stops at the completed one.
    let mut a = World::create(&dir.path().join("a"), 16 * 1024);
    let mut b = World::create(&dir.path().join("b"), 16 * 1024);
    let mut ca = ReplicaClient::connect(srv.addr(), CLUSTER, 0, T).unwrap();
    let mut cb = ReplicaClient::connect(srv.addr(), CLUSTER, 1, T).unwrap();
    let mut b_at_complete = Vec::new();
    for id in 1..=COMPACT_EVERY + 1 {
        a.write(id * 10..id * 10 + 20, id, 16);
        send(&mut ca, "a", &mut a, id, b"").unwrap();
        ca.wait_ack("a", id, T).unwrap();
        if id <= COMPACT_EVERY {
            b.write(id * 7..id * 7 + 9, id, 4);
            send(&mut cb, "b", &mut b, id, b"").unwrap();
            cb.wait_ack("b", id, T).unwrap();
            b_at_complete = b.dump();
        }
    }
    let before = files();
    assert_eq!(before as u64, 2 * COMPACT_EVERY + 1, "every checkpoint stored");
    completion.complete(COMPACT_EVERY);
    // What restoring checkpoint COMPACT_EVERY never reads goes (the older
    // chains: a store starts a new chain with a full image every 16), and
    // b's chain, which ends at it, becomes one image; a's newest chain,
    // which ends at a newer checkpoint, stays whole: the complete one must
    // stay restorable.
    let a_chain = {
        let mut local = local_store();
        fetch(srv.addr(), CLUSTER, 0, COMPACT_EVERY + 1, &mut local, T).unwrap().checkpoints
    };
    let t = Instant::now();
    while files() as u64 != a_chain + 1 {
        assert!(t.elapsed() < T, "not compacted: {} files, a's chain has {a_chain}", files());
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut local = local_store();
    let report = fetch(srv.addr(), CLUSTER, 1, COMPACT_EVERY, &mut local, T).unwrap();
    assert_eq!(report.checkpoints, 1, "the compacted chain is one image");
    let (db, _) = restored(&local, "b", COMPACT_EVERY, &dir.path().join("rb"));
    assert!(db == b_at_complete, "the compacted image restores the same state");
    // Worker 0's chain is still whole and restorable.
    let mut local = local_store();
    let report = fetch(srv.addr(), CLUSTER, 0, COMPACT_EVERY + 1, &mut local, T).unwrap();
    assert_eq!(report.checkpoints, a_chain);
    assert!(a_chain > 1 && a_chain < COMPACT_EVERY);
    srv.stop();
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_workers_streams_of_an_older_epoch_are_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir.path().join("bak"), Durability::Memory);
    let mut a = World::create(&dir.path().join("a"), 16 * 1024);
    a.write(0..50, 1, 8);
    // Epoch 1's stream works, until epoch 2's stream of the same worker
    // connects: then the old one is closed and a new one of epoch 1 is
    // refused. Other workers are not affected.
    let mut old = ReplicaClient::connect_epoch(srv.addr(), CLUSTER, 0, 1, T).unwrap();
    send(&mut old, "op", &mut a, 1, b"").unwrap();
    old.wait_ack("op", 1, T).unwrap();
    let mut new = ReplicaClient::connect_epoch(srv.addr(), CLUSTER, 0, 2, T).unwrap();
    let mut other = ReplicaClient::connect_epoch(srv.addr(), CLUSTER, 1, 1, T).unwrap();
    a.write(0..50, 2, 8);
    let sent = send(&mut old, "op", &mut a, 2, b"")
        .and_then(|_| old.wait_ack("op", 2, Duration::from_secs(3)).map_err(|e| e.to_string()));
    assert!(sent.is_err(), "the old epoch's stream still stores checkpoints");
    assert!(ReplicaClient::connect_epoch(srv.addr(), CLUSTER, 0, 1, T).is_err(), "an old epoch reconnected");
    a.write(0..50, 3, 8);
    send(&mut new, "op", &mut a, 3, b"").unwrap();
    new.wait_ack("op", 3, T).unwrap();
    let mut b = World::create(&dir.path().join("b"), 16 * 1024);
    b.write(0..5, 1, 8);
    send(&mut other, "op", &mut b, 1, b"").unwrap();
    other.wait_ack("op", 1, T).unwrap();
    srv.stop();
}
