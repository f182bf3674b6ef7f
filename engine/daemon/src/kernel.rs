//! Kernel rows in the engine's traces: engined loads the eBPF probes at start (when the kernel
//! lets it), follows engine-lifecycled (so every shim, runtime and container process forked below
//! it), and, as spans come in, places the kernel events of each span's process inside that span:
//! system calls with an enter and an exit become `kernel.<call>` spans, point events (fork, exec,
//! exit, cgroup mkdir and attach) become span events. A span's process is its `process.pid`
//! (host pid); `container.process.pid` names the container's first process on the runtime's
//! spans, which cover it between the runtime's exit and the exec of the user's program.
//!
//!
//! Where each such span's time went is the probes' off-CPU intervals of its thread, summed over
//! the span: `engine.cpu.off_ns` (blocked), `engine.cpu.runq_ns` (runnable, waiting for a CPU)
//! and `engine.cpu.on_ns` (the rest: running), and the kernel stacks it blocked in longest as
//! `kernel.blocked` events of the innermost span open at the time (so a parent's sums include
//! its children's, its events do not repeat them).
//!
//! Must never: hold a container operation up (events are read when spans arrive, never waited
//! for), or put an event of one process into another process's span.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use engine_probes::{kind, syscall, KernelEvent, OffCpuInterval, OnCpuSample, Probes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};

/// What became of the probes at start, for `engine info` and `/engine/v1/probes`.
#[derive(Clone)]
pub enum ProbeState {
    Running(Arc<Probes>),
    Disabled(String),
}

/// Loads the probes unless `disabled`; says once, in the log, why they are not running.
pub fn start(cfg: &crate::config::Config) -> ProbeState {
    if cfg.no_probes {
        return ProbeState::Disabled("disabled by --no-probes".into());
    }
    match Probes::load(!cfg.no_profiles) {
        Ok(p) => {
            let profiles =
                if cfg.no_profiles { "without the scheduler's (--no-profiles)" } else { "with the scheduler's" };
            crate::log!(cfg, "info", "eBPF probes attached, {profiles}");
            ProbeState::Running(Arc::new(p))
        }
        Err(e) => {
            crate::log!(cfg, "warn", "running without eBPF probes: {e}");
            ProbeState::Disabled(e.to_string())
        }
    }
}

/// Follows every lifecycled engined runs (it is restarted with a new pid) and the shims left
/// running by an earlier one.
pub fn follow_engine_processes(
    cfg: &crate::config::Config,
    probes: Arc<Probes>,
    mut lifecycled: tokio::sync::watch::Receiver<u32>,
) {
    for pid in shim_pids(&cfg.exec_root.join("lifecycle")) {
        probes.follow(pid);
    }
    tokio::spawn(async move {
        loop {
            let pid = *lifecycled.borrow_and_update();
            if pid != 0 {
                // lifecycled serves every container: its children are followed, not its own work
                probes.follow_children(pid);
            }
            if lifecycled.changed().await.is_err() {
                return;
            }
        }
    });
}

/// A container has started: the work of its processes is the user's from now on, so the probes
/// stop following its cgroup (whatever it forks, sampled or not, with `--init` or without).
pub fn container_started(probes: &ProbeState, cgroups_path: &str) {
    use std::os::unix::fs::MetadataExt;
    let ProbeState::Running(p) = probes else { return };
    // the cgroup v2 tree: its own mount on a hybrid host, the root on a pure v2 one
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let dir = std::path::Path::new(root).join(cgroups_path.trim_start_matches('/'));
        if dir.join("cgroup.procs").exists() && std::path::Path::new(root).join("cgroup.controllers").exists() {
            if let Ok(m) = std::fs::metadata(&dir) {
                p.stop_cgroup(m.ino());
                return;
            }
        }
    }
}

pub fn shim_pids(dir: &std::path::Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(shim_pids(&p));
        } else if p.file_name().is_some_and(|n| n == "shim.pid") {
            if let Some(pid) = std::fs::read_to_string(&p).ok().and_then(|s| s.trim().parse().ok()) {
                out.push(pid);
            }
        }
    }
    out
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn s(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn i(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

fn int_attr64(span: &Span, key: &str) -> Option<i64> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        any_value::Value::IntValue(v) => Some(*v),
        any_value::Value::StringValue(v) => v.parse().ok(),
        _ => None,
    })
}

