//! The engine's eBPF probes: tracepoints that record the namespace, mount, cgroup and exec work of
//! the processes engined follows (`TRACKED`: lifecycled, and every process forked below it), as
//! [`Event`]s in a ring buffer the collector drains on its own schedule (submitted without
//! wakeups: waking the reader per event costs ~20 µs here).
//!
//! Must never: record a process that is not followed, block, or loop unboundedly (the verifier
//! would refuse it anyway).
#![no_std]
#![no_main]

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
};
use aya_ebpf::macros::{map, perf_event, tracepoint};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace};
use aya_ebpf::programs::tracing::StackIdContext;
use aya_ebpf::programs::{PerfEventContext, TracePointContext};
use aya_ebpf::EbpfContext;
use engine_probes_common::{counter, kind, layout, syscall, Event, OffCpu, OnCpu, USER_MODE};

/// Followed processes (and threads), by kernel pid: `FULL`, `QUIET` (a root whose children are
/// followed, its own events not recorded: lifecycled), or `THREAD` (keyed by a thread id: that
/// thread alone).
#[map]
static TRACKED: HashMap<u32, u32> = HashMap::with_max_entries(32768, 0);

/// Cgroup (v2) ids of containers that have started: their processes run the user's work, which
/// is no longer followed.
#[map]
static STOPPED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(8192, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// Off-CPU intervals of followed threads ([`OffCpu`]), apart from `EVENTS`.
#[map]
static OFF_CPU: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// On-CPU samples of followed threads ([`OnCpu`]), apart from the others.
#[map]
static ON_CPU: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// A followed thread switched out and not yet back, by thread id.
#[map]
static SWITCHED_OUT: LruHashMap<u32, SwitchedOut> = LruHashMap::with_max_entries(16384, 0);

/// Kernel stacks of the switches out, by id (the hash of their addresses).
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(4096, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct SwitchedOut {
    ktime_ns: u64,
    /// When it was made runnable again; 0 until then (and for a preempted thread, never set).
    woken_ns: u64,
    cgroup_id: u64,
    stack_id: i64,
    tgid: u32,
    /// It blocked (1) or was preempted, still runnable (0).
    blocked: u32,
}

/// Tracepoint record offsets for this kernel (see `engine_probes_common::layout`).
#[map]
static LAYOUT: Array<[u32; layout::LEN]> = Array::with_max_entries(1, 0);

/// `BPF_RB_NO_WAKEUP`: the collector polls instead.
const NO_WAKEUP: u64 = 1;

/// Offset of the first argument in a `syscalls/sys_enter_*` record, and of `ret` in `sys_exit_*`.
const ARGS: usize = 16;

fn bump(i: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(i) {
        // SAFETY: a per-CPU slot of our own array; nothing else runs on this CPU meanwhile.
        unsafe { *p += 1 };
    }
}

/// Value of a `TRACKED` entry: the process and its children, recorded.
const FULL: u32 = 0;
/// Value of a `TRACKED` entry: the process's children only (a quiet root such as lifecycled).
const QUIET: u32 = 1;
/// Value of a `TRACKED` entry keyed by a thread id: that thread only, recorded, no children
/// (a thread of engined making a container's network namespace).
const THREAD: u32 = 2;

/// The calling task's (tgid, tid, mode) when its process, or the thread itself, is followed.
fn tracked() -> Option<(u32, u32, u32)> {
    let pt = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pt >> 32) as u32, pt as u32);
    // SAFETY: plain u32 reads of our own map's values.
    let mode = match unsafe { TRACKED.get(&tgid) } {
        Some(v) if *v != THREAD => *v,
        _ => match unsafe { TRACKED.get(&tid) } {
            Some(v) if *v == THREAD => THREAD,
            _ => return None,
        },
    };
    // SAFETY: only the presence of the key is used.
    if mode != THREAD && unsafe { STOPPED.get(&bpf_get_current_cgroup_id()) }.is_some() {
        let _ = TRACKED.remove(&tgid);
        return None;
    }
    Some((tgid, tid, mode))
}

