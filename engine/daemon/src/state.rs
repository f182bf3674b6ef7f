//! A container's state: one [`Status`] and the facts of its last run, changed only through the
//! transitions below, so the status and Docker's flags (`Running`, `Paused`, `Restarting`,
//! `Dead`) can never disagree: the flags are derived from the status when the state is written
//! (to the record and to `GET /containers/{id}/json`), and ignored when it is read back.

use serde::{Deserialize, Serialize};

/// `"0001-01-01T00:00:00Z"`: Go's zero time, as Docker shows a time that has not happened.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Docker's container statuses (`State.Status`, `ps --filter status=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, never started.
    #[default]
    Created,
    Running,
    Paused,
    /// Exited, and a restart policy will start it again after its backoff.
    Restarting,
    /// Being removed.
    Removing,
    Exited,
    Dead,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Created,
        Status::Running,
        Status::Paused,
        Status::Restarting,
        Status::Removing,
        Status::Exited,
        Status::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A health check's verdict (`State.Health.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Started, no check has passed yet.
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One check's outcome (an entry of `State.Health.Log`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthResult {
    pub start: String,
    pub end: String,
    pub exit_code: i64,
    pub output: String,
}

/// `State.Health`: the verdict, the failures in a row, and the last checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: i64,
    pub log: Vec<HealthResult>,
}

/// The checks `State.Health.Log` keeps, as dockerd.
pub const HEALTH_LOG_ENTRIES: usize = 5;

/// `State` of `GET /containers/{id}/json`, as engined keeps it in the container's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "Wire", into = "Wire")]
pub struct State {
    status: Status,
    health: Option<Health>,
    oom_killed: bool,
    pid: u32,
    exit_code: i64,
    error: String,
    started_at: String,
    finished_at: String,
}

impl Default for State {
    fn default() -> Self {
        State {
            status: Status::Created,
            health: None,
            oom_killed: false,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
        }
    }
}

impl State {
    // ---- reading ------------------------------------------------------------------------

    pub fn status(&self) -> Status {
        self.status
    }
    /// Its process runs (paused or not).
    pub fn running(&self) -> bool {
        matches!(self.status, Status::Running | Status::Paused)
    }
    pub fn paused(&self) -> bool {
        self.status == Status::Paused
    }
    pub fn restarting(&self) -> bool {
        self.status == Status::Restarting
    }
    pub fn removing(&self) -> bool {
        self.status == Status::Removing
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }
    pub fn exit_code(&self) -> i64 {
        self.exit_code
    }
    pub fn error(&self) -> &str {
        &self.error
    }
    pub fn oom_killed(&self) -> bool {
        self.oom_killed
    }
    pub fn started_at(&self) -> &str {
        &self.started_at
    }
    pub fn finished_at(&self) -> &str {
        &self.finished_at
    }
    /// Has run and ended (not restarting).
    pub fn exited(&self) -> bool {
        self.status == Status::Exited
    }
    /// Its health, if it has a health check.
    pub fn health(&self) -> Option<&Health> {
        self.health.as_ref()
    }

    // ---- transitions ----------------------------------------------------------------------

    /// Its process started (pid) at `now`: the error and exit of an earlier run are cleared.
    pub fn start(&mut self, pid: u32, now: String) {
        self.status = Status::Running;
        self.pid = pid;
        self.started_at = now;
        self.exit_code = 0;
        self.error.clear();
        self.oom_killed = false;
    }

    /// Its health checks begin (at a start): no check has passed yet; the log of earlier
    /// runs is kept, as dockerd keeps it.
    pub fn health_starting(&mut self) {
        let log = self.health.take().map(|h| h.log).unwrap_or_default();
        self.health = Some(Health { status: HealthStatus::Starting, failing_streak: 0, log });
    }

    /// One check's `result`, as dockerd judges it: a pass makes it healthy; a failure counts
    /// (unless it is still starting within its start period) and `retries` failures in a row
    /// make it unhealthy. Returns the new status when it changed.
    pub fn health_checked(
        &mut self,
        result: HealthResult,
        retries: i64,
        in_start_period: bool,
    ) -> Option<HealthStatus> {
        let h =
            self.health.get_or_insert(Health { status: HealthStatus::Starting, failing_streak: 0, log: Vec::new() });
        let before = h.status;
        let passed = result.exit_code == 0;
        h.log.push(result);
        if h.log.len() > HEALTH_LOG_ENTRIES {
            h.log.remove(0);
        }
        if passed {
            h.failing_streak = 0;
            h.status = HealthStatus::Healthy;
        } else if !(before == HealthStatus::Starting && in_start_period) {
            h.failing_streak += 1;
            if h.failing_streak >= retries {
                h.status = HealthStatus::Unhealthy;
            }
        }
        (h.status != before).then_some(h.status)
    }

