//! A simulated node's environment ([`SimEnv`], the simulator's
//! [`Env`]): connections over the simulated network, shares whose workers
//! the world turns itself, fetches and backup streams to the other nodes'
//! simulated replica services (real [`BackupStore`]s in memory, which check
//! every chunk's crc as the real service does), and handoffs' parcels
//! between nodes over the simulated network (the production sans-IO
//! [`ParcelSender`] and [`ParcelReceiver`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate_net::hello::Rejection;
use spate_net::NetError;
use spate_state::{BackupStore, Durability, StateStore, StoreConfig};

use crate::checkpoint::{BackupLink, BackupLinkError, BackupNet, Backups};
use crate::config::RuntimeConfig;
use crate::control::env::{backup_dir, Build, Env, FetchRequest, ShipRequest};
use crate::control::error::FetchError;
use crate::replica::{Parcel, ParcelError, ParcelReceiver, ParcelSender};
use crate::runtime::{Job, Runtime, RuntimeError, ShareLinks, Worker};
use crate::sim::net::{self, NetRef, SimConn, SimConnecting};
use crate::time::virtual_clock;

/// Every node's replica service: per (node, origin worker), the
/// checkpoints other nodes streamed there; and which replica address is
/// which node's, while it lives.
#[derive(Default)]
pub(crate) struct Replicas {
    pub(crate) stores: BTreeMap<(usize, usize), BackupStore>,
    pub(crate) by_addr: BTreeMap<SocketAddr, usize>,
}

/// What the world shares with every node's environment.
pub(crate) struct Shared {
    pub(crate) net: NetRef,
    /// Workers of shares started since the world last looked, by node.
    pub(crate) started: RefCell<Vec<(usize, Worker<SimConn>)>>,
    pub(crate) replicas: Arc<Mutex<Replicas>>,
    /// How long a fetch of checkpoint parts takes, in ns.
    pub(crate) fetch_ns: u64,
    /// Every line a node logged, with the node (kept when verbose).
    pub(crate) log: RefCell<Vec<String>>,
    pub(crate) verbose: bool,
}

/// One node's environment (see the module documentation).
pub(crate) struct SimEnv {
    pub(crate) node: usize,
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) shared: Rc<Shared>,
}

/// A handoff's parcel on its way to another node: the production
/// [`ParcelSender`] once its connection is up.
pub(crate) enum SimShip {
    Connecting { c: SimConnecting, operator: String, store: Option<Box<StateStore>>, timeout: Duration },
    Sending(Box<ParcelSender<SimConn>>),
}

/// A fetch under way: done at `at`.
pub(crate) struct SimFetch {
    request: FetchRequest,
    at: u64,
}

impl Env for SimEnv {
    type Conn = SimConn;
    type Connecting = SimConnecting;
    type Fetch = SimFetch;
    type Ship = SimShip;
    type Take = ParcelReceiver<SimConn>;

    fn connect(
        &mut self,
        addr: SocketAddr,
        name: String,
        _cluster: u64,
        _deadline: Instant,
    ) -> Result<SimConnecting, NetError> {
        Ok(net::connect(&self.shared.net, self.node, self.addr, addr, name, crate::limits::NET_CREDIT_WINDOW))
    }

    fn poll_connecting(&mut self, c: &mut SimConnecting) -> Result<Option<SimConn>, NetError> {
        c.poll()
    }

    fn poll_accept(
        &mut self,
        admit: &mut dyn FnMut(&str) -> Result<(), Rejection>,
    ) -> Result<Option<SimConn>, NetError> {
        Ok(net::accept(&self.shared.net, self.addr, &self.name, admit))
    }

    fn start_share(
        &mut self,
        query: &str,
        build: Build,
        rc: RuntimeConfig,
        share: ShareLinks<SimConn>,
    ) -> Result<Job<SimConn>, RuntimeError> {
        let (job, workers) = Runtime::new(rc).start_driven(query, build, share)?;
        let mut started = self.shared.started.borrow_mut();
        for w in workers {
            started.push((self.node, w));
        }
        Ok(job)
    }

    fn begin_fetch(&mut self, request: FetchRequest) -> SimFetch {
        let at = virtual_clock::ns().unwrap_or(0) + self.shared.fetch_ns;
        SimFetch { request, at }
    }

    fn poll_fetch(&mut self, f: &mut SimFetch) -> Option<Result<(), FetchError>> {
        if virtual_clock::ns().unwrap_or(0) < f.at {
            return None;
        }
        Some(self.fetch(&f.request).map_err(|e| FetchError::Other(e.into())))
    }

    fn begin_ship(&mut self, r: ShipRequest) -> SimShip {
        let c = net::connect(
            &self.shared.net,
            self.node,
            self.addr,
            r.addr,
            r.hello,
            crate::limits::NET_CREDIT_WINDOW,
        );
        SimShip::Connecting { c, operator: r.operator, store: Some(Box::new(r.store)), timeout: r.timeout }
    }

