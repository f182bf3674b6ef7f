//! The container store: every container's record (`<data-root>/containers/<id>/container.json`,
//! written atomically), its entry in memory (the record, its life for waiters, its locks), and
//! the names containers hold or creates have reserved.
//!
//! Owns: records and names. It must never run, stop or remove a container (the daemon's
//! lifecycle does, through lifecycled) or know HTTP: its errors are typed and become Docker's
//! status codes at the API's edge.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use engine_image::Digest;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::State;
use engine_docker_api::{ContainerConfig, HostConfig};

/// What engined keeps of a container (`<data-root>/containers/<id>/container.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    /// The image as the user named it.
    pub image: String,
    pub image_id: Digest,
    pub state: State,
    pub restart_count: u64,
    /// Set by an explicit stop: `unless-stopped` and `always` do not restart it.
    pub manually_stopped: bool,
    pub rootfs: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub lower: Vec<PathBuf>,
    /// The networks it goes on at start (the first is eth0), as configured.
    #[serde(default)]
    pub networks: Vec<NetworkLink>,
    /// The proxies of its published ports while it runs.
    #[serde(default)]
    pub ports: Vec<engine_network::ports::Proxy>,
    /// The anonymous volumes made for it (its Config's and its image's volumes no mount
    /// covered), as (volume name, path in the container); `rm -v` and `--rm` remove them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anonymous_volumes: Vec<(String, String)>,
    /// A build's step container: removed with its step, or at engined's next start (its build
    /// ended with the engined before).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub build_step: bool,
}

/// A container's configured place on a network (kept in its record): the first one of a
/// container is its eth0 and carries its default route.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetworkLink {
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
    /// The IPv6 address asked for (`--ip6`), of the network's IPv6 pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<Ipv6Addr>,
    /// Link-local addresses (`--link-local-ip`) added to its interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_local_ips: Vec<IpAddr>,
    /// The MAC address asked for (`--mac-address`); else one made of the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Links on this network (`name:alias`), answered by its DNS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// The endpoint's driver options, as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
}

/// A change of a container's life, for waiters.
#[derive(Clone, Debug, Default)]
pub struct Life {
    pub running: bool,
    /// Incremented at each exit.
    pub exits: u64,
    pub exit_code: i64,
    pub error: String,
    pub removed: bool,
    /// When its last start ended (the user's program running), for `container.run`.
    pub started_unix_nanos: u64,
}

/// A client waiting on a container whose trace the next exit joins: engined's work after the
/// exit goes under the wait's request span, and `done` is sent once it is recorded, so the
/// wait answers (and its span ends) after its children.
pub struct ExitWaiter {
    pub trace: Arc<crate::trace::Trace>,
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// A container in memory.
pub struct Entry {
    pub record: Mutex<ContainerRecord>,
    pub life: watch::Sender<Life>,
    /// Serialises start/stop/remove of one container.
    pub op: tokio::sync::Mutex<()>,
    /// Serialises its network's set-up, tear-down, connect and disconnect (an exit tears down
    /// without `op`, which a stop holds while it waits for that exit).
    pub net: tokio::sync::Mutex<()>,
    /// Attached output streams still being written: `--rm` waits for them, so the output
    /// of a short-lived container is not removed with it before the client has it.
    pub attached: std::sync::atomic::AtomicUsize,
    /// The wait the next exit reports to, if a client waits (the first one).
    pub exit_waiter: Mutex<Option<ExitWaiter>>,
}

impl Entry {
    fn new(record: ContainerRecord) -> Entry {
        let (life, _) = watch::channel(Life { running: record.state.running(), ..Default::default() });
        Entry {
            record: Mutex::new(record),
            life,
            op: tokio::sync::Mutex::new(()),
            net: Default::default(),
            attached: Default::default(),
            exit_waiter: Mutex::new(None),
        }
    }

    /// Makes `waiter` the one the next exit reports to, unless another client waits already;
    /// whether it was taken.
    pub fn wait_for_exit(&self, waiter: ExitWaiter) -> bool {
        let mut slot = self.exit_waiter.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(waiter);
        true
    }