fn int_attr(span: &Span, key: &str) -> Option<u32> {
    int_attr64(span, key).and_then(|v| u32::try_from(v).ok())
}

/// Names of the namespace flags set in clone/unshare flags.
pub fn namespaces(flags: u64) -> String {
    const NS: &[(u64, &str)] = &[
        (0x0002_0000, "CLONE_NEWNS"),
        (0x0200_0000, "CLONE_NEWCGROUP"),
        (0x0400_0000, "CLONE_NEWUTS"),
        (0x0800_0000, "CLONE_NEWIPC"),
        (0x1000_0000, "CLONE_NEWUSER"),
        (0x2000_0000, "CLONE_NEWPID"),
        (0x4000_0000, "CLONE_NEWNET"),
        (0x0000_0080, "CLONE_NEWTIME"),
    ];
    NS.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| *n).collect::<Vec<_>>().join("|")
}

/// Attributes of a system call from its enter event.
fn call_attrs(e: &KernelEvent) -> Vec<KeyValue> {
    let mut a =
        vec![i("process.pid", e.tgid.into()), i("thread.id", e.tid.into()), i("linux.cgroup.id", e.cgroup_id as i64)];
    let flags = |a: &mut Vec<KeyValue>, f: u64| {
        a.push(s("linux.clone.flags", format!("{f:#x}")));
        a.push(s("linux.namespaces", namespaces(f)));
    };
    match e.syscall {
        syscall::CLONE | syscall::UNSHARE => flags(&mut a, e.args[0]),
        syscall::CLONE3 => flags(&mut a, e.args[1]),
        syscall::SETNS => {
            a.push(i("linux.setns.fd", e.args[0] as i64));
            a.push(s("linux.namespaces", namespaces(e.args[1])));
        }
        syscall::MOUNT => {
            a.push(s("mount.source", e.str0.clone()));
            a.push(s("mount.target", e.str1.clone()));
            a.push(s("mount.fstype", e.str2.clone()));
            a.push(s("mount.flags", format!("{:#x}", e.args[3])));
        }
        syscall::UMOUNT2 => {
            a.push(s("mount.target", e.str1.clone()));
            a.push(s("mount.flags", format!("{:#x}", e.args[1])));
        }
        syscall::PIVOT_ROOT => {
            a.push(s("pivot_root.new_root", e.str0.clone()));
            a.push(s("pivot_root.put_old", e.str1.clone()));
        }
        syscall::EXECVE => a.push(s("process.executable.path", e.str0.clone())),
        _ => {}
    }
    a
}

/// A point event as a span event.
fn point(e: &KernelEvent) -> Option<span::Event> {
    let (name, attributes) = match e.kind {
        kind::FORK => (
            engine_telemetry::names::KERNEL_FORK,
            vec![i("process.pid", e.tgid.into()), i("process.child.pid", e.args[0] as i64)],
        ),
        kind::EXEC => (
            engine_telemetry::names::KERNEL_EXEC,
            vec![i("process.pid", e.tgid.into()), s("process.executable.path", e.str0.clone())],
        ),
        kind::EXIT => (engine_telemetry::names::KERNEL_EXIT, vec![i("process.pid", e.tgid.into())]),
        kind::CGROUP_MKDIR => (
            engine_telemetry::names::KERNEL_CGROUP_MKDIR,
            vec![
                i("process.pid", e.tgid.into()),
                s("linux.cgroup.path", e.str0.clone()),
                i("linux.cgroup.id", e.args[0] as i64),
                i("linux.cgroup.hierarchy", e.args[1] as i64),
            ],
        ),
        kind::CGROUP_ATTACH => (
            engine_telemetry::names::KERNEL_CGROUP_ATTACH,
            vec![
                i("process.pid", e.tgid.into()),
                s("linux.cgroup.path", e.str0.clone()),
                i("linux.cgroup.attached_pid", e.args[0] as i64),
                i("linux.cgroup.hierarchy", e.args[1] as i64),
            ],
        ),
        _ => return None,
    };
    Some(span::Event { time_unix_nano: e.wall_ns, name: name.into(), attributes, ..Default::default() })
}

