//! The catalogue of span names: every span an engine process records is named here, once.
//! Dashboards, `engine bench` and the tests key on these names, so they are part of the telemetry
//! contract: renaming one is a breaking change. Names are `<layer>.<step>`; the CLI's root span
//! is `engine.<command>` and engined's request spans are `<METHOD> <route template>`.

// engined: phases of its operations, and its own work
pub const DAEMON_CREATE: &str = "daemon.create";
pub const DAEMON_SNAPSHOT: &str = "daemon.snapshot";
pub const DAEMON_SPEC: &str = "daemon.spec";
pub const DAEMON_START: &str = "daemon.start";
pub const DAEMON_STOP: &str = "daemon.stop";
pub const DAEMON_NETWORK: &str = "daemon.network";
/// A container's exit on its way back (shim, lifecycled) and engined's work after it (its
/// task's delete, auto-removal): a span under the
/// request span of a client waiting on the container (`run` waits), in the client's trace, or
/// the root of a trace of its own when nobody waits.
pub const DAEMON_EXIT: &str = "daemon.exit";
/// An auto-removal (`--rm`) after an exit, under `daemon.exit`.
pub const DAEMON_REMOVE: &str = "daemon.remove";
/// The container's run, from the start of its task (the program begins within
/// `lifecycle.Tasks/Start`) to its exit (`process.exit.code`), as a waiting client's trace shows
/// it beside `daemon.exit` (which runs from the exit to engined's work after it).
pub const CONTAINER_RUN: &str = "container.run";
/// The root of one container's reconciliation at engined's start (what was found, what done).
pub const DAEMON_RECOVER: &str = "daemon.recover";
/// The root of a collection of orphans (what containers engined has no record of left) that
/// found any: one `daemon.orphan` child per thing found.
pub const DAEMON_COLLECT: &str = "daemon.collect";
/// One orphan collected (`orphan.kind`, `container.id`, `orphan.path`); failed if it stayed.
pub const DAEMON_ORPHAN: &str = "daemon.orphan";
/// The root of a start a restart policy asks for.
pub const DAEMON_POLICY_START: &str = "daemon.policy_start";
pub const DAEMON_SHUTDOWN: &str = "daemon.shutdown";
pub const DAEMON_PULL: &str = "daemon.pull";
pub const DAEMON_PUSH: &str = "daemon.push";
/// The root of one health check of a container (its exec under it).
pub const DAEMON_HEALTH: &str = "daemon.health";
/// A container's changes made into an image (`image.id` once made), its pause around it.
pub const DAEMON_COMMIT: &str = "daemon.commit";
/// The root of a build's work (`POST /build`): one `build.step` per instruction under it.
pub const DAEMON_BUILD: &str = "daemon.build";
/// One Dockerfile instruction (`build.instruction`, `build.stage`, `build.cache_hit`, the
/// size of the layer it made in `build.layer.size`); a RUN's
/// whole container start and its commit under it.
pub const BUILD_STEP: &str = "build.step";
/// A registry's manifest (through its index) resolved for the platform, with authentication.
pub const REGISTRY_RESOLVE: &str = "registry.resolve";
/// One blob downloaded (an HTTP client span).
pub const REGISTRY_BLOB: &str = "registry.blob";
/// One blob uploaded (an HTTP client span).
pub const REGISTRY_UPLOAD: &str = "registry.upload";
/// A manifest put under its tag.
pub const REGISTRY_MANIFEST: &str = "registry.manifest";
/// One layer unpacked into the store.
pub const IMAGE_UNPACK: &str = "image.unpack";
pub const NETWORK_NAMESPACE: &str = "network.namespace";
pub const NETWORK_ENDPOINT: &str = "network.endpoint";
pub const NETWORK_HOSTS: &str = "network.hosts";
pub const NETWORK_PROXY: &str = "network.proxy";
/// The container's embedded DNS server bound in its namespace (user networks).
pub const NETWORK_DNS: &str = "network.dns";
/// One lookup a container made through the embedded DNS server in its first seconds
/// (`dns.question.name`, `dns.question.type`, `dns.response.code`, `dns.answers`,
/// `server.address` of the upstream), in its start's trace.
pub const DNS_QUERY: &str = "dns.query";
/// A CRI pod's network attached through its CNI plugins (ADD through the chain;
/// `cni.network`, `cni.ips`).
pub const CNI_ADD: &str = "cni.add";
/// A CRI pod's network detached (DEL through the chain in reverse).
pub const CNI_DEL: &str = "cni.del";

