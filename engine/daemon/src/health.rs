//! Health checks (Docker's `HEALTHCHECK` and `--health-*`): while a container with a check
//! runs, engined execs the check's command in it every interval, with a timeout, and judges
//! the results as dockerd does into `State.Health` (a `health_status` event when the verdict
//! changes). Each check is a trace of its own (`daemon.health`), its exec under it.
//!
//! Owns: the check loops. It must never start or stop containers: an unhealthy container is
//! only reported, as with Docker.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use engine_docker_api::{ContainerConfig, HealthConfig};

use crate::config::Config;
use crate::events::{Event, Events};
use crate::exec::{ExecService, RunError};
use crate::lifecycle::Lifecycle;
use crate::records::{ContainerStore, Entry};
use crate::state::HealthResult;
use crate::trace::Trace;

/// Docker's defaults for what a check leaves at zero.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: i64 = 3;
/// Output a check keeps, as dockerd.
const MAX_OUTPUT: usize = 4096;

/// A container's check, with Docker's defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The program and its arguments (`CMD-SHELL`: `/bin/sh -c`).
    pub args: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: i64,
}

/// The check `config` asks for, if any (none without a test, or with `NONE`).
pub fn check_of(config: &ContainerConfig) -> Option<Check> {
    let h = config.healthcheck.as_ref()?;
    let test = h.test.as_deref()?;
    let args = match test.split_first()? {
        (kind, rest) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        (kind, [command]) if kind == "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), command.clone()],
        _ => return None,
    };
    let nanos = |n: i64, default: Duration| if n > 0 { Duration::from_nanos(n as u64) } else { default };
    Some(Check {
        args,
        interval: nanos(h.interval, DEFAULT_INTERVAL),
        timeout: nanos(h.timeout, DEFAULT_TIMEOUT),
        start_period: nanos(h.start_period, Duration::ZERO),
        start_interval: nanos(h.start_interval, DEFAULT_START_INTERVAL),
        retries: if h.retries > 0 { h.retries } else { DEFAULT_RETRIES },
    })
}

/// A create's check over its image's, as dockerd merges them: the container's own fields win,
/// the image's fill what it leaves empty.
pub fn merge(own: Option<HealthConfig>, image: Option<HealthConfig>) -> Option<HealthConfig> {
    let Some(image) = image else { return own };
    let Some(mut own) = own else { return Some(image) };
    if own.test.as_ref().is_none_or(|t| t.is_empty()) {
        own.test = image.test;
    }
    for (mine, theirs) in [
        (&mut own.interval, image.interval),
        (&mut own.timeout, image.timeout),
        (&mut own.start_period, image.start_period),
        (&mut own.start_interval, image.start_interval),
        (&mut own.retries, image.retries),
    ] {
        if *mine == 0 {
            *mine = theirs;
        }
    }
    Some(own)
}

/// Whether `at` is within the start period of the container's current run.
fn in_start_period(e: &Entry, check: &Check, at: SystemTime) -> bool {
    let started = e.read(|r| engine_util::time::parse_rfc3339(r.state.started_at()));
    started.is_some_and(|s| at < s + check.start_period)
}

/// Checks the containers that have a check while they run.
pub struct HealthService {
    pub containers: Arc<ContainerStore>,
    pub lifecycle: Lifecycle,
    pub execs: Arc<ExecService>,
    pub events: Arc<Events>,
    pub sink: Option<engine_telemetry::Sink>,
    pub cfg: Arc<Config>,
}