/// How long after a runtime span the container's own events still belong to it (see above).
const EXEC_GRACE_NS: u64 = 5_000_000;
/// How long after it the exec of the user's program still does: the runtime sees the program
/// replaced (its `/proc/<pid>/exe`) before the kernel reports the exec, and a busy machine may
/// run other work between the two; the runtime waits a second for the exec at most.
const EXEC_LATE_NS: u64 = 1_000_000_000;
/// How long the intake waits for that report when the process lives on without it.
const EXEC_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A span a kernel event may belong to.
struct Owner {
    at: (usize, usize, usize),
    pid: u32,
    /// The cgroup the process's events must come from (a container's process, born in it).
    cgroup: Option<u64>,
    /// Owns the pid's events only where no span of the process itself does.
    fallback: bool,
    /// Owns only this thread's events (engined's namespace-making thread).
    tid: Option<u32>,
    /// A `runtime start`'s span: it ended once it saw the user's program replace the container's
    /// first process, so the kernel's report of that exec is due.
    exec_due: bool,
    start: u64,
    end: u64,
}

/// Places the probes' events of the processes behind `req`'s spans inside them.
pub fn annotate(req: &mut ExportTraceServiceRequest, probes: &Probes) {
    let mut owners = Vec::new();
    for (r, rs) in req.resource_spans.iter().enumerate() {
        let service =
            rs.resource.iter().flat_map(|res| &res.attributes).find(|a| a.key == "service.name").and_then(|a| match a
                .value
                .as_ref()?
                .value
                .as_ref()?
            {
                any_value::Value::StringValue(v) => Some(v.as_str()),
                _ => None,
            });
        // lifecycled and engined serve every container at once: their own events are no one
        // container's (the probes follow lifecycled only to catch the shims it forks)
        // engined's own: only the thread that makes a container's network namespace is followed
        // (by thread id), while its `network.namespace` span is open
        let engined = service == Some("engined");
        if !engined && !matches!(service, Some("engine-shim" | "engine-runtime" | "engine-init")) {
            continue;
        }
        for (c, ss) in rs.scope_spans.iter().enumerate() {
            // a span without its own process.pid has its parent's (same process)
            let by_id: HashMap<&[u8], &Span> = ss.spans.iter().map(|sp| (sp.span_id.as_slice(), sp)).collect();
            // the nearest value of `key` on the span or its ancestors
            let inherited = |sp: &Span, key: &str| {
                let mut cur = sp;
                for _ in 0..32 {
                    if let Some(v) = int_attr64(cur, key) {
                        return Some(v);
                    }
                    cur = by_id.get(cur.parent_span_id.as_slice())?;
                }
                None
            };
            for (k, sp) in ss.spans.iter().enumerate() {
                if engined && sp.name != engine_telemetry::names::NETWORK_NAMESPACE {
                    continue;
                }
                let (start, end) = (sp.start_time_unix_nano, sp.end_time_unix_nano);
                if let Some(pid) = inherited(sp, "process.pid").and_then(|p| u32::try_from(p).ok()) {
                    let cgroup = inherited(sp, "linux.cgroup.id").and_then(|c| u64::try_from(c).ok());
                    let tid = if engined { int_attr(sp, "thread.id") } else { None };
                    owners.push(Owner {
                        at: (r, c, k),
                        pid,
                        cgroup,
                        fallback: false,
                        tid,
                        exec_due: false,
                        start,
                        end,
                    });
                }
                if let Some(pid) = int_attr(sp, "container.process.pid") {
                    // `runtime start` ends when it sees the program replaced, a moment before
                    // the kernel reports the exec: the container's events get that moment
                    owners.push(Owner {
                        at: (r, c, k),
                        pid,
                        cgroup: None,
                        fallback: true,
                        tid: None,
                        exec_due: sp.name == engine_telemetry::names::RUNTIME_START,
                        start,
                        end: end + EXEC_GRACE_NS,
                    });
                }
            }
        }
    }
    if owners.is_empty() {
        return;
    }
    probes.drain();
    wait_for_execs(&owners, probes);
    if probes.profiles() {
        attribute_cpu(req, &owners, probes);
    }
    let pids: HashSet<u32> = owners.iter().map(|o| o.pid).collect();
    let lo = owners.iter().map(|o| o.start).min().unwrap_or(0);
    let hi = owners.iter().map(|o| o.end + if o.fallback { EXEC_LATE_NS } else { 0 }).max().unwrap_or(0);
    // the innermost span of the event's process that was open at the time
    // an event of a container's process is confirmed by its cgroup: the process was born in the
    // container's cgroup, so an event from any other is not this container's (a reused pid)
    let confirmed =
        |o: &Owner, e: &KernelEvent| o.cgroup.is_none_or(|c| c == e.cgroup_id) && o.tid.is_none_or(|t| t == e.tid);
    let owner_of = |e: &KernelEvent| -> Option<&Owner> {
        let (pid, t) = (e.tgid, e.wall_ns);
        let open = |fallback: bool| {
            owners
                .iter()
                .filter(move |o| {
                    let end = if fallback && e.kind == kind::EXEC { o.end + EXEC_LATE_NS } else { o.end };
                    o.pid == pid && o.fallback == fallback && o.start <= t && t <= end && confirmed(o, e)
                })
                .min_by_key(|o| o.end - o.start)
        };
        open(false).or_else(|| open(true))
    };
    // only what a span here will hold: the rest waits for its own span
    let events = probes.take(|e| {
        pids.contains(&e.tgid)
            && e.wall_ns >= lo
            && e.wall_ns <= hi
            && (e.kind == kind::SYSCALL_EXIT || owner_of(e).is_some())
    });
    if events.is_empty() {
        return;
    }
    let mut open_calls: HashMap<(u32, u32), KernelEvent> = HashMap::new();
    let mut kernel_spans: Vec<Span> = Vec::new();
    let mut span_events: Vec<((usize, usize, usize), span::Event)> = Vec::new();
    let finish = |enter: &KernelEvent, exit: Option<&KernelEvent>, kernel_spans: &mut Vec<Span>| {
        let Some(o) = owner_of(enter) else { return };
        let parent = &req.resource_spans[o.at.0].scope_spans[o.at.1].spans[o.at.2];
        // a call made in the moment after its span (see EXEC_GRACE_NS) has the point events
        if enter.wall_ns > parent.end_time_unix_nano {
            return;
        }
        let mut attributes = call_attrs(enter);
        // a call that outlasts its span (an exec seen done a moment early) is kept inside it
        let end = exit.map(|x| x.wall_ns).unwrap_or(enter.wall_ns).min(parent.end_time_unix_nano).max(enter.wall_ns);
        let mut st = Status { message: String::new(), code: status::StatusCode::Unset as i32 };
        if let Some(x) = exit {
            let ret = x.args[0] as i64;
            attributes.push(i("linux.syscall.ret", ret));
            if ret < 0 {
                st = Status {
                    message: std::io::Error::from_raw_os_error((-ret) as i32).to_string(),
                    code: status::StatusCode::Error as i32,
                };
            }
        }
        kernel_spans.push(Span {
            trace_id: parent.trace_id.clone(),
            span_id: engine_telemetry::SpanId::random().0.to_vec(),
            parent_span_id: parent.span_id.clone(),
            flags: parent.flags,
            name: engine_telemetry::names::kernel_syscall(syscall::name(enter.syscall)),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: enter.wall_ns,
            end_time_unix_nano: end,
            attributes,
            status: Some(st),
            ..Default::default()
        });
    };
    for e in &events {
        match e.kind {
            kind::SYSCALL_ENTER => {
                open_calls.insert((e.tid, e.syscall), e.clone());
            }
            kind::SYSCALL_EXIT => {
                if let Some(enter) = open_calls.remove(&(e.tid, e.syscall)) {
                    finish(&enter, Some(e), &mut kernel_spans);
                }
            }
            _ => {
                if let (Some(o), Some(ev)) = (owner_of(e), point(e)) {
                    span_events.push((o.at, ev));
                }
            }
        }
    }
    // calls whose exit is not in the window (an exec that replaced the caller)
    let mut rest: Vec<KernelEvent> = open_calls.into_values().collect();
    rest.sort_by_key(|e| e.wall_ns);
    for enter in &rest {
        finish(enter, None, &mut kernel_spans);
    }
    for ((r, c, k), ev) in span_events {
        req.resource_spans[r].scope_spans[c].spans[k].events.push(ev);
    }
    if !kernel_spans.is_empty() {
        req.resource_spans.push(ResourceSpans {
            resource: Some(Resource { attributes: vec![s("service.name", "kernel")], ..Default::default() }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "engine-probes".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: kernel_spans,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
}

/// Waits (up to `EXEC_WAIT`) for the exec of each container's first process that a `runtime
/// start` saw happen, when the probes have not reported it yet and the process still runs: the
/// report is a moment behind the runtime's own view of it. The intake worker waits here, never
/// a container operation; a create's spans (no exec yet) never wait.
fn wait_for_execs(owners: &[Owner], probes: &Probes) {
    let deadline = std::time::Instant::now() + EXEC_WAIT;
    let pending = |o: &&Owner| {
        o.exec_due && !probes.any(|e| e.kind == kind::EXEC && e.tgid == o.pid && e.wall_ns >= o.start)
            // a zombie has no exec to come
            && engine_util::process::running(o.pid)
    };
    while owners.iter().any(|o| pending(&o)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
        probes.drain();
    }
}

/// Blocking stacks of a span kept as events at most, and the least blocked time that makes one.
const TOP_STACKS: usize = 3;
const MIN_STACK_NS: u64 = 100_000;
/// Frames of a stack named in its event.
const STACK_NAMED: usize = 8;

fn overlap(a: (u64, u64), b: (u64, u64)) -> u64 {
    a.1.min(b.1).saturating_sub(a.0.max(b.0))
}

/// The scheduler's own frames (and the generic waits around it): every blocked stack starts
/// with some, and they say nothing of why.
fn scheduler_frame(f: &str) -> bool {
    f.contains("schedule")
        || f.starts_with("__cond_resched")
        || f.starts_with("_cond_resched")
        || f.contains("wait_for_common")
        || f.starts_with("wait_for_completion")
}

/// The system call entry every user thread's stack ends with.
fn entry_frame(f: &str) -> bool {
    f == "do_syscall_64" || f.starts_with("entry_SYSCALL")
}

/// A blocked stack as a span shows it: innermost named function first, the scheduler's frames
/// and the system call entry left out, `←` between callers.
pub fn stack_line(frames: &[String]) -> String {
    let named: Vec<&str> =
        frames.iter().map(String::as_str).skip_while(|f| scheduler_frame(f)).filter(|f| !entry_frame(f)).collect();
    let named = if named.is_empty() { frames.iter().map(String::as_str).collect() } else { named };
    let mut line = named.iter().take(STACK_NAMED).copied().collect::<Vec<_>>().join(" ← ");
    if named.len() > STACK_NAMED {
        line.push_str(" ← …");
    }
    line
}

/// Sums the off-CPU intervals of each span's own thread over the span (`engine.cpu.*`) and
/// names the stacks it blocked in longest (`kernel.blocked` events, on the innermost span).
fn attribute_cpu(req: &mut ExportTraceServiceRequest, owners: &[Owner], probes: &Probes) {
    // a container's process before its exec (`container.process.pid`) is not the span's thread
    let own: Vec<&Owner> = owners.iter().filter(|o| !o.fallback).collect();
    let pids: HashSet<u32> = own.iter().map(|o| o.pid).collect();
    let (Some(lo), Some(hi)) = (own.iter().map(|o| o.start).min(), own.iter().map(|o| o.end).max()) else { return };
    let intervals = probes.off_cpu(|i| pids.contains(&i.tgid) && i.start_ns < hi && i.end_ns() > lo);
    // the spans' thread: engined's is named, the others' is their process's main thread
    let thread = |o: &Owner| o.tid.unwrap_or(o.pid);
    let mine = |o: &Owner, i: &OffCpuInterval| i.tid == thread(o) && o.cgroup.is_none_or(|c| c == i.cgroup_id);
    // the innermost span of the thread open at the middle of a blocked part
    let innermost = |i: &OffCpuInterval| {
        let (a, b) = i.blocked();
        let t = a + (b - a) / 2;
        own.iter().filter(|o| mine(o, i) && o.start <= t && t <= o.end).min_by_key(|o| o.end - o.start).map(|o| o.at)
    };
    let mut updates = Vec::new();
    for o in &own {
        let span = (o.start, o.end);
        let (mut off, mut runq) = (0u64, 0u64);
        // stack line → (blocked ns, intervals, first seen)
        let mut stacks: HashMap<String, (u64, i64, u64)> = HashMap::new();
        for i in intervals.iter().filter(|i| mine(o, i)) {
            let blocked = overlap(i.blocked(), span);
            off += blocked;
            runq += overlap(i.runnable(), span);
            if blocked > 0 && innermost(i) == Some(o.at) {
                if let Some(frames) = &i.stack {
                    let e = stacks.entry(stack_line(frames)).or_insert((0, 0, i.start_ns));
                    e.0 += blocked;
                    e.1 += 1;
                }
            }
        }
        let on = (o.end - o.start).saturating_sub(off + runq);
        let mut top: Vec<(String, (u64, i64, u64))> = stacks.into_iter().filter(|(_, v)| v.0 >= MIN_STACK_NS).collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.1 .0));
        top.truncate(TOP_STACKS);
        let events: Vec<span::Event> = top
            .into_iter()
            .map(|(line, (ns, count, first))| span::Event {
                time_unix_nano: first.max(o.start),
                name: engine_telemetry::names::KERNEL_BLOCKED.into(),
                attributes: vec![
                    i("process.pid", o.pid.into()),
                    i("thread.id", thread(o).into()),
                    s(engine_telemetry::names::ATTR_KERNEL_STACK, line),
                    i(engine_telemetry::names::ATTR_CPU_OFF_NS, ns as i64),
                    i("linux.sched.switches", count),
                ],
                ..Default::default()
            })
            .collect();
        updates.push((o.at, [on, off, runq], events));
    }
    for ((r, c, k), [on, off, runq], events) in updates {
        let sp = &mut req.resource_spans[r].scope_spans[c].spans[k];
        sp.attributes.push(i(engine_telemetry::names::ATTR_CPU_ON_NS, on as i64));
        sp.attributes.push(i(engine_telemetry::names::ATTR_CPU_OFF_NS, off as i64));
        sp.attributes.push(i(engine_telemetry::names::ATTR_CPU_RUNQ_NS, runq as i64));
        sp.events.extend(events);
    }
    if probes.sampling() == Ok(true) {
        attribute_samples(req, &own, probes, (lo, hi));
    }
}

/// How many generations below a span's process a sampled process may be (a hook's shell and
/// what it runs).
const MAX_GENERATIONS: usize = 8;

/// Places the on-CPU samples of each span's thread, and of the processes it started (a hook,
/// by the probes' fork events), in its spans: `linux.perf.samples` on every span open at the
/// sample, the stacks sampled most as `kernel.on_cpu` events of the innermost one.
fn attribute_samples(req: &mut ExportTraceServiceRequest, own: &[&Owner], probes: &Probes, (lo, hi): (u64, u64)) {
    let thread = |o: &Owner| o.tid.unwrap_or(o.pid);
    let threads: HashSet<(u32, u32)> = own.iter().map(|o| (o.pid, thread(o))).collect();
    // child pid → the (process, thread) that forked it, and that one's command
    let parent: HashMap<u32, (u32, u32, String)> = probes
        .events(|e| e.kind == kind::FORK && e.wall_ns <= hi)
        .into_iter()
        .map(|e| (e.args[0] as u32, (e.tgid, e.tid, e.str2)))
        .collect();
    // the engine's own processes report spans of their own (maybe in another request)
    let engines = |comm: &str| comm.starts_with("engine-");
    // the span thread a sampled thread works for: itself, or the one that started its process
    let working_for = |s: &OnCpuSample| -> Option<((u32, u32), bool)> {
        if threads.contains(&(s.tgid, s.tid)) {
            return Some(((s.tgid, s.tid), true));
        }
        if engines(&s.comm) {
            return None;
        }
        let mut cur = s.tgid;
        for _ in 0..MAX_GENERATIONS {
            let (ptgid, ptid, comm) = parent.get(&cur)?;
            if threads.contains(&(*ptgid, *ptid)) {
                return Some(((*ptgid, *ptid), false));
            }
            // started by an engine process whose spans are not here: its own request has it
            if engines(comm) {
                return None;
            }
            cur = *ptgid;
        }
        None
    };
    // the spans open at a sample of the thread it works for
    let open_at = |smp: &OnCpuSample| -> Vec<&&Owner> {
        let Some(((pid, tid), itself)) = working_for(smp) else { return Vec::new() };
        own.iter()
            .filter(|o| o.pid == pid && thread(o) == tid && o.start <= smp.wall_ns && smp.wall_ns <= o.end)
            // its own samples are confirmed by its cgroup, as its events are
            .filter(|o| !itself || o.cgroup.is_none_or(|c| c == smp.cgroup_id))
            .collect()
    };
    // taken: a sample counts in one request's spans only
    let samples = probes.take_on_cpu(|s| s.wall_ns >= lo && s.wall_ns <= hi && !open_at(s).is_empty());
    // per span: samples; per innermost span: stack line → (samples, first, sampled pid, command)
    let mut counts: HashMap<(usize, usize, usize), i64> = HashMap::new();
    let mut stacks: HashMap<(usize, usize, usize), HashMap<String, (i64, u64, u32, String)>> = HashMap::new();
    let pid_of: HashMap<(usize, usize, usize), u32> = own.iter().map(|o| (o.at, o.pid)).collect();
    for smp in &samples {
        let open = open_at(smp);
        for o in &open {
            *counts.entry(o.at).or_default() += 1;
        }
        let Some(inner) = open.iter().min_by_key(|o| o.end - o.start) else { continue };
        let line = match (&smp.stack, smp.user) {
            (Some(frames), _) => stack_line(frames),
            (None, true) => format!("[user] {}", smp.comm),
            (None, false) => format!("[kernel] {}", smp.comm),
        };
        let e = stacks.entry(inner.at).or_default().entry(line).or_insert((0, smp.wall_ns, smp.tgid, smp.comm.clone()));
        e.0 += 1;
    }
    let period_ns = 1_000_000_000 / engine_probes::ON_CPU_HZ as i64;
    for ((r, c, k), n) in counts {
        let sp = &mut req.resource_spans[r].scope_spans[c].spans[k];
        sp.attributes.push(i(engine_telemetry::names::ATTR_PERF_SAMPLES, n));
        let mut top: Vec<(String, (i64, u64, u32, String))> =
            stacks.remove(&(r, c, k)).unwrap_or_default().into_iter().collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.1 .0));
        top.truncate(TOP_STACKS);
        let own_pid = pid_of.get(&(r, c, k)).copied().unwrap_or_default();
        sp.events.extend(top.into_iter().map(|(line, (count, first, pid, comm))| {
            // the span's process; a process it started (a hook) is named beside it
            let mut attributes = vec![i("process.pid", own_pid.into())];
            if pid != own_pid {
                attributes.push(i(engine_telemetry::names::ATTR_PERF_SAMPLED_PID, pid.into()));
            }
            attributes.extend([
                s("process.command", comm),
                s(engine_telemetry::names::ATTR_KERNEL_STACK, line),
                i(engine_telemetry::names::ATTR_PERF_SAMPLES, count),
                i(engine_telemetry::names::ATTR_CPU_ON_NS, count * period_ns),
            ]);
            span::Event {
                time_unix_nano: first,
                name: engine_telemetry::names::KERNEL_ON_CPU.into(),
                attributes,
                ..Default::default()
            }
        }));
    }
}