    /// The waiter the exit reports to, taken by the exit.
    pub fn take_exit_waiter(&self) -> Option<ExitWaiter> {
        self.exit_waiter.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Takes back the waiter of `trace`'s wait, which ended without the exit taking it; whether
    /// it was still there.
    pub fn withdraw_exit_waiter(&self, trace: &Arc<crate::trace::Trace>) -> bool {
        let mut slot = self.exit_waiter.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|w| Arc::ptr_eq(&w.trace, trace)) {
            *slot = None;
            return true;
        }
        false
    }

    pub fn snapshot(&self) -> ContainerRecord {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the record in place (no copy, for the paths a snapshot would slow).
    pub fn read<T>(&self, f: impl FnOnce(&ContainerRecord) -> T) -> T {
        f(&self.record.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn update<T>(&self, f: impl FnOnce(&mut ContainerRecord) -> T) -> T {
        f(&mut self.record.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("No such container: {0}")]
    NotFound(String),
    #[error("multiple IDs found with provided prefix: {0}")]
    Ambiguous(String),
    /// The name as the message shows it ([`engine_util::name::shown`]) and why it was refused.
    #[error("Invalid container name ({0}), {1}")]
    InvalidName(String, engine_util::name::NameError),
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{by}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameInUse { name: String, by: String },
    #[error("Conflict. The container name \"/{0}\" is already in use")]
    NameReserved(String),
    #[error("container {id}: {source}")]
    Io { id: String, source: std::io::Error },
}

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, as Docker names containers, within the engine's length bound.
pub fn check_name(n: &str) -> Result<(), StoreError> {
    engine_util::name::check_name(n, 2).map_err(|why| StoreError::InvalidName(engine_util::name::shown(n), why))
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nifty", "proud", "quiet",
    "swift", "tender", "witty",
];
const NOUNS: &[&str] = &[
    "turing", "hopper", "lovelace", "ritchie", "thompson", "torvalds", "knuth", "dijkstra", "hamilton", "liskov",
    "kay", "backus", "perlman", "wirth", "lamport", "allen",
];

/// A name taken for a create in progress; given back when dropped.
pub struct NameReservation<'a> {
    store: &'a ContainerStore,
    pub name: String,
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        self.store.lock_creating().retain(|n| n != &self.name);
    }
}

/// What [`ContainerStore::open`] found on disk.
#[derive(Default)]
pub struct Loaded {
    /// Ids of creates that did not finish (a directory without a record): to be undone.
    pub unfinished: Vec<String>,
    /// Records that could not be read, and why (they are left as they are).
    pub unreadable: Vec<(PathBuf, String)>,
}

/// The records and names of all containers.
pub struct ContainerStore {
    dir: PathBuf,
    map: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Names being created (reserved before the record exists).
    creating: Mutex<Vec<String>>,
}

impl ContainerStore {
    /// Opens the store in `dir` (made if missing) and reads every record in it.
    pub fn open(dir: PathBuf) -> std::io::Result<(ContainerStore, Loaded)> {
        std::fs::create_dir_all(&dir)?;
        let store = ContainerStore { dir, map: Mutex::default(), creating: Mutex::default() };
        let mut loaded = Loaded::default();
        for ent in std::fs::read_dir(&store.dir)? {
            let cdir = ent?.path();
            let path = cdir.join("container.json");
            if !path.exists() {
                if let Some(id) = cdir.file_name().and_then(|n| n.to_str()) {
                    loaded.unfinished.push(id.to_string());
                }
                continue;
            }
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<ContainerRecord>(&b).map_err(|e| e.to_string()));
            match read {
                Ok(rec) => {
                    store.lock().insert(rec.id.clone(), Arc::new(Entry::new(rec)));
                }
                Err(why) => loaded.unreadable.push((path, why)),
            }
        }
        Ok((store, loaded))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_creating(&self) -> MutexGuard<'_, Vec<String>> {
        self.creating.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory of container `id` (its record, bundle and /etc files).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Looks a container up by full id, name (with or without '/'), or unique id prefix.
    pub fn find(&self, s: &str) -> Result<Arc<Entry>, StoreError> {
        let map = self.lock();
        if let Some(e) = map.get(s) {
            return Ok(e.clone());
        }
        let name = s.trim_start_matches('/');
        if let Some(e) = map.values().find(|e| e.snapshot().name == name) {
            return Ok(e.clone());
        }
        let matches: Vec<&Arc<Entry>> = if s.is_empty() {
            Vec::new()
        } else {
            map.iter().filter(|(id, _)| id.starts_with(s)).map(|(_, e)| e).collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::NotFound(s.to_string())),
            _ => Err(StoreError::Ambiguous(s.to_string())),
        }
    }

    pub fn all(&self) -> Vec<Arc<Entry>> {
        self.lock().values().cloned().collect()
    }

    /// Refuses `name` if a container has it or a create reserved it (call with both locks).
    fn check_free(map: &BTreeMap<String, Arc<Entry>>, creating: &[String], name: &str) -> Result<(), StoreError> {
        if let Some(other) = map.values().find(|e| e.snapshot().name == name) {
            return Err(StoreError::NameInUse { name: name.to_string(), by: other.snapshot().id });
        }
        if creating.iter().any(|n| n == name) {
            return Err(StoreError::NameReserved(name.to_string()));
        }
        Ok(())
    }

    /// Takes `name` for a create in progress: refused if it is not a valid name, or a container
    /// or another create has it.
    pub fn reserve(&self, name: &str) -> Result<NameReservation<'_>, StoreError> {
        let name = name.trim_start_matches('/');
        check_name(name)?;
        let map = self.lock();
        let mut creating = self.lock_creating();
        Self::check_free(&map, &creating, name)?;
        creating.push(name.to_string());
        Ok(NameReservation { store: self, name: name.to_string() })
    }