/// The calling task's (tgid, tid) when its events are recorded.
fn followed() -> Option<(u32, u32)> {
    match tracked()? {
        (_, _, QUIET) => None,
        (tgid, tid, _) => Some((tgid, tid)),
    }
}

fn layout_at(i: usize) -> usize {
    LAYOUT.get(0).map(|l| l[i] as usize).unwrap_or(0)
}

/// Reserves an event for the calling task, fills the common part and lets `fill` do the rest.
#[inline(always)]
fn emit(tgid: u32, tid: u32, k: u32, fill: impl FnOnce(&mut Event)) {
    bump(counter::SEEN);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(counter::DROPPED);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved record of size_of::<Event>() bytes owned by us until submit.
    unsafe {
        core::ptr::write_bytes(e, 0, 1);
        let e = &mut *e;
        e.ktime_ns = bpf_ktime_get_ns();
        e.kind = k;
        e.tgid = tgid;
        e.tid = tid;
        e.cgroup_id = bpf_get_current_cgroup_id();
        fill(e);
    }
    entry.submit(NO_WAKEUP);
    bump(counter::SENT);
}

fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: syscall tracepoint records hold six 8-byte arguments from offset 16.
    unsafe { ctx.read_at::<u64>(ARGS + 8 * i) }.unwrap_or(0)
}

fn user_str(ptr: u64, dest: &mut [u8]) {
    if ptr != 0 {
        // SAFETY: the helper checks the user address and bounds the copy by `dest`.
        let _ = unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, dest) };
    }
}

/// A `__data_loc char[]` field of the tracepoint record at `field` into `dest`.
fn data_loc_str(ctx: &TracePointContext, field: usize, dest: &mut [u8]) {
    if field == 0 {
        return;
    }
    // SAFETY: `field` comes from this kernel's format file; the helper bounds the copy.
    unsafe {
        if let Ok(loc) = ctx.read_at::<u32>(field) {
            let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
            let _ = bpf_probe_read_kernel_str_bytes(src, dest);
        }
    }
}

#[inline(always)]
fn enter(ctx: &TracePointContext, call: u32) -> u32 {
    let Some((tgid, tid)) = followed() else { return 0 };
    let a = [arg(ctx, 0), arg(ctx, 1), arg(ctx, 2), arg(ctx, 3)];
    emit(tgid, tid, kind::SYSCALL_ENTER, |e| {
        e.syscall = call;
        e.args = a;
        match call {
            // struct clone_args starts with its u64 flags
            // SAFETY: the helper checks the user address.
            syscall::CLONE3 => e.args[1] = unsafe { bpf_probe_read_user(a[0] as *const u64) }.unwrap_or(0),
            syscall::MOUNT => {
                user_str(a[0], &mut e.str0);
                user_str(a[1], &mut e.str1);
                user_str(a[2], &mut e.str2);
            }
            syscall::UMOUNT2 => user_str(a[0], &mut e.str1),
            syscall::PIVOT_ROOT => {
                user_str(a[0], &mut e.str0);
                user_str(a[1], &mut e.str1);
            }
            syscall::EXECVE => user_str(a[0], &mut e.str0),
            _ => {}
        }
    });
    0
}

#[inline(always)]
fn exit(ctx: &TracePointContext, call: u32) -> u32 {
    let Some((tgid, tid)) = followed() else { return 0 };
    let ret = arg(ctx, 0);
    emit(tgid, tid, kind::SYSCALL_EXIT, |e| {
        e.syscall = call;
        e.args[0] = ret;
    });
    0
}

macro_rules! syscall_pair {
    ($enter:ident, $exit:ident, $call:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter(&ctx, $call)
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx, $call)
        }
    };
}

