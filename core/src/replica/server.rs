//! The replica service: [`ReplicaServer`], its thread, the connections it
//! serves (backup streams and fetches) and the retention and compaction
//! of what it stores once the job completed a checkpoint.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use spate_net::frame::Kind;
use spate_net::hello::Rejection;
use spate_net::{Connection, Delivery, Listener, NetError};
use spate_state::checkpoint::{decode_chunk, ChunkKind};
use spate_state::{BackupStore, Durability, StateError};

use super::error::{Link, ReplicaError};
use super::fetch_stream::{FetchStream, Pumped};
use super::reassembly::Reassembly;
use super::wire::{
    encode_ack, encode_error, net_config, parse_hello_name, parse_hello_name_epoch, parse_part,
    parse_request, Purpose,
};
use super::{
    ACCEPTS_PER_PASS, CLOSE_LINGER, COMPACT_EVERY, CONNECTIONS_MAX, FETCH_REQUEST_TIMEOUT, FRAMES_PER_PASS,
    SERVER_IDLE_NAP, SERVER_NAME,
};
use crate::panic::ThreadPanic;

/// A node's backup service: its own TCP listener (own port), served by its
/// own thread, keeping the checkpoint streams of other nodes' workers and
/// serving them back to recoveries (see the [module documentation](crate::replica)).
#[derive(Debug)]
pub struct ReplicaServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    /// The service's thread panicked (it stopped serving).
    panicked: Arc<OnceLock<ThreadPanic>>,
    thread: Option<JoinHandle<()>>,
}

impl ReplicaServer {
    /// Binds `bind` (for example `127.0.0.1:0`, or the node's IP with port
    /// 0: see [`addr`](Self::addr)) and starts the service's thread, which
    /// stores what it receives under `root/w{origin_worker}/` (one
    /// [`BackupStore`] per origin worker, opened at the worker's first
    /// connection: checkpoints already there are served too) with
    /// `durability`. `cluster` is the job id the peers' hellos must carry.
    /// Fails if the address cannot be bound or `root` cannot be created.
    pub fn start(
        bind: SocketAddr,
        root: PathBuf,
        cluster: u64,
        durability: Durability,
    ) -> Result<Self, ReplicaError> {
        if durability != Durability::Memory {
            std::fs::create_dir_all(&root)
                .map_err(|e| ReplicaError::CreateRoot { path: root.clone(), source: Arc::new(e) })?;
        }
        let listener = Listener::bind(bind, net_config(SERVER_NAME.into(), cluster))
            .map_err(|e| ReplicaError::Listen { addr: bind, source: Arc::new(e) })?;
        let addr = listener.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let mut server = Server {
            listener,
            root,
            durability,
            stores: HashMap::new(),
            peers: Vec::new(),
            completed: Arc::clone(&completed),
            retained: 0,
            compacted: 0,
            epochs: HashMap::new(),
            refusals: crate::refusals::RefusalLog::new(),
            fatal: None,
        };
        let flag = Arc::clone(&stop);
        let panicked = Arc::new(OnceLock::new());
        let told = Arc::clone(&panicked);
        let thread = std::thread::Builder::new()
            .name(format!("spate-replica-{}", addr.port()))
            .spawn(move || {
                // A panic stops the service: its node hears of it
                // ([`CompletionHandle::panicked`]) and fails (decision 44).
                let served = crate::panic::catch(Some("serving backups and fetches"), || {
                    while !flag.load(Ordering::Acquire) {
                        if !server.poll() {
                            std::thread::sleep(SERVER_IDLE_NAP);
                        }
                        if let Some(e) = server.fatal.take() {
                            // Its node fails as for a panic of the service.
                            eprintln!(
                                "spate: replica service on port {}: {e}",
                                server.listener.local_addr().port()
                            );
                            return Err(e);
                        }
                    }
                    Ok(())
                });
                let stopped = match served {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(ThreadPanic {
                        thread: crate::panic::current_thread(),
                        during: Some("storing backups".into()),
                        message: e.to_string(),
                    }),
                    Err(p) => Some(p),
                };
                if let Some(p) = stopped {
                    let _ = told.set(p);
                }
            })
            .map_err(|e| ReplicaError::SpawnThread { source: Arc::new(e) })?;
        Ok(Self { addr, stop, completed, panicked, thread: Some(thread) })
    }

