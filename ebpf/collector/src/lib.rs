//! The userspace side of the engine's eBPF probes: loads them (built by this crate's build script
//! from `ebpf/probes`), attaches them to their tracepoints, says which processes to follow, and
//! reads their events from the ring buffer into a bounded buffer the daemon correlates with spans.
//!
//! Kernel time (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) becomes wall-clock time here and nowhere
//! else, once per event, as the ring buffer is read ([`Probes::drain`]): plus the offset between
//! CLOCK_REALTIME and CLOCK_MONOTONIC taken at that read, so a suspend or an NTP step since the
//! probes were loaded does not shift the events (a step between an event and its read, at most
//! ~200 ms, does).
//!
//! Must never: stop a container operation (loading failures are reported, not fatal), or follow a
//! process the daemon did not name or that was not forked below one it named.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap};
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::{PerfEvent, TracePoint};
use aya::Ebpf;
use engine_probes_common::{counter, layout, Event, OffCpu, OnCpu, STR_LEN, USER_MODE};

pub use engine_probes_common::ON_CPU_HZ;

pub use engine_probes_common::{kind, syscall};

/// Why the probes are not running.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("tracefs is not available at /sys/kernel/tracing and could not be mounted: {0}")]
    Tracefs(String),
    #[error("tracepoint {0}: unexpected record layout ({1})")]
    Layout(String, String),
    #[error("loading the probes: {0}")]
    Load(String),
    #[error("attaching {0}: {1}")]
    Attach(String, String),
    #[error("engined runs in a pid namespace of its own: the kernel's pids would not match its processes'")]
    PidNamespace,
}

/// Every program and the tracepoint it attaches to.
const PROGRAMS: &[(&str, &str, &str)] = &[
    ("sys_enter_clone", "syscalls", "sys_enter_clone"),
    ("sys_exit_clone", "syscalls", "sys_exit_clone"),
    ("sys_enter_clone3", "syscalls", "sys_enter_clone3"),
    ("sys_exit_clone3", "syscalls", "sys_exit_clone3"),
    ("sys_enter_unshare", "syscalls", "sys_enter_unshare"),
    ("sys_exit_unshare", "syscalls", "sys_exit_unshare"),
    ("sys_enter_setns", "syscalls", "sys_enter_setns"),
    ("sys_exit_setns", "syscalls", "sys_exit_setns"),
    ("sys_enter_mount", "syscalls", "sys_enter_mount"),
    ("sys_exit_mount", "syscalls", "sys_exit_mount"),
    ("sys_enter_umount", "syscalls", "sys_enter_umount"),
    ("sys_exit_umount", "syscalls", "sys_exit_umount"),
    ("sys_enter_pivot_root", "syscalls", "sys_enter_pivot_root"),
    ("sys_exit_pivot_root", "syscalls", "sys_exit_pivot_root"),
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_exit_execve", "syscalls", "sys_exit_execve"),
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("cgroup_mkdir", "cgroup", "cgroup_mkdir"),
    ("cgroup_attach_task", "cgroup", "cgroup_attach_task"),
    ("sched_switch", "sched", "sched_switch"),
    ("sched_wakeup", "sched", "sched_wakeup"),
];

/// The programs that record off-CPU intervals (the profiles): left out by `Probes::load(false)`.
const PROFILE_PROGRAMS: &[&str] = &["sched_switch", "sched_wakeup"];

/// Events kept for correlation at most, and for how long; older ones go first.
const BUFFER: usize = 1 << 14;
const KEEP_NS: u64 = 60_000_000_000;
/// Off-CPU intervals kept at most (for as long as the events).
const OFF_CPU_BUFFER: usize = 1 << 15;
/// On-CPU samples kept at most (for as long as the events).
const ON_CPU_BUFFER: usize = 1 << 15;
/// Symbolized stacks remembered at most; past it the memo starts again.
const STACK_MEMO: usize = 4096;
/// Frames of a stack kept, innermost first.
const STACK_FRAMES: usize = 16;

/// A kernel stack, symbolized, innermost frame first (`__schedule`, `schedule`, …).
pub type Stack = Arc<[String]>;