    /// A start failed: the reason and the exit code dockerd gives it; the status stays.
    pub fn start_failed(&mut self, error: String, exit_code: i64) {
        self.error = error;
        self.exit_code = exit_code;
    }

    /// Its process ended at `now`.
    pub fn exit(&mut self, exit_code: i64, oom_killed: bool, error: String, now: String) {
        self.health_stopped();
        self.status = Status::Exited;
        self.pid = 0;
        self.exit_code = exit_code;
        self.oom_killed = oom_killed;
        self.error = error;
        self.finished_at = now;
    }

    /// Its processes were frozen (`pause`): only a running container pauses.
    pub fn pause(&mut self) {
        if self.status == Status::Running {
            self.status = Status::Paused;
            self.health_stopped();
        }
    }

    /// Its checks stop (paused, or exited): unhealthy, as dockerd reports it then.
    fn health_stopped(&mut self) {
        if let Some(h) = self.health.as_mut() {
            h.status = HealthStatus::Unhealthy;
        }
    }

    /// Its processes were thawed (`unpause`, or a kill of a paused container, which thaws it so
    /// the signal is delivered).
    pub fn unpause(&mut self) {
        if self.status == Status::Paused {
            self.status = Status::Running;
            if self.health.is_some() {
                self.health_starting(); // its checks begin again
            }
        }
    }

    /// After an exit: a restart policy will start it again.
    pub fn restart_pending(&mut self) {
        if self.status == Status::Exited {
            self.status = Status::Restarting;
        }
    }

    /// A pending restart is called off (a stop, a removal, or the restart itself failed): it
    /// stays exited.
    pub fn cancel_restart(&mut self) {
        if self.status == Status::Restarting {
            self.status = Status::Exited;
        }
    }

    /// Its removal began (it does not run: a running container is stopped first). A pending
    /// restart is called off.
    pub fn begin_removal(&mut self) {
        if !self.running() {
            self.status = Status::Removing;
        }
    }

    /// Its removal failed: it is what it was before, created or exited.
    pub fn removal_failed(&mut self) {
        if self.status == Status::Removing {
            self.status = if self.started_at == ZERO_TIME { Status::Created } else { Status::Exited };
        }
    }
}

/// How a state is written and read: Docker's fields, the flags derived from the status.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Wire {
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<Health>,
    running: bool,
    paused: bool,
    restarting: bool,
    #[serde(rename = "OOMKilled")]
    oom_killed: bool,
    dead: bool,
    pid: u32,
    exit_code: i64,
    error: String,
    started_at: String,
    finished_at: String,
}

impl Default for Wire {
    fn default() -> Self {
        State::default().into()
    }
}