    /// Where the node records the job's last complete checkpoint
    /// ([`CompletionHandle::complete`]). The service then removes every
    /// stored checkpoint that restoring it (or a later one) never reads,
    /// and every [`COMPACT_EVERY`] checkpoints compacts each chain that
    /// ends at it into one image, so that what it stores stays bounded. A
    /// chain that ends at a newer checkpoint (not complete everywhere yet,
    /// and maybe never) is not compacted: the complete one must stay
    /// restorable.
    pub fn completion(&self) -> CompletionHandle {
        CompletionHandle { completed: Arc::clone(&self.completed), panicked: Arc::clone(&self.panicked) }
    }

    /// Whether the service's thread panicked (and so stopped serving).
    pub fn panicked(&self) -> Option<&ThreadPanic> {
        self.panicked.get()
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread, closing the listener and every connection (also
    /// done on drop). Returns within a pass of the loop (milliseconds, or
    /// one fsync).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ReplicaServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // The thread catches its panics; if it died, there is nothing
            // left to stop.
            let _ = t.join();
        }
    }
}

/// Tells a [`ReplicaServer`] which checkpoint of the job is complete on
/// every node (see [`ReplicaServer::completion`]), and tells its node
/// whether the service's thread panicked.
#[derive(Debug, Clone)]
pub struct CompletionHandle {
    completed: Arc<AtomicU64>,
    panicked: Arc<OnceLock<ThreadPanic>>,
}

impl CompletionHandle {
    /// Checkpoint `id` of the job is complete.
    pub fn complete(&self, id: u64) {
        self.completed.fetch_max(id, Ordering::AcqRel);
    }

    /// The service's panic, if its thread panicked: it serves nothing any
    /// more, so its node must fail.
    pub fn panicked(&self) -> Option<&ThreadPanic> {
        self.panicked.get()
    }
}

/// Core's tests: the service listening on this port panics at its next
/// pass.
#[cfg(test)]
pub(crate) static PANIC_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// The state of the service's thread.
struct Server {
    listener: Listener,
    root: PathBuf,
    durability: Durability,
    stores: HashMap<usize, BackupStore>,
    peers: Vec<Peer>,
    /// The job's last complete checkpoint, and the one the chains were
    /// last compacted at.
    completed: Arc<AtomicU64>,
    retained: u64,
    compacted: u64,
    /// Per origin worker, the newest epoch whose stream connected (only
    /// authenticated streams move it: the listener hands out no other).
    epochs: HashMap<usize, u64>,
    /// Refused connections, logged rate-limited.
    refusals: crate::refusals::RefusalLog,
    /// A failed fsync: the service stops (decision 47).
    fatal: Option<ReplicaError>,
}

/// One served connection.
struct Peer {
    conn: Connection,
    origin: usize,
    /// The epoch of the deployment whose worker streams (0: none given).
    epoch: u64,
    role: Role,
    /// Messages waiting for room in the send buffer.
    out: VecDeque<(Kind, Vec<u8>)>,
    seq: u64,
    /// Closing: delivering `out` and the send buffer, then waiting for
    /// the peer to close; the time bytes last moved (the connection is
    /// dropped after [`CLOSE_LINGER`] without any).
    closing: Option<Instant>,
    /// When the connection was accepted.
    accepted: Instant,
    /// Our side is shut down (closing, everything delivered).
    shut: bool,
}

impl Peer {
    fn is_backup(&self) -> bool {
        matches!(self.role, Role::Backup { .. })
    }
}