/// An interval a followed thread spent off its CPU: blocked (from `start_ns`, for
/// `blocked_ns`), then runnable, waiting for a CPU (the rest of `total_ns`). A preempted
/// thread's interval is all run-queue time.
#[derive(Clone, Debug, PartialEq)]
pub struct OffCpuInterval {
    /// Wall-clock time of the switch out.
    pub start_ns: u64,
    pub total_ns: u64,
    pub blocked_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    /// Where it blocked; `None` for a preemption or when the stack was not kept.
    pub stack: Option<Stack>,
}

impl OffCpuInterval {
    pub fn end_ns(&self) -> u64 {
        self.start_ns + self.total_ns
    }

    /// The blocked part, `[start, end)`.
    pub fn blocked(&self) -> (u64, u64) {
        (self.start_ns, self.start_ns + self.blocked_ns)
    }

    /// The part waiting for a CPU, `[start, end)`.
    pub fn runnable(&self) -> (u64, u64) {
        (self.start_ns + self.blocked_ns, self.end_ns())
    }
}
/// One on-CPU sample of a followed thread (the CPU's clock fired `ON_CPU_HZ` times a second).
#[derive(Clone, Debug, PartialEq)]
pub struct OnCpuSample {
    /// Wall-clock time of the sample.
    pub wall_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    /// The thread's command (`comm`).
    pub comm: String,
    /// Taken while the thread ran its own code (no kernel stack).
    pub user: bool,
    /// Where in the kernel it ran; `None` in user mode or when the stack was not kept.
    pub stack: Option<Stack>,
}

/// One kernel event, with wall-clock time.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelEvent {
    pub wall_ns: u64,
    pub kind: u32,
    pub syscall: u32,
    pub tgid: u32,
    pub tid: u32,
    pub args: [u64; 4],
    pub cgroup_id: u64,
    pub str0: String,
    pub str1: String,
    pub str2: String,
}

/// The probes' counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    pub seen: u64,
    pub sent: u64,
    pub dropped: u64,
    /// Off-CPU intervals sent and lost (their ring buffer was full).
    pub off_cpu_sent: u64,
    pub off_cpu_dropped: u64,
    /// Off-CPU intervals and on-CPU samples without their stack (the stack map was full).
    pub stacks_lost: u64,
    /// On-CPU samples sent and lost (their ring buffer was full).
    pub on_cpu_sent: u64,
    pub on_cpu_dropped: u64,
}

struct Inner {
    ring: RingBuf<MapData>,
    tracked: HashMap<MapData, u32, u32>,
    stopped: HashMap<MapData, u64, u8>,
    counters: PerCpuArray<MapData, u64>,
    buffer: VecDeque<KernelEvent>,
    off_ring: RingBuf<MapData>,
    stacks: StackTraceMap<MapData>,
    off_cpu: VecDeque<OffCpuInterval>,
    /// The on-CPU sampler's ring (`None` when it could not be attached).
    on_ring: Option<RingBuf<MapData>>,
    on_cpu: VecDeque<OnCpuSample>,
    /// Symbolized stacks by id (an id is the hash of the addresses: the same stack, the same id).
    stack_memo: std::collections::HashMap<i64, Stack>,
    /// `/proc/kallsyms`, read by a thread of its own from the load on (a first stack waits for it).
    kernel_symbols: Arc<OnceLock<KernelSymbols>>,
    /// Kept so the programs stay attached.
    _ebpf: Ebpf,
}