impl From<State> for Wire {
    fn from(s: State) -> Wire {
        Wire {
            running: s.running(),
            paused: s.paused(),
            restarting: s.restarting(),
            dead: s.status == Status::Dead,
            status: s.status,
            health: s.health,
            oom_killed: s.oom_killed,
            pid: s.pid,
            exit_code: s.exit_code,
            error: s.error,
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }
}

impl From<Wire> for State {
    fn from(w: Wire) -> State {
        // Records of earlier versions marked a removal in progress with `Dead` alone.
        let status = if w.dead && w.status != Status::Dead { Status::Removing } else { w.status };
        State {
            status,
            health: w.health,
            oom_killed: w.oom_killed,
            pid: w.pid,
            exit_code: w.exit_code,
            error: w.error,
            started_at: w.started_at,
            finished_at: w.finished_at,
        }
    }
}

/// The exit code dockerd gives a process that could not be started, from the runtime's reason
/// (in runc's words): 127 when the program or a path is not there, 126 when it cannot be run.
pub fn start_failure_code(reason: &str) -> Option<i64> {
    if reason.contains("executable file not found") || reason.contains("no such file or directory") {
        Some(127)
    } else if reason.contains("permission denied") || reason.contains("is a directory") {
        Some(126)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_follow_the_status_through_a_life() {
        let mut s = State::default();
        assert_eq!((s.status(), s.running(), s.started_at()), (Status::Created, false, ZERO_TIME));
        s.start_failed("exec: \"x\": executable file not found in $PATH".into(), 127);
        assert_eq!((s.status(), s.exit_code()), (Status::Created, 127));
        s.start(42, "2026-01-01T00:00:00.000000000Z".into());
        assert!(s.running() && s.error().is_empty() && s.exit_code() == 0 && s.pid() == 42);
        s.exit(137, true, String::new(), "2026-01-01T00:00:01.000000000Z".into());
        assert!(s.exited() && !s.running() && s.oom_killed() && s.pid() == 0);
        s.restart_pending();
        assert!(s.restarting() && !s.running());
        s.cancel_restart();
        assert!(s.exited());
        s.restart_pending();
        s.begin_removal();
        assert!(s.removing() && !s.restarting());
        s.removal_failed();
        assert_eq!(s.status(), Status::Exited);
        // a running container is never marked for removal
        let mut r = State::default();
        r.start(1, "t".into());
        r.begin_removal();
        assert!(r.running());
    }

    #[test]
    fn only_a_running_container_pauses_and_a_paused_one_exits() {
        let mut s = State::default();
        s.pause();
        assert_eq!(s.status(), Status::Created, "a created container does not pause");
        s.start(9, "t".into());
        s.pause();
        assert!(s.paused() && s.running());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            (v["Status"].as_str(), v["Running"].as_bool(), v["Paused"].as_bool()),
            (Some("paused"), Some(true), Some(true))
        );
        s.unpause();
        assert!(!s.paused() && s.running());
        s.pause();
        s.exit(137, false, String::new(), "u".into());
        assert!(s.exited() && !s.paused());
        s.unpause();
        assert!(s.exited(), "an exited container does not come back by an unpause");
    }

    #[test]
    fn health_is_judged_as_dockerd_judges_it() {
        let result =
            |code: i64| HealthResult { start: "s".into(), end: "e".into(), exit_code: code, output: String::new() };
        let mut s = State::default();
        assert!(serde_json::to_value(&s).unwrap().get("Health").is_none(), "no check, no Health");
        s.start(1, "t".into());
        s.health_starting();
        // failures within the start period do not count
        assert_eq!(s.health_checked(result(1), 2, true), None);
        assert_eq!(s.health().map(|h| (h.status, h.failing_streak)), Some((HealthStatus::Starting, 0)));
        assert_eq!(s.health_checked(result(1), 2, false), None);
        assert_eq!(s.health_checked(result(1), 2, false), Some(HealthStatus::Unhealthy));
        assert_eq!(s.health_checked(result(0), 2, false), Some(HealthStatus::Healthy));
        assert_eq!(s.health().unwrap().failing_streak, 0);
        for _ in 0..10 {
            s.health_checked(result(0), 2, false);
        }
        assert_eq!(s.health().unwrap().log.len(), HEALTH_LOG_ENTRIES);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!((v["Health"]["Status"].as_str(), v["Health"]["FailingStreak"].as_i64()), (Some("healthy"), Some(0)));
        assert_eq!(serde_json::from_value::<State>(v).unwrap(), s);
        // paused or exited, it is no longer checked: unhealthy; a new start begins again,
        // keeping the log
        s.pause();
        assert_eq!(s.health().unwrap().status, HealthStatus::Unhealthy);
        s.unpause();
        assert_eq!(s.health().unwrap().status, HealthStatus::Starting);
        s.exit(0, false, String::new(), "x".into());
        assert_eq!(s.health().unwrap().status, HealthStatus::Unhealthy);
        s.health_starting();
        assert_eq!(s.health().map(|h| (h.status, h.log.len())), Some((HealthStatus::Starting, HEALTH_LOG_ENTRIES)));
    }

    #[test]
    fn written_as_docker_shows_it_and_read_back() {
        let mut s = State::default();
        s.start(7, "2026-01-01T00:00:00.000000000Z".into());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["Status"], "running");
        assert_eq!(
            (v["Running"].as_bool(), v["Paused"].as_bool(), v["Dead"].as_bool()),
            (Some(true), Some(false), Some(false))
        );
        assert_eq!(v["OOMKilled"], false);
        assert_eq!(v["Pid"], 7);
        assert_eq!(serde_json::from_value::<State>(v).unwrap(), s);
        // flags that disagree with the status are ignored; an older record's removal mark reads
        let old = serde_json::json!({"Status": "exited", "Running": true, "Dead": true, "ExitCode": 3});
        let s: State = serde_json::from_value(old).unwrap();
        assert_eq!((s.status(), s.running(), s.exit_code()), (Status::Removing, false, 3));
        let empty: State = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(empty, State::default());
    }
}