enum Role {
    Backup {
        asm: Reassembly,
        /// Instances whose current checkpoint was refused: their chunks
        /// are dropped until the next header chunk.
        refused: HashSet<String>,
    },
    /// A fetch: waiting for its request, then streaming.
    Fetch(Option<FetchStream>),
}

impl Server {
    /// One pass over the listener and every connection; whether anything
    /// happened.
    fn poll(&mut self) -> bool {
        #[cfg(test)]
        if PANIC_PORT.load(Ordering::Acquire) == self.listener.local_addr().port() {
            panic!("the test made this service panic");
        }
        let mut progress = self.compact();
        for _ in 0..ACCEPTS_PER_PASS {
            if self.peers.len() >= CONNECTIONS_MAX {
                break;
            }
            // Fencing: a worker's stream of an older epoch than one already
            // seen (a node declared failed that came back) is refused.
            let epochs = &self.epochs;
            let admit = |p: &spate_net::Peer| match parse_hello_name_epoch(&p.node) {
                Some((Purpose::Backup, origin, e)) if epochs.get(&origin).is_some_and(|&seen| e < seen) => {
                    Err(Rejection::UnknownNode)
                }
                Some(_) => Ok(()),
                None => Err(Rejection::UnknownNode),
            };
            match self.listener.poll_accept_with(admit) {
                Ok(Some(conn)) => {
                    progress = true;
                    if let Some((Purpose::Backup, origin, e)) = parse_hello_name_epoch(&conn.peer().node) {
                        let seen = self.epochs.entry(origin).or_insert(0);
                        if e > *seen {
                            *seen = e;
                            // The older epoch's streams of this worker end.
                            self.peers.retain(|p| !(p.origin == origin && p.epoch < e && p.is_backup()));
                        }
                    }
                    self.add(conn);
                }
                Ok(None) => break,
                // One peer's failed or refused handshake (it was told why),
                // or one failed accept: logged, and the listener goes on.
                Err(e) => {
                    let port = self.listener.local_addr().port();
                    if let Some(line) = self.refusals.refused(crate::time::now(), || {
                        format!("spate: replica service on port {port}: refused a connection: {e}")
                    }) {
                        eprintln!("{line}");
                    }
                }
            }
        }
        let mut i = 0;
        while i < self.peers.len() {
            match serve(&mut self.peers[i], &mut self.stores, &mut self.fatal) {
                Ok(p) => {
                    progress |= p;
                    i += 1;
                }
                Err(()) => {
                    self.peers.swap_remove(i);
                    progress = true;
                }
            }
        }
        progress
    }