syscall_pair!(sys_enter_clone, sys_exit_clone, syscall::CLONE);
syscall_pair!(sys_enter_clone3, sys_exit_clone3, syscall::CLONE3);
syscall_pair!(sys_enter_unshare, sys_exit_unshare, syscall::UNSHARE);
syscall_pair!(sys_enter_setns, sys_exit_setns, syscall::SETNS);
syscall_pair!(sys_enter_mount, sys_exit_mount, syscall::MOUNT);
syscall_pair!(sys_enter_umount, sys_exit_umount, syscall::UMOUNT2);
syscall_pair!(sys_enter_pivot_root, sys_exit_pivot_root, syscall::PIVOT_ROOT);
syscall_pair!(sys_enter_execve, sys_exit_execve, syscall::EXECVE);

/// A followed process's children are followed.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid, mode)) = tracked() else { return 0 };
    if mode == THREAD {
        return 0; // a followed thread's new threads or processes are not followed
    }
    let quiet = mode == QUIET;
    // SAFETY: the offset comes from this kernel's format file.
    let child: u32 = unsafe { ctx.read_at::<i32>(layout_at(layout::FORK_CHILD_PID)) }.unwrap_or(0) as u32;
    if child == 0 {
        return 0;
    }
    // children are followed in full (a quiet root's threads share its tgid, so stay quiet)
    let _ = TRACKED.insert(&child, &FULL, 0);
    if !quiet {
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        emit(tgid, tid, kind::FORK, |e| {
            e.args[0] = child as u64;
            e.str2[..16].copy_from_slice(&comm);
        });
    }
    0
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = followed() else { return 0 };
    emit(tgid, tid, kind::EXEC, |e| data_loc_str(&ctx, layout_at(layout::EXEC_FILENAME), &mut e.str0));
    0
}

/// A task that exits is no longer followed.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pt = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pt >> 32) as u32, pt as u32);
    // SAFETY: only the presence of the key is used.
    if unsafe { TRACKED.get(&tid) }.is_none() {
        return 0;
    }
    let _ = TRACKED.remove(&tid);
    let _ = SWITCHED_OUT.remove(&tid);
    if tid == tgid {
        emit(tgid, tid, kind::EXIT, |_| {});
    }
    0
}

#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = followed() else { return 0 };
    // SAFETY: the offsets come from this kernel's format file.
    let (root, id) = unsafe {
        (
            ctx.read_at::<i32>(layout_at(layout::MKDIR_ROOT)).unwrap_or(0),
            ctx.read_at::<u64>(layout_at(layout::MKDIR_ID)).unwrap_or(0),
        )
    };
    emit(tgid, tid, kind::CGROUP_MKDIR, |e| {
        e.args = [id, root as u64, 0, 0];
        data_loc_str(&ctx, layout_at(layout::MKDIR_PATH), &mut e.str0);
    });
    0
}

#[tracepoint]
pub fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = followed() else { return 0 };
    // SAFETY: the offsets come from this kernel's format file.
    let (root, pid) = unsafe {
        (
            ctx.read_at::<i32>(layout_at(layout::ATTACH_ROOT)).unwrap_or(0),
            ctx.read_at::<i32>(layout_at(layout::ATTACH_PID)).unwrap_or(0),
        )
    };
    emit(tgid, tid, kind::CGROUP_ATTACH, |e| {
        e.args = [pid as u64, root as u64, 0, 0];
        data_loc_str(&ctx, layout_at(layout::ATTACH_PATH), &mut e.str0);
    });
    0
}

fn now_ns() -> u64 {
    // SAFETY: reads the monotonic clock; no arguments.
    unsafe { bpf_ktime_get_ns() }
}

fn current_cgroup() -> u64 {
    // SAFETY: reads the current task's cgroup id; no arguments.
    unsafe { bpf_get_current_cgroup_id() }
}

/// `prev_state` bits of a task that is dead or a zombie: it will not run again.
const EXITING: i64 = 0x10 | 0x20;
/// `prev_state` bits of a task that blocked (below `TASK_REPORT_MAX`, 0x100, which marks a
/// preempted one).
const BLOCKING: i64 = 0xff;