    /// Takes a generated name (`adjective_scientist`, as Docker's) no container or create has.
    pub fn reserve_generated(&self) -> NameReservation<'_> {
        let map = self.lock();
        let mut creating = self.lock_creating();
        let n = engine_util::id::random_hex(4).ok().and_then(|h| usize::from_str_radix(&h, 16).ok()).unwrap_or(0);
        let name = (0..)
            .map(|i| {
                let base = format!("{}_{}", ADJECTIVES[(n + i) % ADJECTIVES.len()], NOUNS[(n / 16 + i) % NOUNS.len()]);
                if i < 256 {
                    base
                } else {
                    format!("{base}{i}")
                }
            })
            .find(|candidate| Self::check_free(&map, &creating, candidate).is_ok())
            .unwrap_or_default(); // an unbounded search over distinct names always finds one
        creating.push(name.clone());
        NameReservation { store: self, name }
    }

    /// Writes `rec` and adds it (its name, reserved by `name`, becomes the container's).
    pub fn insert(&self, rec: ContainerRecord, name: NameReservation<'_>) -> Result<Arc<Entry>, StoreError> {
        debug_assert_eq!(rec.name, name.name);
        self.save(&rec)?;
        let entry = Arc::new(Entry::new(rec));
        let id = entry.snapshot().id;
        self.lock().insert(id, entry.clone());
        drop(name);
        Ok(entry)
    }

