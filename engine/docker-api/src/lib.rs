//! The Docker Engine API's bodies that the engine CLI sends and engined reads and writes (the
//! subset it serves), with Docker's field names, typed once for both sides.
//!
//! Owns: the JSON shapes of the API. It must never hold behaviour (defaults, checks and the
//! entrypoint/cmd rule belong to engined) nor depend on any other engine crate. Unknown fields
//! are ignored on input and `null` reads as the default, as dockerd's Go decoding has it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A container's `Config` (what `POST /containers/create` takes beside its HostConfig, and
/// what inspect shows).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    #[serde(deserialize_with = "nullable")]
    pub hostname: String,
    #[serde(deserialize_with = "nullable")]
    pub domainname: String,
    #[serde(deserialize_with = "nullable")]
    pub user: String,
    #[serde(deserialize_with = "nullable")]
    pub attach_stdin: bool,
    #[serde(deserialize_with = "nullable")]
    pub attach_stdout: bool,
    #[serde(deserialize_with = "nullable")]
    pub attach_stderr: bool,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(deserialize_with = "nullable")]
    pub tty: bool,
    #[serde(deserialize_with = "nullable")]
    pub open_stdin: bool,
    #[serde(deserialize_with = "nullable")]
    pub stdin_once: bool,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    #[serde(deserialize_with = "nullable")]
    pub image: String,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(deserialize_with = "nullable")]
    pub working_dir: String,
    pub entrypoint: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    /// `--mac-address` of the first network (before API 1.44), shown when set.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
    pub healthcheck: Option<HealthConfig>,
}

/// `Healthcheck` of a container's Config (and of an image's): how engined probes the
/// container. Durations are in nanoseconds; zero means the image's, else Docker's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthConfig {
    /// Empty: the image's; `["NONE"]`: no check; `["CMD", program, args...]` or
    /// `["CMD-SHELL", command]`.
    pub test: Option<Vec<String>>,
    #[serde(deserialize_with = "nullable")]
    pub interval: i64,
    #[serde(deserialize_with = "nullable")]
    pub timeout: i64,
    #[serde(deserialize_with = "nullable")]
    pub start_period: i64,
    #[serde(deserialize_with = "nullable")]
    pub start_interval: i64,
    #[serde(deserialize_with = "nullable")]
    pub retries: i64,
}

/// `POST /containers/create` body: the container's Config with its HostConfig and
/// NetworkingConfig beside it, as Docker's clients send it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerCreateBody {
    #[serde(flatten)]
    pub config: ContainerConfig,
    pub host_config: Option<HostConfig>,
    pub networking_config: Option<NetworkingConfig>,
}