/// The loaded probes.
pub struct Probes {
    inner: Mutex<Inner>,
    profiles: bool,
    /// Why the on-CPU sampler does not run, when profiles do.
    sampler_error: Option<String>,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

const TRACEFS: &str = "/sys/kernel/tracing";

fn ensure_tracefs() -> Result<(), ProbeError> {
    if std::path::Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    // SAFETY: mount with NUL-terminated strings and no data.
    let r = unsafe {
        libc::mount(c"tracefs".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    };
    if r != 0 || !std::path::Path::new(TRACEFS).join("events").is_dir() {
        return Err(ProbeError::Tracefs(std::io::Error::last_os_error().to_string()));
    }
    Ok(())
}

/// The offset of `field` in a tracepoint's record, from its tracefs `format` file.
fn field_offset(category: &str, name: &str, field: &str) -> Result<u32, ProbeError> {
    let path = format!("{TRACEFS}/events/{category}/{name}/format");
    let text =
        std::fs::read_to_string(&path).map_err(|e| ProbeError::Layout(format!("{category}/{name}"), e.to_string()))?;
    for line in text.lines() {
        let Some(decl) = line.trim().strip_prefix("field:") else { continue };
        let decl = decl.split(';').next().unwrap_or("");
        if decl.split_whitespace().last().map(|n| n.trim_end_matches("[]")) == Some(field) {
            let off = line.split(';').find_map(|p| p.trim().strip_prefix("offset:")).and_then(|o| o.parse().ok());
            return off
                .ok_or_else(|| ProbeError::Layout(format!("{category}/{name}"), format!("no offset for {field}")));
        }
    }
    Err(ProbeError::Layout(format!("{category}/{name}"), format!("no field {field}")))
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl Probes {
    /// Loads and attaches every probe, the scheduler's (off-CPU intervals) only with `profiles`.
    /// Needs root (CAP_BPF, CAP_PERFMON) and tracefs.
    pub fn load(profiles: bool) -> Result<Probes, ProbeError> {
        // the probes see the initial pid namespace's pids (its inode is PROC_PID_INIT_INO)
        if std::fs::read_link("/proc/self/ns/pid").ok().is_some_and(|ns| ns != std::path::Path::new("pid:[4026531836]"))
        {
            return Err(ProbeError::PidNamespace);
        }
        ensure_tracefs()?;
        let mut offsets = [0u32; layout::LEN];
        offsets[layout::FORK_CHILD_PID] = field_offset("sched", "sched_process_fork", "child_pid")?;
        offsets[layout::EXEC_FILENAME] = field_offset("sched", "sched_process_exec", "filename")?;
        offsets[layout::MKDIR_PATH] = field_offset("cgroup", "cgroup_mkdir", "path")?;
        offsets[layout::ATTACH_PID] = field_offset("cgroup", "cgroup_attach_task", "pid")?;
        offsets[layout::ATTACH_PATH] = field_offset("cgroup", "cgroup_attach_task", "dst_path")?;
        offsets[layout::MKDIR_ROOT] = field_offset("cgroup", "cgroup_mkdir", "root")?;
        offsets[layout::MKDIR_ID] = field_offset("cgroup", "cgroup_mkdir", "id")?;
        offsets[layout::ATTACH_ROOT] = field_offset("cgroup", "cgroup_attach_task", "dst_root")?;
        offsets[layout::SWITCH_PREV_STATE] = field_offset("sched", "sched_switch", "prev_state")?;
        offsets[layout::SWITCH_NEXT_PID] = field_offset("sched", "sched_switch", "next_pid")?;
        offsets[layout::WAKEUP_PID] = field_offset("sched", "sched_wakeup", "pid")?;

        let mut ebpf = Ebpf::load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/engine-probes-ebpf")))
            .map_err(|e| ProbeError::Load(e.to_string()))?;
        let mut lay: Array<_, [u32; layout::LEN]> =
            Array::try_from(ebpf.map_mut("LAYOUT").ok_or_else(|| ProbeError::Load("no LAYOUT map".into()))?)
                .map_err(|e| ProbeError::Load(e.to_string()))?;
        lay.set(0, offsets, 0).map_err(|e| ProbeError::Load(e.to_string()))?;
        for (prog, category, name) in PROGRAMS.iter().filter(|(p, _, _)| profiles || !PROFILE_PROGRAMS.contains(p)) {
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| ProbeError::Load(format!("no program {prog}")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| ProbeError::Load(e.to_string()))?;
            p.load().map_err(|e| ProbeError::Load(format!("{prog}: {e}")))?;
            p.attach(category, name).map_err(|e| ProbeError::Attach(format!("{category}/{name}"), e.to_string()))?;
        }
        let take =
            |ebpf: &mut Ebpf, name: &str| ebpf.take_map(name).ok_or_else(|| ProbeError::Load(format!("no {name} map")));
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|e| ProbeError::Load(e.to_string()))?;
        let tracked = HashMap::try_from(take(&mut ebpf, "TRACKED")?).map_err(|e| ProbeError::Load(e.to_string()))?;
        let stopped = HashMap::try_from(take(&mut ebpf, "STOPPED")?).map_err(|e| ProbeError::Load(e.to_string()))?;
        let counters =
            PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?).map_err(|e| ProbeError::Load(e.to_string()))?;
        let off_ring = RingBuf::try_from(take(&mut ebpf, "OFF_CPU")?).map_err(|e| ProbeError::Load(e.to_string()))?;
        let stacks =
            StackTraceMap::try_from(take(&mut ebpf, "STACKS")?).map_err(|e| ProbeError::Load(e.to_string()))?;
        // the on-CPU sampler: a perf event per CPU; without it (no perf events here), the rest runs
        let (on_ring, sampler_error) = if profiles {
            match attach_sampler(&mut ebpf) {
                Ok(()) => (
                    Some(RingBuf::try_from(take(&mut ebpf, "ON_CPU")?).map_err(|e| ProbeError::Load(e.to_string()))?),
                    None,
                ),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        Ok(Probes {
            inner: Mutex::new(Inner {
                ring,
                tracked,
                stopped,
                counters,
                buffer: VecDeque::new(),
                off_ring,
                stacks,
                off_cpu: VecDeque::new(),
                on_ring,
                on_cpu: VecDeque::new(),
                stack_memo: Default::default(),
                kernel_symbols: KernelSymbols::load_in_background(),
                _ebpf: ebpf,
            }),
            profiles,
            sampler_error,
        })
    }

    /// Whether on-CPU samples are taken; why not, when profiles run without them.
    pub fn sampling(&self) -> Result<bool, String> {
        match &self.sampler_error {
            Some(e) => Err(e.clone()),
            None => Ok(self.profiles),
        }
    }

    /// Whether the scheduler's probes run (off-CPU intervals: the spans' CPU split).
    pub fn profiles(&self) -> bool {
        self.profiles
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // the maps stay usable whatever a panicking holder was doing
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows `pid` and, from now on, every process forked below it.
    pub fn follow(&self, pid: u32) {
        let _ = self.lock().tracked.insert(pid, 0, 0);
    }

    /// Follows the thread `tid` alone (not its process, not what it starts), until
    /// [`Probes::unfollow_thread`] or its exit: engined's thread that makes a container's
    /// network namespace.
    pub fn follow_thread(&self, tid: u32) {
        let _ = self.lock().tracked.insert(tid, 2, 0);
    }

    pub fn unfollow_thread(&self, tid: u32) {
        let _ = self.lock().tracked.remove(&tid);
    }

    /// Stops following the processes of cgroup (v2) `id`: a started container's, whose work is
    /// the user's from now on.
    pub fn stop_cgroup(&self, id: u64) {
        let _ = self.lock().stopped.insert(id, 1, 0);
    }

    /// Follows every process forked below `pid`, without recording `pid`'s own events (for a
    /// process that serves every container, such as lifecycled).
    pub fn follow_children(&self, pid: u32) {
        let _ = self.lock().tracked.insert(pid, 1, 0);
    }

    /// Wall-clock nanoseconds of kernel timestamps: the one conversion of kernel time, with the
    /// offset between the clocks taken as the events are read (so a suspend or an NTP step
    /// since load does not shift them).
    fn wall_clock() -> impl Fn(u64) -> u64 {
        let offset = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC);
        move |ktime_ns| (ktime_ns as i128 + offset).max(0) as u64
    }

    /// Moves what the probes wrote into the buffer; returns how many events were read.
    pub fn drain(&self) -> usize {
        let mut inner = self.lock();
        let read: Vec<Event> = read_records(&mut inner.ring);
        let n = read.len();
        let wall = Self::wall_clock();
        // events no span claimed within a minute never will be
        let horizon = (clock_ns(libc::CLOCK_REALTIME).max(0) as u64).saturating_sub(KEEP_NS);
        while inner.buffer.front().is_some_and(|e| e.wall_ns < horizon) {
            inner.buffer.pop_front();
        }
        for e in read {
            let ev = KernelEvent {
                wall_ns: wall(e.ktime_ns),
                kind: e.kind,
                syscall: e.syscall,
                tgid: e.tgid,
                tid: e.tid,
                args: e.args,
                cgroup_id: e.cgroup_id,
                str0: text(&e.str0[..STR_LEN]),
                str1: text(&e.str1[..STR_LEN]),
                str2: text(&e.str2),
            };
            if inner.buffer.len() == BUFFER {
                inner.buffer.pop_front();
            }
            inner.buffer.push_back(ev);
        }
        let off: Vec<OffCpu> = read_records(&mut inner.off_ring);
        while inner.off_cpu.front().is_some_and(|o| o.start_ns < horizon) {
            inner.off_cpu.pop_front();
        }
        for o in off {
            let stack = if o.blocked_ns > 0 { inner.stack(o.stack_id) } else { None };
            let interval = OffCpuInterval {
                start_ns: wall(o.ktime_ns),
                total_ns: o.total_ns,
                blocked_ns: o.blocked_ns,
                tgid: o.tgid,
                tid: o.tid,
                cgroup_id: o.cgroup_id,
                stack,
            };
            if inner.off_cpu.len() == OFF_CPU_BUFFER {
                inner.off_cpu.pop_front();
            }
            inner.off_cpu.push_back(interval);
        }
        let on: Vec<OnCpu> = inner.on_ring.as_mut().map(read_records).unwrap_or_default();
        while inner.on_cpu.front().is_some_and(|o| o.wall_ns < horizon) {
            inner.on_cpu.pop_front();
        }
        for o in on {
            let sample = OnCpuSample {
                wall_ns: wall(o.ktime_ns),
                tgid: o.tgid,
                tid: o.tid,
                cgroup_id: o.cgroup_id,
                comm: text(&o.comm),
                user: o.stack_id == USER_MODE,
                stack: inner.stack(o.stack_id),
            };
            if inner.on_cpu.len() == ON_CPU_BUFFER {
                inner.on_cpu.pop_front();
            }
            inner.on_cpu.push_back(sample);
        }
        n
    }

    /// Takes the buffered on-CPU samples that `take` wants, in time order (a sample belongs to
    /// the spans of one request).
    pub fn take_on_cpu(&self, mut take: impl FnMut(&OnCpuSample) -> bool) -> Vec<OnCpuSample> {
        let mut inner = self.lock();
        let (mut wanted, kept): (Vec<OnCpuSample>, Vec<OnCpuSample>) = inner.on_cpu.drain(..).partition(|o| take(o));
        inner.on_cpu = kept.into();
        wanted.sort_by_key(|o| o.wall_ns);
        wanted
    }

    /// Copies of the buffered events that `want` wants (they stay for their own spans).
    pub fn events(&self, mut want: impl FnMut(&KernelEvent) -> bool) -> Vec<KernelEvent> {
        self.lock().buffer.iter().filter(|e| want(e)).cloned().collect()
    }

    /// The buffered off-CPU intervals that `want` wants (copies: the intervals stay, as every
    /// span around them sums them), in time order.
    pub fn off_cpu(&self, mut want: impl FnMut(&OffCpuInterval) -> bool) -> Vec<OffCpuInterval> {
        let inner = self.lock();
        let mut out: Vec<OffCpuInterval> = inner.off_cpu.iter().filter(|o| want(o)).cloned().collect();
        out.sort_by_key(|o| o.start_ns);
        out
    }

    /// Whether a buffered event is one `want` wants (the events stay).
    pub fn any(&self, want: impl FnMut(&KernelEvent) -> bool) -> bool {
        self.lock().buffer.iter().any(want)
    }

    /// Takes the buffered events that `take` wants, in time order.
    pub fn take(&self, mut take: impl FnMut(&KernelEvent) -> bool) -> Vec<KernelEvent> {
        let mut inner = self.lock();
        let (wanted, kept): (Vec<KernelEvent>, Vec<KernelEvent>) = inner.buffer.drain(..).partition(|e| take(e));
        inner.buffer = kept.into();
        let mut wanted = wanted;
        wanted.sort_by_key(|e| e.wall_ns);
        wanted
    }

    /// Events seen, sent and dropped by the probes so far.
    pub fn counters(&self) -> Counters {
        let inner = self.lock();
        let sum = |i: u32| inner.counters.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        Counters {
            seen: sum(counter::SEEN),
            sent: sum(counter::SENT),
            dropped: sum(counter::DROPPED),
            off_cpu_sent: sum(counter::OFF_CPU_SENT),
            off_cpu_dropped: sum(counter::OFF_CPU_DROPPED),
            stacks_lost: sum(counter::STACK_LOST),
            on_cpu_sent: sum(counter::ON_CPU_SENT),
            on_cpu_dropped: sum(counter::ON_CPU_DROPPED),
        }
    }
}

/// Every record waiting in `ring`, as the probes wrote them.
///
/// Only for the `#[repr(C)]` plain-data records of `engine_probes_common` that the ring's
/// program writes (one type per ring).
fn read_records<T: Copy>(ring: &mut RingBuf<MapData>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<T>() {
            // SAFETY: the ring's program writes whole `T`s (the same #[repr(C)] type, plain data,
            // any bit pattern valid); unaligned read.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const T) });
        }
    }
    out
}

/// Loads the on-CPU sampler and attaches it to a CPU clock of every online CPU.
fn attach_sampler(ebpf: &mut Ebpf) -> Result<(), String> {
    let p: &mut PerfEvent = ebpf
        .program_mut("on_cpu")
        .ok_or("no program on_cpu")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load().map_err(|e| format!("loading the on-CPU sampler: {e}"))?;
    let cpus = aya::util::online_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
    for cpu in cpus {
        p.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(ON_CPU_HZ),
            false,
        )
        .map_err(|e| format!("sampling CPU {cpu}: {e}"))?;
    }
    Ok(())
}

impl Inner {
    /// The symbolized stack `id`: from the memo, or read from the map (and taken out of it, so
    /// the map never fills: the same stack gets the same id again).
    fn stack(&mut self, id: i64) -> Option<Stack> {
        if id < 0 {
            return None;
        }
        if let Some(s) = self.stack_memo.get(&id) {
            return Some(s.clone());
        }
        let trace = self.stacks.get(&(id as u32), 0).ok()?;
        let _ = self.stacks.remove(&(id as u32));
        let symbols = self.kernel_symbols.wait();
        let frames: Stack =
            trace.frames().iter().take(STACK_FRAMES).map(|f| symbols.name(f.ip)).collect::<Vec<_>>().into();
        if self.stack_memo.len() >= STACK_MEMO {
            self.stack_memo.clear();
        }
        self.stack_memo.insert(id, frames.clone());
        Some(frames)
    }
}

/// The kernel's functions by address (`/proc/kallsyms`' text symbols), sorted.
pub struct KernelSymbols(Vec<(u64, Box<str>)>);

impl KernelSymbols {
    /// Reads `/proc/kallsyms` (about 120 000 lines; empty when it cannot be read).
    pub fn load() -> KernelSymbols {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let mut out: Vec<(u64, Box<str>)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let kind = f.next()?;
                let name = f.next()?;
                (addr != 0 && matches!(kind, "t" | "T" | "W" | "w")).then(|| (addr, name.into()))
            })
            .collect();
        out.sort_unstable_by_key(|(a, _)| *a);
        KernelSymbols(out)
    }

    /// Loads them on a thread of its own, so nothing that needs them early waits for all of it.
    fn load_in_background() -> Arc<OnceLock<KernelSymbols>> {
        let cell = Arc::new(OnceLock::new());
        let fill = cell.clone();
        let spawned = std::thread::Builder::new().name("kallsyms".into()).spawn(move || {
            let _ = fill.set(KernelSymbols::load());
        });
        if spawned.is_err() {
            let _ = cell.set(KernelSymbols::load());
        }
        cell
    }

    /// The function holding `ip`, or the address.
    pub fn name(&self, ip: u64) -> String {
        match self.0.partition_point(|(a, _)| *a <= ip) {
            0 => format!("{ip:#x}"),
            i => self.0[i - 1].1.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_name_their_function() {
        let s = KernelSymbols(vec![(0x1000, "a".into()), (0x2000, "b".into())]);
        assert_eq!((s.name(0x1000).as_str(), s.name(0x1fff).as_str(), s.name(0x2001).as_str()), ("a", "a", "b"));
        assert_eq!(s.name(0x10), "0x10");
    }
}