    fn poll_ship(&mut self, s: &mut SimShip) -> Option<Result<u64, ParcelError>> {
        if let SimShip::Connecting { c, operator, store, timeout } = s {
            let conn = match c.poll() {
                Ok(None) => return None,
                Ok(Some(conn)) => conn,
                Err(e) => return Some(Err(ParcelError::Replica(crate::replica::ReplicaError::lost(e)))),
            };
            let store = store.take()?;
            match ParcelSender::new(conn, operator, *store, *timeout) {
                Ok(sender) => *s = SimShip::Sending(Box::new(sender)),
                Err(e) => return Some(Err(e)),
            }
        }
        match s {
            SimShip::Sending(sender) => sender.poll(),
            SimShip::Connecting { .. } => None,
        }
    }

    fn begin_take(
        &mut self,
        conn: SimConn,
        config: StoreConfig,
        timeout: Duration,
    ) -> ParcelReceiver<SimConn> {
        ParcelReceiver::new(conn, config, timeout)
    }

    fn poll_take(&mut self, t: &mut ParcelReceiver<SimConn>) -> Option<Result<Parcel, ParcelError>> {
        t.poll()
    }

    fn backups(&self) -> Option<BackupNet> {
        Some(BackupNet(Arc::new(SimBackups { replicas: self.shared.replicas.clone() })))
    }

    fn log(&mut self, line: &str) {
        if self.shared.verbose {
            self.shared.log.borrow_mut().push(format!("[{}] {line}", self.name));
        }
    }
}

impl SimEnv {
    /// Copies each part's chain from its holder's replica store into this
    /// node's backup store of that worker, as the fetch protocol does.
    fn fetch(&self, r: &FetchRequest) -> Result<(), String> {
        let replicas = self.shared.replicas.lock().map_err(|_| "the replica stores' lock is poisoned")?;
        for &(w, addr) in &r.parts {
            let holder = *replicas.by_addr.get(&addr).ok_or_else(|| {
                format!("fetching checkpoint {} of worker {w} from {addr}: connection refused", r.checkpoint)
            })?;
            let from = replicas
                .stores
                .get(&(holder, w))
                .ok_or_else(|| format!("{addr} holds nothing of worker {w}"))?;
            let dir = backup_dir(&r.data_dir, &r.query, w);
            let _ = std::fs::remove_dir_all(&dir);
            let mut to = BackupStore::open(&dir, Durability::PageCache)
                .map_err(|e| format!("cannot open the backup store in {}: {e}", dir.display()))?;
            for instance in from.instances() {
                let chain = from.chain(&instance, r.checkpoint).map_err(|e| {
                    format!("fetching checkpoint {} of `{instance}` from {addr}: {e}", r.checkpoint)
                })?;
                for id in chain {
                    let bytes = from.read(&instance, id).map_err(|e| e.to_string())?;
                    let mut rest: &[u8] = &bytes;
                    while !rest.is_empty() {
                        let (_, n) = spate_state::checkpoint::decode_chunk(rest)?;
                        to.receive(&instance, &rest[..n]).map_err(|e| e.to_string())?;
                        rest = &rest[n..];
                    }
                }
            }
        }
        Ok(())
    }
}

/// Backup streams into the simulated replica services.
struct SimBackups {
    replicas: Arc<Mutex<Replicas>>,
}

impl Backups for SimBackups {
    fn connect(
        &self,
        target: SocketAddr,
        _cluster: u64,
        worker: usize,
        _epoch: u64,
    ) -> Result<Box<dyn BackupLink>, BackupLinkError> {
        let r = self.replicas.lock().map_err(|_| "poisoned")?;
        let node = *r.by_addr.get(&target).ok_or("connection refused")?;
        Ok(Box::new(SimBackupLink { replicas: self.replicas.clone(), node, target, worker }))
    }
}

struct SimBackupLink {
    replicas: Arc<Mutex<Replicas>>,
    node: usize,
    target: SocketAddr,
    worker: usize,
}

impl SimBackupLink {
    fn store<R>(&self, f: impl FnOnce(&mut BackupStore) -> Result<R, String>) -> Result<R, String> {
        let mut r = self.replicas.lock().map_err(|_| "poisoned")?;
        if r.by_addr.get(&self.target) != Some(&self.node) {
            return Err("the backup node is gone".into());
        }
        let store = match r.stores.entry((self.node, self.worker)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(BackupStore::open("/nonexistent", Durability::Memory).map_err(|e| e.to_string())?)
            }
        };
        f(store)
    }
}

impl BackupLink for SimBackupLink {
    fn send_chunk(&mut self, instance: &str, chunk: &[u8]) -> Result<(), BackupLinkError> {
        Ok(self.store(|s| s.receive(instance, chunk).map(|_| ()).map_err(|e| e.to_string()))?)
    }

    fn wait_ack(&mut self, instance: &str, id: u64) -> Result<(), BackupLinkError> {
        Ok(self.store(|s| {
            if s.complete_checkpoints(instance).contains(&id) {
                Ok(())
            } else {
                Err(format!("checkpoint {id} of `{instance}` is not stored whole"))
            }
        })?)
    }
}