/// `NetworkingConfig` of `POST /containers/create`: the endpoint settings per network.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkingConfig {
    pub endpoints_config: Option<BTreeMap<String, EndpointSettings>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSettings {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<EndpointIpam>,
    pub aliases: Option<Vec<String>>,
    /// `--mac-address` on this network (API 1.44's place for it).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
    /// Links on this network, `name:alias` (its DNS answers the alias).
    pub links: Option<Vec<String>>,
    /// The driver's options for this endpoint (the bridge driver has none it acts on: kept and
    /// shown, as dockerd's).
    pub driver_opts: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointIpam {
    #[serde(rename = "IPv4Address")]
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub ipv6_address: String,
    /// Link-local addresses added to the container's interface.
    #[serde(rename = "LinkLocalIPs", skip_serializing_if = "Option::is_none")]
    pub link_local_ips: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    pub binds: Option<Vec<String>>,
    #[serde(deserialize_with = "nullable")]
    pub network_mode: String,
    #[serde(deserialize_with = "nullable")]
    pub restart_policy: RestartPolicy,
    #[serde(deserialize_with = "nullable")]
    pub auto_remove: bool,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    #[serde(deserialize_with = "nullable")]
    pub privileged: bool,
    #[serde(deserialize_with = "nullable")]
    pub readonly_rootfs: bool,
    pub security_opt: Option<Vec<String>>,
    pub tmpfs: Option<BTreeMap<String, String>>,
    pub init: Option<bool>,
    /// `host`: the host's PID namespace, `container:<name|id>`: another running container's
    /// ("": its own).
    #[serde(deserialize_with = "nullable")]
    pub pid_mode: String,
    /// Paths masked in the container instead of the defaults (`/proc/kcore`, …), as Docker's
    /// API takes them (the CRI's `masked_paths`); null: the defaults.
    pub masked_paths: Option<Vec<String>>,
    /// Paths made read-only in the container instead of the defaults (`/proc/sys`, …).
    pub readonly_paths: Option<Vec<String>>,
    /// `host`: the host's IPC namespace, `container:<name|id>`: another running container's
    /// ("", `private`, `shareable`: its own).
    #[serde(deserialize_with = "nullable")]
    pub ipc_mode: String,
    /// `host`: the host's UTS namespace ("": its own).
    #[serde(rename = "UTSMode")]
    #[serde(deserialize_with = "nullable")]
    pub uts_mode: String,
    /// Linux has one: `default` ("" reads the same).
    #[serde(deserialize_with = "nullable")]
    pub isolation: String,
    #[serde(flatten)]
    pub resources: Resources,
    pub log_config: Option<LogConfig>,
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    #[serde(deserialize_with = "nullable")]
    pub publish_all_ports: bool,
    pub extra_hosts: Option<Vec<String>>,
    /// `--link name[:alias]`: another container known by the alias here (legacy links).
    pub links: Option<Vec<String>>,
    pub dns: Option<Vec<String>>,
    pub dns_search: Option<Vec<String>>,
    pub dns_options: Option<Vec<String>>,
    pub mounts: Option<Vec<Mount>>,
    /// `--ulimit`: the process's resource limits.
    pub ulimits: Option<Vec<Ulimit>>,
    /// `--shm-size`: the size of /dev/shm in bytes (0: Docker's 64 MiB).
    #[serde(deserialize_with = "nullable")]
    pub shm_size: i64,
    /// `--group-add`: more supplementary groups (ids, or names of the image's /etc/group).
    pub group_add: Option<Vec<String>>,
    /// `--sysctl`: namespaced kernel parameters.
    pub sysctls: Option<BTreeMap<String, String>>,
    /// `--cgroup-parent`: the cgroup the container's is made under, instead of the daemon's
    /// (`--cgroup-parent` of engined); the engine makes it if missing and never removes it.
    #[serde(deserialize_with = "nullable")]
    pub cgroup_parent: String,
    /// `--oom-score-adj`: the process's OOM score adjustment, -1000..=1000 (0: the engine's
    /// own, inherited).
    #[serde(deserialize_with = "nullable")]
    pub oom_score_adj: i64,
    /// `--device host[:container][:permissions]`: a device node of the host (or every node
    /// under a directory of it) in the container, and the cgroup rule that lets it be used.
    pub devices: Option<Vec<DeviceMapping>>,
    /// `--device-cgroup-rule 'c 1:3 rwm'`: more devices the container may make, read or write
    /// (`a|b|c major|*:minor|* r?w?m?`).
    pub device_cgroup_rules: Option<Vec<String>>,
    /// `--volumes-from name[:ro|rw]`: the volumes and binds of other containers, at the same
    /// paths (read-only, read-write, or as each was).
    pub volumes_from: Option<Vec<String>>,
    /// `--cgroupns host|private` (""; the daemon's default, which inspect shows).
    #[serde(deserialize_with = "nullable")]
    pub cgroupns_mode: String,
    /// The OCI runtime by name: `runc`, the name of engined's own (inspect shows it).
    #[serde(deserialize_with = "nullable")]
    pub runtime: String,
    /// `--userns`: only `host` (no user namespace remapping) or "".
    #[serde(deserialize_with = "nullable")]
    pub userns_mode: String,
    /// `--cgroup`: another container's cgroup (not supported: only "").
    #[serde(deserialize_with = "nullable")]
    pub cgroup: String,
    /// `--volume-driver`: only `local` (or "").
    #[serde(deserialize_with = "nullable")]
    pub volume_driver: String,
    /// `--cidfile`: where the client writes the id (the client's business, kept as given).
    #[serde(rename = "ContainerIDFile")]
    #[serde(deserialize_with = "nullable")]
    pub container_id_file: String,
    /// The terminal's initial height and width.
    #[serde(deserialize_with = "nullable")]
    pub console_size: [u64; 2],
    /// `--storage-opt key=value`: options of the storage driver for the container's writable
    /// layer (a size quota needs overlay on xfs with project quotas; shown only when set, as
    /// dockerd's).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_opt: BTreeMap<String, String>,
    /// `--annotation key=value`: metadata handed to the OCI runtime in the spec's
    /// `annotations` (API 1.43; shown only when set, as dockerd's).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One `--device`: the node on the host, its path in the container (the host's when empty)
/// and what the container may do with it (`rwm` when empty).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceMapping {
    #[serde(deserialize_with = "nullable")]
    pub path_on_host: String,
    #[serde(deserialize_with = "nullable")]
    pub path_in_container: String,
    #[serde(deserialize_with = "nullable")]
    pub cgroup_permissions: String,
}

/// One `--ulimit name=soft[:hard]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ulimit {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub soft: i64,
    #[serde(deserialize_with = "nullable")]
    pub hard: i64,
}