    /// Writes `rec` to its record, atomically.
    pub fn save(&self, rec: &ContainerRecord) -> Result<(), StoreError> {
        let io = |source| StoreError::Io { id: rec.id.clone(), source };
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| io(std::io::Error::other(e)))?;
        engine_util::fs::write_atomic(&self.dir(&rec.id).join("container.json"), &bytes).map_err(io)
    }

    /// Writes the entry's record as it is now.
    pub fn persist(&self, e: &Entry) -> Result<(), StoreError> {
        self.save(&e.snapshot())
    }

    /// Renames the container of `e` to `new`: refused if it is invalid or taken.
    pub fn rename(&self, e: &Entry, new: &str) -> Result<(), StoreError> {
        let new = new.trim_start_matches('/');
        check_name(new)?;
        {
            // checked and changed under both locks, as names are reserved
            let map = self.lock();
            let creating = self.lock_creating();
            Self::check_free(&map, &creating, new)?;
            e.update(|r| r.name = new.to_string());
        }
        self.persist(e)
    }

    /// Forgets container `id` and removes its directory.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        match std::fs::remove_dir_all(self.dir(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { id: id.to_string(), source }),
        }
        self.lock().remove(id);
        Ok(())
    }

    /// The directory a container being created makes its files in.
    pub fn make_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { id: id.to_string(), source })?;
        Ok(dir)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str) -> ContainerRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "created": "2026-01-01T00:00:00Z", "path": "true", "args": [],
            "config": {}, "host_config": {}, "image": "busybox",
            "image_id": format!("sha256:{}", "a".repeat(64)), "state": {}, "restart_count": 0,
            "manually_stopped": false, "rootfs": "/r", "upper": "/u", "work": "/w", "lower": [],
        }))
        .unwrap()
    }

    fn add(s: &ContainerStore, id: &str, name: &str) -> Arc<Entry> {
        s.make_dir(id).unwrap();
        let r = s.reserve(name).unwrap();
        s.insert(record(id, name), r).unwrap()
    }

    #[test]
    fn finds_by_id_name_and_unique_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ContainerStore::open(dir.path().join("containers")).unwrap();
        add(&s, "abc1", "web");
        add(&s, "abc2", "db");
        assert_eq!(s.find("abc1").unwrap().snapshot().name, "web");
        assert_eq!(s.find("/db").unwrap().snapshot().id, "abc2");
        assert_eq!(s.find("abc2").unwrap().snapshot().id, "abc2");
        assert!(matches!(s.find("abc"), Err(StoreError::Ambiguous(_))));
        assert!(matches!(s.find("zzz"), Err(StoreError::NotFound(_))));
        assert!(matches!(s.find(""), Err(StoreError::NotFound(_))));
        assert_eq!(s.all().len(), 2);
    }

    #[test]
    fn names_are_held_by_containers_and_by_creates_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = ContainerStore::open(dir.path().join("containers")).unwrap();
        let web = add(&s, "abc1", "web");
        assert!(matches!(s.reserve("web"), Err(StoreError::NameInUse { .. })));
        assert!(matches!(s.reserve("x"), Err(StoreError::InvalidName(..))));
        assert!(matches!(s.reserve("-bad"), Err(StoreError::InvalidName(..))));
        let pending = s.reserve("api").unwrap();
        assert!(matches!(s.reserve("api"), Err(StoreError::NameReserved(_))));
        assert!(matches!(s.rename(&web, "api"), Err(StoreError::NameReserved(_))));
        drop(pending); // the create failed: the name is free again
        s.rename(&web, "/api").unwrap();
        assert_eq!(s.find("api").unwrap().snapshot().id, "abc1");
        assert!(s.find("web").is_err());
        let generated: Vec<_> = (0..40).map(|_| s.reserve_generated()).collect();
        let mut names: Vec<&str> = generated.iter().map(|r| r.name.as_str()).collect();
        assert!(names.iter().all(|n| check_name(n).is_ok()));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 40, "generated names are distinct");
    }

    #[test]
    fn records_read_back_and_unfinished_creates_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("containers");
        {
            let (s, _) = ContainerStore::open(root.clone()).unwrap();
            let e = add(&s, "abc1", "web");
            e.update(|r| r.state.start(42, "2026-01-01T00:00:01Z".into()));
            s.persist(&e).unwrap();
            add(&s, "gone", "old");
            s.remove("gone").unwrap();
            assert!(!root.join("gone").exists());
        }
        std::fs::create_dir_all(root.join("half")).unwrap(); // a create that crashed
        std::fs::create_dir_all(root.join("torn")).unwrap();
        std::fs::write(root.join("torn/container.json"), "{\"id\": ").unwrap();
        let (s, loaded) = ContainerStore::open(root.clone()).unwrap();
        let rec = s.find("web").unwrap().snapshot();
        assert_eq!((rec.state.running(), rec.state.pid()), (true, 42));
        assert!(s.find("web").unwrap().life.borrow().running);
        assert_eq!(loaded.unfinished, ["half"]);
        assert_eq!(loaded.unreadable.len(), 1);
        assert_eq!(s.all().len(), 1);
    }
}
