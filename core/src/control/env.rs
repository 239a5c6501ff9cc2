//! The environment a node runs in ([`Env`]): its listener and outgoing
//! connections, how a share's workers are started, and how checkpoint
//! parts are fetched from backup nodes. Production is [`Os`] — real
//! sockets (`spate_net`), one pinned thread per worker, fetches over TCP
//! from the replica services; the simulator (`crate::sim`) has its own,
//! so that it runs the same [`super::Node`], coordinator, agent and
//! workers over a simulated network and clock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spate_net::hello::Rejection;
use spate_net::{Connecting, Connection, Listener, NetError};

use crate::checkpoint::BackupNet;
use crate::config::RuntimeConfig;
use crate::control::error::FetchError;
use crate::dataflow::Dataflow;
use crate::link::{net_config, Conn};
use crate::replica::{Parcel, ParcelError};
use crate::runtime::{Job, Runtime, RuntimeError, ShareLinks};
use spate_state::{StateStore, StoreConfig};

/// A dataflow's build function, run once on every worker.
pub type Build = Arc<dyn Fn(&Dataflow) + Send + Sync>;

/// Where a node's connections, workers and fetches come from (see the
/// module documentation). Every method returns at once.
pub trait Env {
    /// A connection (a worker link or a control connection).
    type Conn: Conn;
    /// An outgoing connection being set up.
    type Connecting;
    /// A fetch of checkpoint parts in progress.
    type Fetch;
    /// A handoff's parcel on its way to another node.
    type Ship;
    /// A handoff's parcel arriving from another node.
    type Take;

    /// Starts connecting to the listener at `addr`, announcing `name`.
    fn connect(
        &mut self,
        addr: SocketAddr,
        name: String,
        cluster: u64,
        deadline: Instant,
    ) -> Result<Self::Connecting, NetError>;

    /// The connection, once its handshake is through.
    fn poll_connecting(&mut self, c: &mut Self::Connecting) -> Result<Option<Self::Conn>, NetError>;

    /// One connection to this node's listener whose hello `admit` took
    /// (`admit` gets the peer's node name), if one is ready.
    fn poll_accept(
        &mut self,
        admit: &mut dyn FnMut(&str) -> Result<(), Rejection>,
    ) -> Result<Option<Self::Conn>, NetError>;

    /// Starts a share of `query` whose links are up.
    fn start_share(
        &mut self,
        query: &str,
        build: Build,
        rc: RuntimeConfig,
        share: ShareLinks<Self::Conn>,
    ) -> Result<Job<Self::Conn>, RuntimeError>;

    /// Starts fetching checkpoint `checkpoint` of each `(worker, replica
    /// service)` of `parts` into this node's backup store of that worker
    /// (under `data_dir/query/backup/w<worker>`).
    fn begin_fetch(&mut self, request: FetchRequest) -> Self::Fetch;

    /// The fetch's outcome, once every part is in (or one failed).
    fn poll_fetch(&mut self, f: &mut Self::Fetch) -> Option<Result<(), FetchError>>;

    /// Starts sending a handoff's parcel to another node (see
    /// [`crate::replica::send_parcel`]).
    fn begin_ship(&mut self, request: ShipRequest) -> Self::Ship;

    /// The bytes sent, once the receiver acknowledged the parcel (or the
    /// send failed).
    fn poll_ship(&mut self, s: &mut Self::Ship) -> Option<Result<u64, ParcelError>>;

    /// Starts receiving a parcel on `conn`, a connection announcing
    /// [`crate::replica::parcel_hello_name`], into a store made with
    /// `config` (see [`crate::replica::receive_parcel`]).
    fn begin_take(&mut self, conn: Self::Conn, config: StoreConfig, timeout: Duration) -> Self::Take;

    /// The parcel, once whole and rebuilt (or why not).
    fn poll_take(&mut self, t: &mut Self::Take) -> Option<Result<Parcel, ParcelError>>;

    /// How this node's workers stream their checkpoints to backup nodes
    /// (`None`: over TCP to their replica services).
    fn backups(&self) -> Option<BackupNet> {
        None
    }