/// One host address of a published port.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    #[serde(deserialize_with = "nullable")]
    pub host_ip: String,
    #[serde(deserialize_with = "nullable")]
    pub host_port: String,
}

/// The resource limits engined applies, as Docker's `Resources` (part of a HostConfig and of
/// an update).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Resources {
    #[serde(deserialize_with = "nullable")]
    pub memory: i64,
    #[serde(deserialize_with = "nullable")]
    pub nano_cpus: i64,
    #[serde(deserialize_with = "nullable")]
    pub cpu_shares: i64,
    #[serde(deserialize_with = "nullable")]
    pub cpu_period: i64,
    #[serde(deserialize_with = "nullable")]
    pub cpu_quota: i64,
    pub pids_limit: Option<i64>,
    /// `--cpuset-cpus 0-1,3`: the CPUs the container may run on ("": all).
    #[serde(deserialize_with = "nullable")]
    pub cpuset_cpus: String,
    /// `--cpuset-mems`: the memory nodes it may use ("": all).
    #[serde(deserialize_with = "nullable")]
    pub cpuset_mems: String,
    /// `--memory-reservation`: the soft limit (bytes; 0: none).
    #[serde(deserialize_with = "nullable")]
    pub memory_reservation: i64,
    /// `--memory-swap`: memory plus swap (bytes; -1: unlimited swap; 0: twice `memory`, as
    /// Docker's default, where the host accounts swap).
    #[serde(deserialize_with = "nullable")]
    pub memory_swap: i64,
    /// `--memory-swappiness` 0..=100 (null or -1: the host's).
    pub memory_swappiness: Option<i64>,
    /// `--oom-kill-disable`.
    pub oom_kill_disable: Option<bool>,
    // What this engine or host cannot apply: read so that a request setting them is refused
    // with a clear error, never dropped; shown with Docker's defaults.
    #[serde(deserialize_with = "nullable")]
    pub blkio_weight: u16,
    pub blkio_weight_device: Option<Vec<WeightDevice>>,
    pub blkio_device_read_bps: Option<Vec<ThrottleDevice>>,
    pub blkio_device_write_bps: Option<Vec<ThrottleDevice>>,
    #[serde(rename = "BlkioDeviceReadIOps")]
    pub blkio_device_read_iops: Option<Vec<ThrottleDevice>>,
    #[serde(rename = "BlkioDeviceWriteIOps")]
    pub blkio_device_write_iops: Option<Vec<ThrottleDevice>>,
    #[serde(deserialize_with = "nullable")]
    pub cpu_realtime_period: i64,
    #[serde(deserialize_with = "nullable")]
    pub cpu_realtime_runtime: i64,
    #[serde(deserialize_with = "nullable")]
    pub kernel_memory: i64,
    #[serde(rename = "KernelMemoryTCP")]
    #[serde(deserialize_with = "nullable")]
    pub kernel_memory_tcp: i64,
    pub device_requests: Option<Vec<DeviceRequest>>,
    /// Windows only.
    #[serde(deserialize_with = "nullable")]
    pub cpu_count: i64,
    #[serde(deserialize_with = "nullable")]
    pub cpu_percent: i64,
    #[serde(rename = "IOMaximumIOps")]
    #[serde(deserialize_with = "nullable")]
    pub io_maximum_iops: u64,
    #[serde(rename = "IOMaximumBandwidth")]
    #[serde(deserialize_with = "nullable")]
    pub io_maximum_bandwidth: u64,
}

/// `--blkio-weight-device path:weight`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct WeightDevice {
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    #[serde(deserialize_with = "nullable")]
    pub weight: u16,
}

/// `--device-read-bps path:rate` and the like.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ThrottleDevice {
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    #[serde(deserialize_with = "nullable")]
    pub rate: u64,
}

/// `--gpus`: devices of a driver (GPUs).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceRequest {
    #[serde(deserialize_with = "nullable")]
    pub driver: String,
    #[serde(deserialize_with = "nullable")]
    pub count: i64,
    #[serde(rename = "DeviceIDs")]
    pub device_ids: Option<Vec<String>>,
    pub capabilities: Option<Vec<Vec<String>>>,
    pub options: Option<BTreeMap<String, String>>,
}

/// The body of `POST /containers/{id}/update`: new resource limits (zero: unchanged) and,
/// if named, a new restart policy. The fields engined cannot apply are read so that a request
/// setting them is refused, never silently dropped.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpdateConfig {
    #[serde(flatten)]
    pub resources: Resources,
    #[serde(deserialize_with = "nullable")]
    pub restart_policy: RestartPolicy,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub maximum_retry_count: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    #[serde(rename = "Type")]
    #[serde(deserialize_with = "nullable")]
    pub typ: String,
    #[serde(deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
}