// engine-lifecycled: one server span per call, `lifecycle.<Service>/<Method>`
pub const LIFECYCLE_CONTAINERS_CREATE: &str = "lifecycle.Containers/Create";
pub const LIFECYCLE_CONTAINERS_DELETE: &str = "lifecycle.Containers/Delete";
pub const LIFECYCLE_TASKS_CREATE: &str = "lifecycle.Tasks/Create";
pub const LIFECYCLE_TASKS_START: &str = "lifecycle.Tasks/Start";
pub const LIFECYCLE_TASKS_KILL: &str = "lifecycle.Tasks/Kill";
pub const LIFECYCLE_TASKS_DELETE: &str = "lifecycle.Tasks/Delete";
pub const LIFECYCLE_TASKS_EXEC: &str = "lifecycle.Tasks/Exec";
pub const LIFECYCLE_TASKS_PAUSE: &str = "lifecycle.Tasks/Pause";
pub const LIFECYCLE_TASKS_RESUME: &str = "lifecycle.Tasks/Resume";
pub const LIFECYCLE_TASKS_UPDATE: &str = "lifecycle.Tasks/Update";

// engine-shim: one server span per call, `shim.<method>`
pub const SHIM_CREATE: &str = "shim.create";
pub const SHIM_START: &str = "shim.start";
pub const SHIM_KILL: &str = "shim.kill";
pub const SHIM_DELETE: &str = "shim.delete";
pub const SHIM_EXEC: &str = "shim.exec";
pub const SHIM_PAUSE: &str = "shim.pause";
pub const SHIM_RESUME: &str = "shim.resume";
pub const SHIM_UPDATE: &str = "shim.update";

// engine-runtime: one span per command and per step of a create
pub const RUNTIME_CREATE: &str = "runtime.create";
pub const RUNTIME_SPEC: &str = "runtime.spec";
pub const RUNTIME_CGROUP: &str = "runtime.cgroup";
pub const RUNTIME_CGROUP_ATTACH: &str = "runtime.cgroup.attach";
pub const RUNTIME_NAMESPACES: &str = "runtime.namespaces";
pub const RUNTIME_HOOKS_CREATE_RUNTIME: &str = "runtime.hooks.createRuntime";
/// The container's first process, from the clone to the wait for `start`.
pub const RUNTIME_INIT: &str = "runtime.init";
pub const RUNTIME_SETNS: &str = "runtime.setns";
pub const RUNTIME_ROOTFS: &str = "runtime.rootfs";
pub const RUNTIME_HOOKS_CREATE_CONTAINER: &str = "runtime.hooks.createContainer";
pub const RUNTIME_PIVOT_ROOT: &str = "runtime.pivot_root";
pub const RUNTIME_PROCESS: &str = "runtime.process";
pub const RUNTIME_START: &str = "runtime.start";
pub const RUNTIME_EXEC: &str = "runtime.exec";
pub const RUNTIME_KILL: &str = "runtime.kill";
pub const RUNTIME_DELETE: &str = "runtime.delete";
pub const RUNTIME_PAUSE: &str = "runtime.pause";
pub const RUNTIME_RESUME: &str = "runtime.resume";
pub const RUNTIME_UPDATE: &str = "runtime.update";

// engine-init
/// The exec of the user's program, the last step of a traced start.
pub const INIT_EXEC: &str = "init.exec";

// the kernel, from the eBPF probes: `kernel.<syscall>` spans and these point events
pub const KERNEL_CLONE3: &str = "kernel.clone3";
pub const KERNEL_FORK: &str = "kernel.fork";
pub const KERNEL_EXEC: &str = "kernel.exec";
pub const KERNEL_EXIT: &str = "kernel.exit";
pub const KERNEL_CGROUP_MKDIR: &str = "kernel.cgroup_mkdir";
pub const KERNEL_CGROUP_ATTACH: &str = "kernel.cgroup_attach";
/// Where a span's thread blocked longest (a span event: `linux.kernel.stack`, `engine.cpu.off_ns`).
pub const KERNEL_BLOCKED: &str = "kernel.blocked";
/// Where a span's thread (or a process it started, such as a hook) ran when sampled most often
/// (a span event: `linux.kernel.stack`, `[user] <command>` for its own code,
/// `linux.perf.samples`, `engine.cpu.on_ns` as the samples' share of time).
pub const KERNEL_ON_CPU: &str = "kernel.on_cpu";

/// A span's time on its CPU, blocked, and runnable waiting for a CPU (the eBPF probes' view of
/// the span's thread; the three add up to the span's duration).
pub const ATTR_CPU_ON_NS: &str = "engine.cpu.on_ns";
pub const ATTR_CPU_OFF_NS: &str = "engine.cpu.off_ns";
pub const ATTR_CPU_RUNQ_NS: &str = "engine.cpu.runq_ns";
/// A kernel stack, innermost function first, the scheduler's own frames left out
/// (`synchronize_rcu ← cgroup_attach_task ← …`).
pub const ATTR_KERNEL_STACK: &str = "linux.kernel.stack";
/// On-CPU samples taken of a span's thread and the processes it started while it was open.
pub const ATTR_PERF_SAMPLES: &str = "linux.perf.samples";
/// The process a `kernel.on_cpu` event's samples are of, when the span's process started it.
pub const ATTR_PERF_SAMPLED_PID: &str = "linux.perf.sampled_pid";