    /// A line for the node's log.
    fn log(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

/// What to fetch before a share restores (see [`Env::begin_fetch`]).
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The query (the dataflow's name).
    pub query: String,
    /// The job's id on the wire.
    pub cluster: u64,
    /// The checkpoint.
    pub checkpoint: u64,
    /// `(worker, replica service)` to fetch from.
    pub parts: Vec<(usize, SocketAddr)>,
    /// How long one fetch may take to connect.
    pub timeout: Duration,
    /// No progress lines.
    pub quiet: bool,
    /// The node, for messages.
    pub node: String,
}

/// A handoff's parcel to send (see [`Env::begin_ship`]).
pub struct ShipRequest {
    /// The target node's listener.
    pub addr: SocketAddr,
    /// The job's id on the wire.
    pub cluster: u64,
    /// The connection's hello name ([`crate::replica::parcel_hello_name`]).
    pub hello: String,
    /// The keyed operator whose bins these are.
    pub operator: String,
    /// The bins' store, split off.
    pub store: StateStore,
    /// How long connecting and each wait may take.
    pub timeout: Duration,
}

/// The backup store directory of worker `w` under `data_dir` for `query`.
pub fn backup_dir(data_dir: &Path, query: &str, w: usize) -> PathBuf {
    data_dir.join(query).join("backup").join(format!("w{w}"))
}

/// The operating system: real sockets, threads, files (see the module
/// documentation).
pub struct Os {
    listener: Listener,
}

impl Os {
    /// The environment of a node listening on `listener`.
    pub fn new(listener: Listener) -> Self {
        Self { listener }
    }
}

/// A parcel sent or received on a thread of its own.
pub struct OsParcel<T>(Option<JoinHandle<Result<T, ParcelError>>>);

impl<T> OsParcel<T> {
    fn poll(&mut self) -> Option<Result<T, ParcelError>> {
        if !self.0.as_ref().is_none_or(JoinHandle::is_finished) {
            return None;
        }
        match self.0.take()?.join() {
            Ok(r) => Some(r),
            Err(_) => Some(Err(ParcelError::Panicked)),
        }
    }
}

/// A fetch on threads, one per part.
pub struct OsFetch {
    threads: Vec<JoinHandle<Result<(), FetchError>>>,
}

impl Env for Os {
    type Conn = Connection;
    type Connecting = Connecting;
    type Fetch = OsFetch;
    type Ship = OsParcel<u64>;
    type Take = OsParcel<Parcel>;

    fn connect(
        &mut self,
        addr: SocketAddr,
        name: String,
        cluster: u64,
        deadline: Instant,
    ) -> Result<Connecting, NetError> {
        Connection::connect(addr, &net_config(name, cluster), deadline)
    }

    fn poll_connecting(&mut self, c: &mut Connecting) -> Result<Option<Connection>, NetError> {
        c.poll()
    }

    fn poll_accept(
        &mut self,
        admit: &mut dyn FnMut(&str) -> Result<(), Rejection>,
    ) -> Result<Option<Connection>, NetError> {
        self.listener.poll_accept_with(|peer| admit(&peer.node))
    }

    fn start_share(
        &mut self,
        query: &str,
        build: Build,
        rc: RuntimeConfig,
        share: ShareLinks<Connection>,
    ) -> Result<Job, RuntimeError> {
        Runtime::new(rc).start_share(query, build, share)
    }

    fn begin_fetch(&mut self, r: FetchRequest) -> OsFetch {
        let threads = r
            .parts
            .iter()
            .map(|&(w, addr)| {
                let r = r.clone();
                std::thread::spawn(move || fetch_one(&r, w, addr))
            })
            .collect();
        OsFetch { threads }
    }

    fn poll_fetch(&mut self, f: &mut OsFetch) -> Option<Result<(), FetchError>> {
        if !f.threads.iter().all(JoinHandle::is_finished) {
            return None;
        }
        for h in f.threads.drain(..) {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Some(Err(e)),
                Err(_) => return Some(Err(FetchError::Panicked)),
            }
        }
        Some(Ok(()))
    }

    fn begin_ship(&mut self, r: ShipRequest) -> OsParcel<u64> {
        OsParcel(Some(std::thread::spawn(move || {
            crate::replica::send_parcel(r.addr, r.cluster, r.hello, &r.operator, r.store, r.timeout)
        })))
    }

    fn poll_ship(&mut self, s: &mut OsParcel<u64>) -> Option<Result<u64, ParcelError>> {
        s.poll()
    }

    fn begin_take(&mut self, conn: Connection, config: StoreConfig, timeout: Duration) -> OsParcel<Parcel> {
        OsParcel(Some(std::thread::spawn(move || crate::replica::receive_parcel(conn, config, timeout))))
    }

    fn poll_take(&mut self, t: &mut OsParcel<Parcel>) -> Option<Result<Parcel, ParcelError>> {
        t.poll()
    }
}

/// Fetches worker `w`'s part of `r.checkpoint` from the replica service at
/// `addr` into this node's backup store of `w`.
fn fetch_one(r: &FetchRequest, w: usize, addr: SocketAddr) -> Result<(), FetchError> {
    let t = Instant::now();
    let dir = backup_dir(&r.data_dir, &r.query, w);
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = spate_state::BackupStore::open(&dir, spate_state::Durability::PageCache)
        .map_err(|source| FetchError::OpenBackup { path: dir.clone(), source })?;
    let got = crate::replica::fetch(addr, r.cluster, w, r.checkpoint, &mut store, r.timeout)
        .map_err(|source| FetchError::Part { checkpoint: r.checkpoint, worker: w, addr, source })?;
    if !r.quiet {
        eprintln!(
            "node {}: fetched checkpoint {} of worker {w} from {addr} ({got:?}) in {} ms",
            r.node,
            r.checkpoint,
            t.elapsed().as_millis()
        );
    }
    Ok(())
}
