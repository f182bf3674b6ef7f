//! The record the eBPF probes put in the ring buffer and the collector reads, shared by both
//! sides (the probes are built for `bpfel-unknown-none`, so this is `no_std` and plain data).
//!
//! Must never: hold anything but `#[repr(C)]` plain data and constants; both sides must agree on
//! its layout byte for byte.
#![no_std]

/// Longest string kept per field (paths, filesystem types); longer ones are cut.
pub const STR_LEN: usize = 120;

/// What an [`Event`] records.
pub mod kind {
    pub const SYSCALL_ENTER: u32 = 1;
    pub const SYSCALL_EXIT: u32 = 2;
    pub const FORK: u32 = 3;
    pub const EXEC: u32 = 4;
    pub const EXIT: u32 = 5;
    pub const CGROUP_MKDIR: u32 = 6;
    pub const CGROUP_ATTACH: u32 = 7;
}

/// The traced system calls.
pub mod syscall {
    pub const CLONE: u32 = 1;
    pub const CLONE3: u32 = 2;
    pub const UNSHARE: u32 = 3;
    pub const SETNS: u32 = 4;
    pub const MOUNT: u32 = 5;
    pub const UMOUNT2: u32 = 6;
    pub const PIVOT_ROOT: u32 = 7;
    pub const EXECVE: u32 = 8;

    /// The name of a traced call (`kernel.<name>` spans).
    pub fn name(id: u32) -> &'static str {
        match id {
            CLONE => "clone",
            CLONE3 => "clone3",
            UNSHARE => "unshare",
            SETNS => "setns",
            MOUNT => "mount",
            UMOUNT2 => "umount2",
            PIVOT_ROOT => "pivot_root",
            EXECVE => "execve",
            _ => "unknown",
        }
    }
}

/// Indexes of the counters array.
pub mod counter {
    /// Events of followed processes.
    pub const SEEN: u32 = 0;
    /// Put in the ring buffer.
    pub const SENT: u32 = 1;
    /// Lost: the ring buffer was full.
    pub const DROPPED: u32 = 2;
    /// Off-CPU intervals put in their ring buffer.
    pub const OFF_CPU_SENT: u32 = 3;
    /// Off-CPU intervals lost: their ring buffer was full.
    pub const OFF_CPU_DROPPED: u32 = 4;
    /// Off-CPU intervals and on-CPU samples whose kernel stack could not be kept (the stack map
    /// was full).
    pub const STACK_LOST: u32 = 5;
    /// On-CPU samples put in their ring buffer.
    pub const ON_CPU_SENT: u32 = 6;
    /// On-CPU samples lost: their ring buffer was full.
    pub const ON_CPU_DROPPED: u32 = 7;
    /// Slots of the counters array.
    pub const LEN: u32 = 8;
}

/// Offsets into tracepoint records that differ between kernels, read by the collector from
/// tracefs `format` files and handed to the probes in the `LAYOUT` map.
pub mod layout {
    pub const FORK_CHILD_PID: usize = 0;
    pub const EXEC_FILENAME: usize = 1;
    pub const MKDIR_PATH: usize = 2;
    pub const ATTACH_PID: usize = 3;
    pub const ATTACH_PATH: usize = 4;
    pub const MKDIR_ROOT: usize = 5;
    pub const MKDIR_ID: usize = 6;
    pub const ATTACH_ROOT: usize = 7;
    pub const SWITCH_PREV_STATE: usize = 8;
    pub const SWITCH_NEXT_PID: usize = 9;
    pub const WAKEUP_PID: usize = 10;
    pub const LEN: usize = 11;
}

/// One kernel event of a followed process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    pub kind: u32,
    pub syscall: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Arguments (enter), the return value (exit, in `args[0]`), the child pid (fork), the
    /// cgroup id, hierarchy and level (mkdir), the attached pid and hierarchy (attach).
    pub args: [u64; 4],
    // (a fork's `str2` holds the forking task's command)
    pub cgroup_id: u64,
    pub str0: [u8; STR_LEN],
    pub str1: [u8; STR_LEN],
    pub str2: [u8; 32],
}

/// One interval a followed thread spent off its CPU: switched out at `ktime_ns` (blocked when
/// `prev_state` was not `TASK_RUNNING`, preempted otherwise), woken `blocked_ns` later (made
/// runnable), back on a CPU `total_ns` after it left; what it waited for is the kernel stack
/// `stack_id` (in the `STACKS` map, negative when none was kept). Sent when the thread runs
/// again, in a ring buffer of its own, so a busy process can never crowd out the events above.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OffCpu {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the switch out.
    pub ktime_ns: u64,
    pub total_ns: u64,
    /// The part before the wake-up; the rest (`total_ns - blocked_ns`) waited for a CPU.
    pub blocked_ns: u64,
    pub cgroup_id: u64,
    pub stack_id: i64,
    pub tgid: u32,
    pub tid: u32,
}

/// `OnCpu::stack_id` of a sample taken in user mode (no kernel stack).
pub const USER_MODE: i64 = -2;

/// One on-CPU sample of a followed thread: the CPU's sampling clock fired (at
/// `ON_CPU_HZ`) while it ran, in the kernel at `stack_id` (in the `STACKS` map), or in user mode
/// ([`USER_MODE`]), or with its stack not kept (-1). Sent in a ring buffer of its own.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OnCpu {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the sample.
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub stack_id: i64,
    pub tgid: u32,
    pub tid: u32,
    /// The thread's command (`comm`), NUL-padded.
    pub comm: [u8; 16],
}

/// How often each CPU is sampled, per second (a prime, so the samples do not beat with
/// periodic work).
pub const ON_CPU_HZ: u64 = 997;