/// `HostConfig.Mounts` (the `--mount` form).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Mount {
    #[serde(rename = "Type")]
    #[serde(deserialize_with = "nullable")]
    pub typ: String,
    #[serde(deserialize_with = "nullable")]
    pub source: String,
    #[serde(deserialize_with = "nullable")]
    pub target: String,
    #[serde(deserialize_with = "nullable")]
    pub read_only: bool,
    /// `default`, `consistent`, `cached`, `delegated`: macOS only, no effect on Linux (as dockerd).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub consistency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_options: Option<BindOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_options: Option<VolumeOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_options: Option<TmpfsOptions>,
}

/// `Mount.BindOptions`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindOptions {
    /// `rprivate` (the default), `private`, `rshared`, `shared`, `rslave`, `slave`.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub propagation: String,
    /// The bind alone, not the mounts below its source.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "std::ops::Not::not")]
    pub non_recursive: bool,
    /// Make the source path when it is missing (API 1.42).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "std::ops::Not::not")]
    pub create_mountpoint: bool,
}

/// `Mount.VolumeOptions`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeOptions {
    /// The volume does not take the image's files at its path.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "std::ops::Not::not")]
    pub no_copy: bool,
    /// Labels of the volume when this mount makes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_config: Option<VolumeDriverConfig>,
    /// A path inside the volume to mount instead of its root (API 1.45).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub subpath: String,
}

/// `Mount.VolumeOptions.DriverConfig`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeDriverConfig {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
}

/// `Mount.TmpfsOptions`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TmpfsOptions {
    /// Its size in bytes; 0: the kernel's default (half the memory).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub size_bytes: i64,
    /// Its root's permission bits (an integer: 1023 is 01777).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// `null` reads as the default, as Go's JSON decoding has it (SDKs send `"User": null`).
fn nullable<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's `{"message": ...}` error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody<'a> {
    pub message: std::borrow::Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_body_reads_as_docker_sends_it_and_writes_back_the_same_fields() {
        let sent = r#"{"Hostname":"","User":null,"Image":"busybox","Cmd":["true"],"Entrypoint":null,
            "Labels":{"a":"b"},"Tty":false,"Unknown":1,
            "HostConfig":{"Binds":["/x:/y:ro"],"NetworkMode":"default","Memory":67108864,"PidsLimit":null,
                "RestartPolicy":{"Name":"on-failure","MaximumRetryCount":3},
                "PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"8080"}]},"LogConfig":{"Type":"json-file","Config":null}},
            "NetworkingConfig":{"EndpointsConfig":{"n1":{"IPAMConfig":{"IPv4Address":"10.1.0.5"},"Aliases":["db"]}}}}"#;
        let body: ContainerCreateBody = serde_json::from_str(sent).unwrap();
        assert_eq!(body.config.image, "busybox");
        assert_eq!(body.config.cmd.as_deref(), Some(&["true".to_string()][..]));
        assert_eq!(body.config.user, "", "null reads as the default");
        let hc = body.host_config.as_ref().unwrap();
        assert_eq!((hc.resources.memory, hc.resources.pids_limit), (64 << 20, None));
        assert_eq!(hc.restart_policy.maximum_retry_count, 3);
        assert_eq!(hc.port_bindings.as_ref().unwrap()["80/tcp"].as_ref().unwrap()[0].host_port, "8080");
        let ep = &body.networking_config.as_ref().unwrap().endpoints_config.as_ref().unwrap()["n1"];
        assert_eq!(ep.ipam_config.as_ref().unwrap().ipv4_address, "10.1.0.5");

        let written = serde_json::to_value(&body).unwrap();
        assert_eq!(written["Image"], "busybox", "the Config is flat beside HostConfig, as Docker's");
        assert_eq!(written["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
        assert_eq!(written["HostConfig"]["LogConfig"]["Type"], "json-file");
        assert_eq!(written["NetworkingConfig"]["EndpointsConfig"]["n1"]["IPAMConfig"]["IPv4Address"], "10.1.0.5");
        let again: ContainerCreateBody = serde_json::from_value(written).unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&body).unwrap());
    }

    #[test]
    fn a_containers_config_does_not_carry_its_host_config() {
        let v = serde_json::to_value(ContainerConfig { image: "busybox".into(), ..Default::default() }).unwrap();
        assert!(v.get("HostConfig").is_none() && v.get("NetworkingConfig").is_none(), "{v}");
    }
}