impl HealthService {
    /// Checks container `e` from now until its process ends (nothing without a check).
    pub fn watch(self: &Arc<Self>, e: Arc<Entry>) {
        // on every start and reattach: read in place, not copied
        let Some(check) = e.read(|r| check_of(&r.config)) else { return };
        let this = self.clone();
        tokio::spawn(async move {
            let mut life = e.life.subscribe();
            let exits = life.borrow().exits;
            loop {
                let starting =
                    e.read(|r| r.state.health().is_none_or(|h| h.status == crate::state::HealthStatus::Starting));
                let wait = if starting && in_start_period(&e, &check, SystemTime::now()) {
                    check.start_interval
                } else {
                    check.interval
                };
                let ended = life.wait_for(|l| l.exits != exits || !l.running || l.removed);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ended => return,
                }
                if e.read(|r| r.state.paused()) {
                    continue; // a frozen container is not checked (dockerd's exec would fail)
                }
                this.check_once(&e, &check).await;
            }
        });
    }

    /// Runs the check once, in a trace of its own, and records its result.
    pub async fn check_once(&self, e: &Arc<Entry>, check: &Check) {
        let rec = e.snapshot();
        let exits = e.life.borrow().exits;
        let trace = Arc::new(Trace::background(self.sink.as_ref(), engine_telemetry::names::DAEMON_HEALTH));
        trace.attr(trace.root, "container.id", rec.id.clone());
        let result = trace.scope(self.probe(e, check)).await;
        trace.attr(trace.root, "process.exit.code", result.exit_code);
        trace.end((result.exit_code != 0).then_some(result.output.as_str()));
        if e.life.borrow().exits != exits {
            return; // it ended meanwhile: a check of a process that is gone says nothing
        }
        // judged at the check's start, as dockerd
        let checked = engine_util::time::parse_rfc3339(&result.start).unwrap_or_else(SystemTime::now);
        let in_start_period = in_start_period(e, check, checked);
        let changed = e.update(|r| r.state.health_checked(result, check.retries, in_start_period));
        if let Err(err) = self.containers.persist(e) {
            crate::log!(self.cfg, "error", "saving {err}");
        }
        if let Some(status) = changed {
            let rec = e.snapshot();
            let labels = rec.config.labels.clone().unwrap_or_default();
            let action = format!("health_status: {}", status.as_str());
            self.events.publish(Event::container(&rec.id, &rec.name, &rec.image, &labels, &action, &[]));
        }
    }

    /// Execs the check's command in the container; its exit code and output (the first
    /// [`MAX_OUTPUT`] bytes), or -1 and why it did not run or end in time.
    async fn probe(&self, e: &Entry, check: &Check) -> HealthResult {
        let start = engine_util::time::now_rfc3339_nanos();
        let failed = |output: String| HealthResult {
            start: start.clone(),
            end: engine_util::time::now_rfc3339_nanos(),
            exit_code: -1,
            output,
        };
        let timed_out = || format!("Health check exceeded timeout ({})", engine_util::time::go_duration(check.timeout));
        match self.execs.run_captured(e, "health", check.args.clone(), check.timeout).await {
            Ok(out) => {
                let mut output = out.stdout;
                output.extend_from_slice(&out.stderr);
                output.truncate(MAX_OUTPUT);
                HealthResult {
                    start: start.clone(),
                    end: engine_util::time::now_rfc3339_nanos(),
                    exit_code: out.exit_code as i64,
                    output: String::from_utf8_lossy(&output).into_owned(),
                }
            }
            Err(RunError::TimedOut) => failed(timed_out()),
            Err(RunError::Failed(why)) => failed(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(h: serde_json::Value) -> ContainerConfig {
        serde_json::from_value(serde_json::json!({ "Healthcheck": h })).unwrap()
    }

    #[test]
    fn a_check_is_its_command_with_dockers_defaults() {
        let c = check_of(&config(serde_json::json!({"Test": ["CMD-SHELL", "test -f /ok"], "Interval": 2_000_000_000})))
            .unwrap();
        assert_eq!(c.args, ["/bin/sh", "-c", "test -f /ok"]);
        assert_eq!((c.interval, c.timeout, c.retries), (Duration::from_secs(2), DEFAULT_TIMEOUT, DEFAULT_RETRIES));
        let c = check_of(&config(serde_json::json!({"Test": ["CMD", "true", "x"], "Retries": 1}))).unwrap();
        assert_eq!((c.args, c.retries), (vec!["true".to_string(), "x".into()], 1));
        for none in [serde_json::json!({"Test": ["NONE"]}), serde_json::json!({}), serde_json::json!({"Test": ["CMD"]})]
        {
            assert_eq!(check_of(&config(none.clone())), None, "{none}");
        }
        assert_eq!(check_of(&ContainerConfig::default()), None);
    }

    #[tokio::test]
    async fn a_check_that_overruns_is_killed_and_failures_in_a_row_make_it_unhealthy() {
        let t = crate::testing::daemon().await;
        let (d, fake) = (&t.daemon, &t.fake);
        let trace = Trace::background(None, "test");
        let body = serde_json::json!({
            "Image": "tiny", "HostConfig": {"NetworkMode": "host"},
            "Healthcheck": {"Test": ["CMD", "probe"], "Timeout": 100_000_000, "Retries": 2, "Interval": 3_600_000_000_000u64},
        });
        let id = d.create(&trace, Some("web".into()), serde_json::from_value(body).unwrap()).await.unwrap();
        let e = d.containers.find(&id).unwrap();
        d.start(&trace, &e).await.unwrap();
        let health = || e.snapshot().state.health().cloned().unwrap();
        assert_eq!(health().status, crate::state::HealthStatus::Starting);
        let check = check_of(&e.snapshot().config).unwrap();

        // no exit comes within the timeout: the exec is killed and deleted, the check fails
        d.health.check_once(&e, &check).await;
        let h = health();
        assert_eq!((h.status, h.failing_streak), (crate::state::HealthStatus::Starting, 1));
        assert_eq!(h.log[0].exit_code, -1);
        assert_eq!(h.log[0].output, "Health check exceeded timeout (100ms)");
        let calls = fake.calls();
        let exec = fake.execs.lock().unwrap()[0].exec_id.clone();
        assert!(exec.starts_with("health-"), "{exec}");
        assert!(calls.contains(&format!("Kill {id} {exec} 9")) && calls.contains(&format!("Delete {id} {exec}")));
        assert_eq!(fake.status(&id), Some("running"), "the container's own task was touched: {calls:?}");
        let p: oci_spec::runtime::Process = serde_json::from_str(&fake.execs.lock().unwrap()[0].process_json).unwrap();
        assert_eq!(p.args().as_deref(), Some(&["probe".to_string()][..]));

        // a second failure (exit 3) in a row: unhealthy, as the events say
        let (_, mut events) = d.events.subscribe(None);
        fake.exec_exits.add_permits(1);
        d.health.check_once(&e, &check).await;
        let h = health();
        assert_eq!((h.status, h.failing_streak, h.log[1].exit_code), (crate::state::HealthStatus::Unhealthy, 2, 3));
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
        assert_eq!(event.action, "health_status: unhealthy");
        d.remove(&e, true, false).await.unwrap();
    }

    #[test]
    fn the_containers_check_is_merged_over_its_images() {
        let image = HealthConfig {
            test: Some(vec!["CMD".into(), "probe".into()]),
            interval: 5,
            retries: 7,
            ..Default::default()
        };
        let own = HealthConfig { interval: 9, ..Default::default() };
        let merged = merge(Some(own), Some(image.clone())).unwrap();
        assert_eq!((merged.test, merged.interval, merged.retries), (image.test.clone(), 9, 7));
        assert_eq!(merge(None, Some(image.clone())), Some(image.clone()));
        let none = HealthConfig { test: Some(vec!["NONE".into()]), ..Default::default() };
        assert_eq!(merge(Some(none.clone()), Some(image)).and_then(|h| h.test), none.test);
    }
}
