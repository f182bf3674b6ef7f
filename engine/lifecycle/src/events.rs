//! The event journal: every event is appended to `events.jsonl` in the state directory before
//! it is broadcast, with a sequence number, so a subscriber can replay what it missed (`since`)
//! and an exit is published exactly once across restarts.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use engine_api::v1::Event;
use tokio::sync::broadcast;

/// Appends, numbers and broadcasts events.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<JournalInner>,
    live: broadcast::Sender<Event>,
}

struct JournalInner {
    file: File,
    next: u64,
    /// (container id, pid) of every exit already published
    exits: HashSet<(String, u32)>,
}

fn to_json(e: &Event) -> String {
    serde_json::json!({
        "sequence": e.sequence, "topic": e.topic, "container_id": e.container_id, "exec_id": e.exec_id,
        "pid": e.pid, "exit_status": e.exit_status, "reason": e.reason, "time_unix_nanos": e.time_unix_nanos,
    })
    .to_string()
}

fn from_json(line: &str) -> Option<Event> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let n = |k: &str| v[k].as_u64().unwrap_or_default();
    Some(Event {
        sequence: n("sequence"),
        topic: s("topic"),
        container_id: s("container_id"),
        exec_id: s("exec_id"),
        pid: n("pid") as u32,
        exit_status: n("exit_status") as u32,
        reason: s("reason"),
        time_unix_nanos: v["time_unix_nanos"].as_i64().unwrap_or_default(),
    })
}

/// Whether `e` passes a subscription's filters.
pub fn matches(e: &Event, topics: &[String], container_id: &str) -> bool {
    (topics.is_empty() || topics.iter().any(|t| e.topic.starts_with(t.as_str())))
        && (container_id.is_empty() || e.container_id == container_id)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, continuing its numbering.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        let path = dir.join("events.jsonl");
        let mut next = 1;
        let mut exits = HashSet::new();
        for e in Self::read(&path) {
            next = next.max(e.sequence + 1);
            if e.topic == "/tasks/exit" && e.exec_id.is_empty() {
                exits.insert((e.container_id.clone(), e.pid));
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let (live, _) = broadcast::channel(1024);
        Ok(Journal { path, inner: Mutex::new(JournalInner { file, next, exits }), live })
    }

    fn read(path: &Path) -> Vec<Event> {
        std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(from_json).collect()
    }

    /// Appends and broadcasts `e` (its sequence is assigned here). A container's exit (by pid)
    /// is published once: a repeat is dropped and `false` returned.
    pub fn publish(&self, mut e: Event) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if e.topic == "/tasks/exit" && e.exec_id.is_empty() && !inner.exits.insert((e.container_id.clone(), e.pid)) {
            return false;
        }
        e.sequence = inner.next;
        inner.next += 1;
        if e.time_unix_nanos == 0 {
            e.time_unix_nanos = engine_telemetry::recorder::now_unix_nanos() as i64;
        }
        let mut line = to_json(&e);
        line.push('\n');
        // One write per line: a crash of this process leaves whole lines behind, and the page
        // cache keeps them. No fsync: the journal lives in the runtime state directory (tmpfs
        // by default), which a reboot clears together with the containers it describes.
        let _ = inner.file.write_all(line.as_bytes());
        let _ = self.live.send(e);
        true
    }

    /// Whether the exit of `container_id`'s process `pid` was published.
    pub fn exit_published(&self, container_id: &str, pid: u32) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).exits.contains(&(container_id.to_string(), pid))
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Journaled events with a sequence of at least `since`.
    pub fn replay(&self, since: u64) -> Vec<Event> {
        Self::read(&self.path).into_iter().filter(|e| e.sequence >= since).collect()
    }
}