    /// When the job completed a newer checkpoint: removes what restoring
    /// it never reads, and every [`COMPACT_EVERY`] checkpoints compacts the
    /// chains that end at it into one image.
    fn compact(&mut self) -> bool {
        let done = self.completed.load(Ordering::Acquire);
        if done <= self.retained {
            return false;
        }
        self.retained = done;
        let compact = done >= self.compacted + COMPACT_EVERY;
        if compact {
            self.compacted = done;
        }
        for (origin, store) in self.stores.iter_mut() {
            for instance in store.instances() {
                let ids = store.complete_checkpoints(&instance);
                if !ids.contains(&done) {
                    continue;
                }
                let res = store.retain_from(&instance, done).and_then(|_| {
                    if compact && ids.last() == Some(&done) {
                        store.compact(&instance).map(|_| ())
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = res {
                    // The chain stays as it was; the next round tries again.
                    eprintln!("spate: replica service: retention of `{instance}` of worker {origin}: {e}");
                }
            }
        }
        true
    }

    fn add(&mut self, conn: Connection) {
        // Admitted, so the name parses.
        let Some((purpose, origin)) = parse_hello_name(&conn.peer().node) else {
            return;
        };
        let role = match purpose {
            Purpose::Backup => Role::Backup { asm: Reassembly::default(), refused: HashSet::new() },
            Purpose::Fetch => Role::Fetch(None),
        };
        let epoch = parse_hello_name_epoch(&conn.peer().node).map_or(0, |(_, _, e)| e);
        let mut peer = Peer {
            conn,
            origin,
            epoch,
            role,
            out: VecDeque::new(),
            seq: 0,
            closing: None,
            accepted: Instant::now(),
            shut: false,
        };
        if let std::collections::hash_map::Entry::Vacant(v) = self.stores.entry(origin) {
            let dir = self.root.join(format!("w{origin}"));
            match BackupStore::open(&dir, self.durability) {
                Ok(s) => {
                    v.insert(s);
                }
                Err(e) => peer.fail(&ReplicaError::OpenStore { origin, source: Arc::new(e) }),
            }
        }
        self.peers.push(peer);
    }
}

impl Peer {
    /// Queues a connection error report (the message of `e`) and starts
    /// closing.
    fn fail(&mut self, e: &ReplicaError) {
        self.out.push_back((Kind::Report, encode_error("", 0, &e.to_string())));
        self.closing.get_or_insert_with(Instant::now);
    }

    /// Moves queued messages into the send buffer while there is room.
    fn flush_out(&mut self) -> Result<(), NetError> {
        while let Some((kind, payload)) = self.out.front() {
            if !self.conn.try_send_control(*kind, 0, self.seq, payload)? {
                break;
            }
            self.seq += 1;
            self.out.pop_front();
        }
        Ok(())
    }
}

/// Serves one connection for one pass: `Err(())` when it is to be dropped
/// (closed by the peer, failed, or closed by us).
fn serve(
    peer: &mut Peer,
    stores: &mut HashMap<usize, BackupStore>,
    fatal_store: &mut Option<ReplicaError>,
) -> Result<bool, ()> {
    if let Some(moved) = peer.closing {
        // Deliver what is queued, close our side, then drain the peer's
        // input until it closes too (closing a socket with unread input
        // would reset the connection and could lose our last message).
        peer.flush_out().map_err(drop)?;
        let mut progress = peer.conn.poll_io().map_err(drop)?;
        if !peer.shut && peer.out.is_empty() && peer.conn.unsent_bytes() == 0 {
            peer.shut = peer.conn.shutdown_write().map_err(drop)?;
        }
        progress |= peer.conn.poll_recv(usize::MAX, |_| Delivery::Consumed).map_err(drop)? > 0;
        if progress {
            peer.closing = Some(Instant::now());
        } else if moved.elapsed() > CLOSE_LINGER {
            return Err(());
        }
        return Ok(progress);
    }
    if matches!(peer.role, Role::Fetch(None)) && peer.accepted.elapsed() > FETCH_REQUEST_TIMEOUT {
        peer.fail(&ReplicaError::NoFetchRequest { timeout: FETCH_REQUEST_TIMEOUT });
        return Ok(true);
    }
    peer.flush_out().map_err(drop)?;
    let mut progress = peer.conn.poll_io().map_err(drop)?;
    // Take input only while the answers to earlier input are out:
    // backpressure on a peer that does not read its answers.
    if !peer.out.is_empty() {
        return Ok(progress);
    }
    let origin = peer.origin;
    let Some(store) = stores.get_mut(&origin) else {
        peer.fail(&ReplicaError::NoStore { origin });
        return Ok(true);
    };
    let mut fatal: Option<ReplicaError> = None;
    let Peer { conn, role, out, .. } = peer;
    let frames = match role {
        Role::Backup { asm, refused } => conn.poll_recv(FRAMES_PER_PASS, |f| {
            if fatal.is_some() {
                return Delivery::Consumed;
            }
            if f.header.kind != Kind::CheckpointChunk {
                fatal = Some(ReplicaError::UnexpectedFrame { kind: f.header.kind, on: Link::Backup });
                return Delivery::Consumed;
            }
            match parse_part(f.payload).and_then(|p| asm.push(p)) {
                Err(e) => fatal = Some(e),
                Ok(None) => {}
                Ok(Some((instance, chunk))) => {
                    if let Some(e) = store_chunk(store, refused, out, origin, instance, chunk) {
                        *fatal_store = Some(e);
                    }
                }
            }
            Delivery::Consumed
        }),
        Role::Fetch(stream) => conn.poll_recv(FRAMES_PER_PASS, |f| {
            if fatal.is_some() {
                return Delivery::Consumed;
            }
            fatal = match (f.header.kind, stream.is_some()) {
                (Kind::Recovery, false) => match parse_request(f.payload) {
                    Ok((o, _)) if o != origin as u64 => {
                        Some(ReplicaError::WrongOrigin { requested: o, origin })
                    }
                    Ok((_, id)) => match FetchStream::plan(store, origin, id) {
                        Ok(s) => {
                            *stream = Some(s);
                            None
                        }
                        Err(e) => Some(e),
                    },
                    Err(e) => Some(e),
                },
                (Kind::Recovery, true) => Some(ReplicaError::SecondRequest),
                (kind, _) => Some(ReplicaError::UnexpectedFrame { kind, on: Link::Fetch }),
            };
            Delivery::Consumed
        }),
    };
    let frames = frames.map_err(drop)?;
    progress |= frames > 0;
    if let Some(e) = fatal {
        peer.fail(&e);
        return Ok(true);
    }
    if let Role::Fetch(Some(stream)) = &mut peer.role {
        match stream.pump(&mut peer.conn, &*store, &mut peer.seq) {
            Ok((p, done)) => {
                progress |= p;
                if done {
                    peer.closing = Some(Instant::now());
                }
            }
            Err(Pumped::Net) => return Err(()),
            Err(Pumped::Store(e)) => peer.fail(&e),
        }
    }
    peer.flush_out().map_err(drop)?;
    if peer.conn.unsent_bytes() > 0 {
        progress |= peer.conn.poll_io().map_err(drop)?;
    }
    Ok(progress)
}

/// Hands one whole chunk of a backup stream to the store and queues the
/// answer (an ack, or the error); a failed fsync is returned, fatal to the
/// service.
fn store_chunk(
    store: &mut BackupStore,
    refused: &mut HashSet<String>,
    out: &mut VecDeque<(Kind, Vec<u8>)>,
    origin: usize,
    instance: &str,
    chunk: &[u8],
) -> Option<ReplicaError> {
    if refused.contains(instance) {
        let header = decode_chunk(chunk).is_ok_and(|(c, _)| c.kind == ChunkKind::Header);
        if !header {
            return None; // the rest of a refused checkpoint
        }
        refused.remove(instance);
    }
    match store.receive(instance, chunk) {
        Ok(None) => None,
        Ok(Some(ack)) => {
            out.push_back((Kind::Ack, encode_ack(&ack)));
            None
        }
        Err(e @ StateError::Io { op: "fsync", .. }) => {
            let e = ReplicaError::FsyncFailed {
                origin,
                instance: instance.into(),
                checkpoint: None,
                source: Arc::new(e),
            };
            out.push_back((Kind::Report, encode_error(instance, 0, &e.to_string())));
            Some(e)
        }
        Err(e) => {
            refused.insert(instance.to_string());
            let checkpoint = checkpoint_of(&e);
            let e = ReplicaError::StoreRefused { instance: instance.into(), checkpoint, source: Arc::new(e) };
            let message = e.to_string();
            out.push_back((Kind::Report, encode_error(instance, checkpoint.unwrap_or(0), &message)));
            None
        }
    }
}

/// The id of the checkpoint an error is about, where known.
fn checkpoint_of(e: &StateError) -> Option<u64> {
    match e {
        StateError::CorruptCheckpoint { checkpoint, .. } => Some(*checkpoint),
        _ => None,
    }
}