/// Every name above (`kernel.<syscall>` spans and request spans aside).
pub const ALL: &[&str] = &[
    DAEMON_CREATE,
    DAEMON_SNAPSHOT,
    DAEMON_SPEC,
    DAEMON_START,
    DAEMON_STOP,
    DAEMON_NETWORK,
    DAEMON_EXIT,
    DAEMON_REMOVE,
    CONTAINER_RUN,
    DAEMON_RECOVER,
    DAEMON_COLLECT,
    DAEMON_ORPHAN,
    DAEMON_POLICY_START,
    DAEMON_SHUTDOWN,
    DAEMON_PULL,
    DAEMON_PUSH,
    DAEMON_HEALTH,
    DAEMON_COMMIT,
    DAEMON_BUILD,
    BUILD_STEP,
    REGISTRY_RESOLVE,
    REGISTRY_BLOB,
    REGISTRY_UPLOAD,
    REGISTRY_MANIFEST,
    IMAGE_UNPACK,
    NETWORK_NAMESPACE,
    NETWORK_ENDPOINT,
    NETWORK_HOSTS,
    NETWORK_PROXY,
    NETWORK_DNS,
    DNS_QUERY,
    CNI_ADD,
    CNI_DEL,
    LIFECYCLE_CONTAINERS_CREATE,
    LIFECYCLE_CONTAINERS_DELETE,
    LIFECYCLE_TASKS_CREATE,
    LIFECYCLE_TASKS_START,
    LIFECYCLE_TASKS_KILL,
    LIFECYCLE_TASKS_DELETE,
    LIFECYCLE_TASKS_EXEC,
    LIFECYCLE_TASKS_PAUSE,
    LIFECYCLE_TASKS_RESUME,
    LIFECYCLE_TASKS_UPDATE,
    SHIM_CREATE,
    SHIM_START,
    SHIM_KILL,
    SHIM_DELETE,
    SHIM_EXEC,
    SHIM_PAUSE,
    SHIM_RESUME,
    SHIM_UPDATE,
    RUNTIME_CREATE,
    RUNTIME_SPEC,
    RUNTIME_CGROUP,
    RUNTIME_CGROUP_ATTACH,
    RUNTIME_NAMESPACES,
    RUNTIME_HOOKS_CREATE_RUNTIME,
    RUNTIME_INIT,
    RUNTIME_SETNS,
    RUNTIME_ROOTFS,
    RUNTIME_HOOKS_CREATE_CONTAINER,
    RUNTIME_PIVOT_ROOT,
    RUNTIME_PROCESS,
    RUNTIME_START,
    RUNTIME_EXEC,
    RUNTIME_KILL,
    RUNTIME_DELETE,
    RUNTIME_PAUSE,
    RUNTIME_RESUME,
    RUNTIME_UPDATE,
    INIT_EXEC,
    KERNEL_CLONE3,
    KERNEL_FORK,
    KERNEL_EXEC,
    KERNEL_EXIT,
    KERNEL_CGROUP_MKDIR,
    KERNEL_CGROUP_ATTACH,
    KERNEL_BLOCKED,
    KERNEL_ON_CPU,
];

/// The span name of a system call the probes saw enter and exit.
pub fn kernel_syscall(name: &str) -> String {
    format!("kernel.{name}")
}

/// The phases of a container start, from the CLI to the kernel: what `engine bench` reports and
/// a traced start must hold.
pub const START_PHASES: &[&str] = &[
    "engine.run",
    DAEMON_CREATE,
    DAEMON_START,
    LIFECYCLE_TASKS_CREATE,
    LIFECYCLE_TASKS_START,
    SHIM_CREATE,
    SHIM_START,
    RUNTIME_CREATE,
    RUNTIME_NAMESPACES,
    RUNTIME_CGROUP,
    RUNTIME_ROOTFS,
    RUNTIME_START,
    INIT_EXEC,
    KERNEL_CLONE3,
    KERNEL_CGROUP_MKDIR,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_the_start_phases_are_catalogued() {
        let mut seen = std::collections::HashSet::new();
        for n in super::ALL {
            assert!(seen.insert(n), "{n} twice");
            assert!(n.split_once('.').is_some_and(|(layer, step)| !layer.is_empty() && !step.is_empty()), "{n}");
        }
        for p in super::START_PHASES.iter().filter(|p| **p != "engine.run") {
            assert!(super::ALL.contains(p), "{p}");
        }
        assert_eq!(super::kernel_syscall("unshare"), "kernel.unshare");
    }
}