/// A followed thread leaves its CPU: when, why (blocked or preempted) and where in the kernel
/// (its stack); a thread coming back to a CPU after it was followed out ends its interval.
#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    if let Some((tgid, tid)) = followed() {
        // SAFETY: the offset comes from this kernel's format file.
        let state = unsafe { ctx.read_at::<i64>(layout_at(layout::SWITCH_PREV_STATE)) }.unwrap_or(0);
        if state & EXITING == 0 {
            let blocked = state & BLOCKING != 0;
            // a preempted thread's stack says nothing of what it waits for (a CPU)
            let stack_id = match blocked.then(|| ctx.get_stackid(&STACKS, 0)) {
                None => -1,
                Some(Ok(id)) => id,
                Some(Err(_)) => {
                    bump(counter::STACK_LOST);
                    -1
                }
            };
            let out = SwitchedOut {
                ktime_ns: now_ns(),
                woken_ns: 0,
                cgroup_id: current_cgroup(),
                stack_id,
                tgid,
                blocked: blocked as u32,
            };
            let _ = SWITCHED_OUT.insert(&tid, &out, 0);
        }
    }
    // SAFETY: the offset comes from this kernel's format file.
    let next = unsafe { ctx.read_at::<i32>(layout_at(layout::SWITCH_NEXT_PID)) }.unwrap_or(0) as u32;
    if next == 0 {
        return 0;
    }
    // SAFETY: a copy of our own map's value.
    let Some(out) = (unsafe { SWITCHED_OUT.get(&next) }).copied() else { return 0 };
    let _ = SWITCHED_OUT.remove(&next);
    let now = now_ns();
    let total = now.saturating_sub(out.ktime_ns);
    let blocked = match (out.blocked, out.woken_ns) {
        (0, _) => 0,
        (_, 0) => total, // woken where no wake-up tracepoint fires: all of it counts as blocked
        (_, w) => w.saturating_sub(out.ktime_ns).min(total),
    };
    let Some(mut entry) = OFF_CPU.reserve::<OffCpu>(0) else {
        bump(counter::OFF_CPU_DROPPED);
        return 0;
    };
    entry.write(OffCpu {
        ktime_ns: out.ktime_ns,
        total_ns: total,
        blocked_ns: blocked,
        cgroup_id: out.cgroup_id,
        stack_id: out.stack_id,
        tgid: out.tgid,
        tid: next,
    });
    entry.submit(NO_WAKEUP);
    bump(counter::OFF_CPU_SENT);
    0
}

/// A followed thread that blocked is made runnable: the rest of its interval waits for a CPU.
#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from this kernel's format file.
    let pid = unsafe { ctx.read_at::<i32>(layout_at(layout::WAKEUP_PID)) }.unwrap_or(0) as u32;
    if let Some(out) = SWITCHED_OUT.get_ptr_mut(&pid) {
        // SAFETY: our own map's value; a racing update of the same slot is as good as ours.
        unsafe {
            if (*out).blocked != 0 && (*out).woken_ns == 0 {
                (*out).woken_ns = now_ns();
            }
        }
    }
    0
}

/// `bpf_get_stackid`'s error for an empty kernel stack: the sample was taken in user mode.
const EFAULT: i32 = -14;

/// A CPU's sampling clock fired while a followed thread ran: where it was (its kernel stack, or
/// user mode), for the on-CPU profile of its span.
#[perf_event]
pub fn on_cpu(ctx: PerfEventContext) -> u32 {
    let Some((tgid, tid)) = followed() else { return 0 };
    let stack_id = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id,
        Err(EFAULT) => USER_MODE,
        Err(_) => {
            bump(counter::STACK_LOST);
            -1
        }
    };
    let Some(mut entry) = ON_CPU.reserve::<OnCpu>(0) else {
        bump(counter::ON_CPU_DROPPED);
        return 0;
    };
    entry.write(OnCpu {
        ktime_ns: now_ns(),
        cgroup_id: current_cgroup(),
        stack_id,
        tgid,
        tid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(NO_WAKEUP);
    bump(counter::ON_CPU_SENT);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
