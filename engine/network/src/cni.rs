//! CNI (the Container Network Interface, spec 1.0 and the 0.3/0.4 versions before it), as a
//! CRI runtime drives it for pods: the network of a configuration directory (its first
//! `.conflist`, `.conf` or `.json` file by name, as the kubelet's runtimes pick it), each plugin
//! of its chain executed from the plugin directories with ADD (in order, each given the
//! result before it) or DEL (in reverse), the `portMappings` capability handed to the plugins
//! that declare it, and the result's addresses.
//!
//! Owns: running the plugins. It never makes links, addresses or rules itself (the plugins
//! do) and keeps no state: what DEL needs (the configuration ADD used, and its result) is the
//! caller's to keep (`Attachment`, serialisable).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// How long one plugin may run (the kubelet's own CRI timeout is two minutes).
const PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network configuration in {0}")]
    NoConfig(PathBuf),
    #[error("the CNI configuration {path}: {message}")]
    BadConfig { path: PathBuf, message: String },
    #[error("CNI plugin {0:?} not found in {1}")]
    NoPlugin(String, String),
    #[error("CNI plugin {plugin} failed on {command}: {message}")]
    Plugin { plugin: String, command: &'static str, message: String },
}

/// One network: a configuration list (a single `.conf` is read as a list of one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkList {
    pub name: String,
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

/// A host port of the pod, for plugins with the `portMappings` capability (portmap).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty", default)]
    pub host_ip: String,
}

/// The pod being attached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    /// The sandbox's id (`CNI_CONTAINERID`).
    pub id: String,
    /// Its network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// `CNI_ARGS` pairs: `K8S_POD_NAME`, `K8S_POD_NAMESPACE`, …
    pub args: Vec<(String, String)>,
    pub port_mappings: Vec<PortMapping>,
}

/// A pod attached to a network: what DEL needs, kept by the caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: NetworkList,
    pub pod: Pod,
    /// The result of the ADD chain.
    pub result: Value,
}

impl Attachment {
    /// The addresses the result gives the pod's interface, without their prefix length.
    pub fn ips(&self) -> Vec<String> {
        let ips = self.result["ips"].as_array().cloned().unwrap_or_default();
        ips.iter().filter_map(|i| i["address"].as_str()).map(|a| a.split('/').next().unwrap_or(a).to_string()).collect()
    }
}

/// The interface CNI makes in the pod.
pub const IFNAME: &str = "eth0";

/// The plugins and configurations of one runtime.
#[derive(Clone, Debug)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

impl Cni {
    /// The network of the configuration directory: its first configuration file by name.
    pub fn network(&self) -> Result<NetworkList, CniError> {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&self.conf_dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "conflist" || e == "conf" || e == "json"));
        files.sort();
        let path = files.first().ok_or_else(|| CniError::NoConfig(self.conf_dir.clone()))?;
        let bad = |message: String| CniError::BadConfig { path: path.clone(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let list = if v.get("plugins").is_some() {
            serde_json::from_value::<NetworkList>(v).map_err(|e| bad(e.to_string()))?
        } else {
            // a single plugin's configuration
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let cni_version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_string();
            NetworkList { name, cni_version, plugins: vec![v] }
        };
        if list.name.is_empty() || list.plugins.is_empty() {
            return Err(bad("a network needs a name and at least one plugin".into()));
        }
        if let Some(p) = list.plugins.iter().find(|p| p["type"].as_str().is_none_or(str::is_empty)) {
            return Err(bad(format!("a plugin without a type: {p}")));
        }
        Ok(list)
    }

    fn binary(&self, kind: &str) -> Result<PathBuf, CniError> {
        if kind.contains('/') {
            return Err(CniError::NoPlugin(kind.into(), "(a plugin type is a name)".into()));
        }
        self.bin_dirs.iter().map(|d| d.join(kind)).find(|p| p.is_file()).ok_or_else(|| {
            let dirs: Vec<String> = self.bin_dirs.iter().map(|d| d.display().to_string()).collect();
            CniError::NoPlugin(kind.into(), dirs.join(":"))
        })
    }

    /// Attaches `pod` to `network`: ADD through its chain. A chain that fails part way is
    /// undone (DEL of the whole chain, as libcni does) before the error is returned.
    pub async fn add(&self, network: &NetworkList, pod: &Pod) -> Result<Attachment, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &network.plugins {
            match self.exec("ADD", network, plugin, pod, prev.as_ref()).await {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    let partial =
                        Attachment { network: network.clone(), pod: pod.clone(), result: prev.unwrap_or(json!({})) };
                    let _ = self.del(&partial).await;
                    return Err(e);
                }
            }
        }
        Ok(Attachment { network: network.clone(), pod: pod.clone(), result: prev.unwrap_or(json!({})) })
    }

    /// Detaches what `attachment` attached: DEL through its chain in reverse; every plugin is
    /// asked, the first failure is returned.
    pub async fn del(&self, attachment: &Attachment) -> Result<(), CniError> {
        let mut first = None;
        for plugin in attachment.network.plugins.iter().rev() {
            let prev = Some(&attachment.result).filter(|r| !r.as_object().is_none_or(|o| o.is_empty()));
            if let Err(e) = self.exec("DEL", &attachment.network, plugin, &attachment.pod, prev).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// One plugin: its configuration (with the network's name and version, the previous
    /// result, and the runtime's capability arguments) on stdin; its result on stdout.
    async fn exec(
        &self,
        command: &'static str,
        network: &NetworkList,
        plugin: &Value,
        pod: &Pod,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let failed = |message: String| CniError::Plugin { plugin: kind.clone(), command, message };
        let mut conf = plugin.clone();
        conf["name"] = json!(network.name);
        conf["cniVersion"] = json!(network.cni_version);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let wants_ports = plugin["capabilities"]["portMappings"].as_bool() == Some(true);
        if wants_ports && !pod.port_mappings.is_empty() {
            conf["runtimeConfig"] = json!({ "portMappings": pod.port_mappings });
        }
        let binary = self.binary(&kind)?;
        let paths: Vec<String> = self.bin_dirs.iter().map(|d| d.display().to_string()).collect();
        let args: Vec<String> = std::iter::once("IgnoreUnknown=1".to_string())
            .chain(pod.args.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.id)
            .env("CNI_NETNS", &pod.netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", paths.join(":"))
            .env("CNI_ARGS", args.join(";"))
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("{}: {e}", binary.display())))?;
        let input = serde_json::to_vec(&conf).map_err(|e| failed(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&input).await.map_err(|e| failed(e.to_string()))?;
        }
        // a plugin that hangs is killed (kill_on_drop) rather than holding the pod's call forever
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| failed(format!("no answer in {} s", PLUGIN_TIMEOUT.as_secs())))?
            .map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            // the spec's error: {"code": N, "msg": "...", "details": "..."} on stdout
            let err: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let msg = match (err["msg"].as_str(), err["details"].as_str()) {
                (Some(m), Some(d)) if !d.is_empty() => format!("{m}: {d}"),
                (Some(m), _) => m.to_string(),
                _ => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            };
            return Err(failed(msg.trim().to_string()));
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(prev.cloned().unwrap_or(json!({})));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("its result: {e}")))
    }
}