/// Follows the calling thread (by thread id) while it makes a container's network namespace,
/// so its unshare and mount land in the `network.namespace` span; `false` stops.
pub fn watch_thread(state: &ProbeState, tid: u32, on: bool) {
    if let ProbeState::Running(p) = state {
        if on {
            p.follow_thread(tid);
        } else {
            p.unfollow_thread(tid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_stack_is_named_from_its_first_function_past_the_scheduler() {
        let frames: Vec<String> = [
            "__schedule",
            "schedule",
            "schedule_timeout",
            "__wait_for_common",
            "wait_for_completion",
            "synchronize_rcu_normal",
            "rcu_sync_enter",
            "do_syscall_64",
            "entry_SYSCALL_64_after_hwframe",
        ]
        .iter()
        .map(|f| f.to_string())
        .collect();
        assert_eq!(stack_line(&frames), "synchronize_rcu_normal ← rcu_sync_enter");
        let deep: Vec<String> = (0..12).map(|n| format!("f{n}")).collect();
        assert_eq!(stack_line(&deep), "f0 ← f1 ← f2 ← f3 ← f4 ← f5 ← f6 ← f7 ← …");
        // a stack of scheduler frames alone is shown as it is
        assert_eq!(stack_line(&frames[..2]), "__schedule ← schedule");
    }

    #[test]
    fn namespace_flags_are_named() {
        assert_eq!(
            namespaces(0x7c02_0000),
            "CLONE_NEWNS|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET"
        );
        assert_eq!(namespaces(0x11), "");
    }
}