/// The plugin directories when none are configured: Debian's, then the usual one.
pub fn default_bin_dirs() -> Vec<PathBuf> {
    ["/usr/lib/cni", "/opt/cni/bin"].iter().map(PathBuf::from).collect()
}

/// Whether `dir` exists and holds a configuration file.
pub fn configured(dir: &Path) -> bool {
    Cni { conf_dir: dir.to_path_buf(), bin_dirs: Vec::new() }.network().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_configuration_by_name_is_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni { conf_dir: dir.path().into(), bin_dirs: vec![] };
        assert!(matches!(cni.network(), Err(CniError::NoConfig(_))));
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("10-a.conf"), r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#).unwrap();
        std::fs::write(dir.path().join("00-notes.txt"), "not a configuration").unwrap();
        let net = cni.network().unwrap();
        assert_eq!((net.name.as_str(), net.plugins.len()), ("a", 1));
        std::fs::write(dir.path().join("05-bad.conflist"), r#"{"cniVersion":"1.0.0","name":"c","plugins":[{}]}"#)
            .unwrap();
        assert!(matches!(cni.network(), Err(CniError::BadConfig { .. })));
    }

    #[tokio::test]
    async fn add_chains_results_and_del_goes_back_in_reverse() {
        // plugins that log their command, configuration and name, and answer with an address
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        for kind in ["first", "second"] {
            let script = format!(
                "#!/bin/sh\ncat > {d}/{kind}.$CNI_COMMAND.json\necho \"$CNI_COMMAND {kind} $CNI_IFNAME $CNI_ARGS\" >> {log}\n\
                 [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.{n}/24\"}}]}}'\nexit 0\n",
                d = dir.path().display(),
                log = log.display(),
                n = if kind == "first" { 2 } else { 3 }
            );
            let p = dir.path().join(kind);
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let cni = Cni { conf_dir: dir.path().into(), bin_dirs: vec![dir.path().into()] };
        let network = NetworkList {
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![json!({"type": "first"}), json!({"type": "second", "capabilities": {"portMappings": true}})],
        };
        let pod = Pod {
            id: "sb1".into(),
            netns: "/proc/self/ns/net".into(),
            args: vec![("K8S_POD_NAME".into(), "web".into())],
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
        };
        let a = cni.add(&network, &pod).await.unwrap();
        assert_eq!(a.ips(), ["10.9.0.3"]);
        let second: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("second.ADD.json")).unwrap()).unwrap();
        assert_eq!(second["prevResult"]["ips"][0]["address"], "10.9.0.2/24", "the first's result goes to the second");
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        let first: Value = serde_json::from_slice(&std::fs::read(dir.path().join("first.ADD.json")).unwrap()).unwrap();
        assert!(first.get("runtimeConfig").is_none(), "only to plugins with the capability");
        assert_eq!(first["name"], "n");
        cni.del(&a).await.unwrap();
        let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
        assert_eq!(
            lines,
            [
                "ADD first eth0 IgnoreUnknown=1;K8S_POD_NAME=web",
                "ADD second eth0 IgnoreUnknown=1;K8S_POD_NAME=web",
                "DEL second eth0 IgnoreUnknown=1;K8S_POD_NAME=web",
                "DEL first eth0 IgnoreUnknown=1;K8S_POD_NAME=web",
            ]
        );
        // a plugin that is not there: a clear error, and what ran before it is undone
        let missing = NetworkList { plugins: vec![json!({"type": "first"}), json!({"type": "absent"})], ..network };
        let err = cni.add(&missing, &pod).await.unwrap_err();
        assert!(err.to_string().contains("CNI plugin \"absent\" not found"), "{err}");
        assert!(std::fs::read_to_string(&log).unwrap().ends_with("DEL first eth0 IgnoreUnknown=1;K8S_POD_NAME=web\n"));
    }
}
