//! OCI hooks from hook directories (`--hooks-dir`), in the format podman and CRI-O read
//! (containers/common's `oci-hooks(5)`, version 1.0.0): each `*.json` file names one hook, the
//! stages it runs at, and `when` it applies to a container. engined reads the directories at each
//! container's create (a change applies to the next container) and adds the matching hooks to
//! the container's OCI spec, after the ones it already has, in file-name order; a file of a later
//! directory replaces the one of the same name in an earlier one.
//!
//! `when` (at least one condition): `always`, `annotations` (a map of key regex → value regex:
//! some annotation of the spec matches both), `commands` (regexes, one matches the process's
//! `args[0]`), `hasBindMounts`; all set conditions must match, or any one with `"or": true`.
//!
//! Must never: run a hook itself (the runtime does), or let a malformed file pass unnoticed: the
//! create fails with the file's name and what is wrong in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hook, Hooks, Spec};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum OciHooksError {
    #[error("hook file {file}: {msg}")]
    File { file: PathBuf, msg: String },
    #[error("reading hook directory {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
}

/// The stages a hook can run at, as `oci-hooks(5)` names them.
const STAGES: &[&str] = &["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: String,
    hook: HookJson,
    when: When,
    stages: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookJson {
    path: PathBuf,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    timeout: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct When {
    #[serde(default)]
    always: Option<bool>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    commands: Vec<String>,
    #[serde(default)]
    has_bind_mounts: Option<bool>,
    #[serde(default)]
    or: bool,
}

/// One hook file, checked.
#[derive(Debug)]
pub struct HookRule {
    pub file: PathBuf,
    hook: Hook,
    stages: Vec<String>,
    always: Option<bool>,
    annotations: Vec<(regex::Regex, regex::Regex)>,
    commands: Vec<regex::Regex>,
    has_bind_mounts: Option<bool>,
    or: bool,
}

fn bad(file: &Path, msg: impl Into<String>) -> OciHooksError {
    OciHooksError::File { file: file.to_path_buf(), msg: msg.into() }
}

fn pattern(file: &Path, p: &str) -> Result<regex::Regex, OciHooksError> {
    regex::Regex::new(p).map_err(|e| bad(file, format!("pattern {p:?}: {e}")))
}

impl HookRule {
    /// Reads and checks one hook file.
    pub fn read(file: &Path) -> Result<HookRule, OciHooksError> {
        let text = std::fs::read(file).map_err(|e| bad(file, e.to_string()))?;
        let f: File = serde_json::from_slice(&text).map_err(|e| bad(file, e.to_string()))?;
        if f.version != "1.0.0" {
            return Err(bad(file, format!("version {:?}: only 1.0.0 is known", f.version)));
        }
        if !f.hook.path.is_absolute() {
            return Err(bad(file, format!("hook path {} is not absolute", f.hook.path.display())));
        }
        if f.stages.is_empty() {
            return Err(bad(file, "no stages"));
        }
        if let Some(s) = f.stages.iter().find(|s| !STAGES.contains(&s.as_str())) {
            return Err(bad(file, format!("unknown stage {s:?} (known: {})", STAGES.join(", "))));
        }
        let w = f.when;
        if w.always.is_none() && w.annotations.is_empty() && w.commands.is_empty() && w.has_bind_mounts.is_none() {
            return Err(bad(file, "`when` sets no condition"));
        }
        if f.hook.timeout.is_some_and(|t| t <= 0) {
            return Err(bad(file, "hook timeout must be positive"));
        }
        let mut hook = Hook::default();
        hook.set_path(f.hook.path).set_args(f.hook.args).set_env(f.hook.env).set_timeout(f.hook.timeout);
        Ok(HookRule {
            file: file.to_path_buf(),
            hook,
            stages: f.stages,
            always: w.always,
            annotations: w
                .annotations
                .iter()
                .map(|(k, v)| Ok((pattern(file, k)?, pattern(file, v)?)))
                .collect::<Result<_, OciHooksError>>()?,
            commands: w.commands.iter().map(|c| pattern(file, c)).collect::<Result<_, _>>()?,
            has_bind_mounts: w.has_bind_mounts,
            or: w.or,
        })
    }

    /// Whether the hook applies to the container of `spec`.
    pub fn matches(&self, spec: &Spec) -> bool {
        let mut results = Vec::new();
        if let Some(always) = self.always {
            results.push(always);
        }
        if let Some(want) = self.has_bind_mounts {
            let binds = spec.mounts().iter().flatten().any(|m| {
                m.typ().as_deref() == Some("bind") || m.options().iter().flatten().any(|o| o == "bind" || o == "rbind")
            });
            results.push(want && binds);
        }
        let annotations = spec.annotations().clone().unwrap_or_default();
        for (k, v) in &self.annotations {
            results.push(annotations.iter().any(|(ak, av)| k.is_match(ak) && v.is_match(av)));
        }
        if !self.commands.is_empty() {
            let arg0 = spec.process().as_ref().and_then(|p| p.args().as_ref()).and_then(|a| a.first()).cloned();
            results.push(arg0.is_some_and(|a| self.commands.iter().any(|c| c.is_match(&a))));
        }
        if self.or {
            results.iter().any(|r| *r)
        } else {
            results.iter().all(|r| *r)
        }
    }
}

/// The hook files of `dirs`, by file name (a later directory's replaces an earlier one's).
pub fn load(dirs: &[PathBuf]) -> Result<Vec<HookRule>, OciHooksError> {
    let mut files: BTreeMap<std::ffi::OsString, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            // a directory not made yet has no hooks (as podman's default ones on most hosts)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(OciHooksError::Dir { dir: dir.clone(), source }),
        };
        for e in entries {
            let e = e.map_err(|source| OciHooksError::Dir { dir: dir.clone(), source })?;
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") && path.is_file() {
                files.insert(e.file_name(), path);
            }
        }
    }
    files.values().map(|f| HookRule::read(f)).collect()
}

/// Adds the hooks of `rules` that apply to `spec` to it, after the ones it has.
pub fn inject(spec: &mut Spec, rules: &[HookRule]) {
    let matching: Vec<&HookRule> = rules.iter().filter(|r| r.matches(spec)).collect();
    if matching.is_empty() {
        return;
    }
    let mut hooks: Hooks = spec.hooks().clone().unwrap_or_default();
    for rule in matching {
        for stage in &rule.stages {
            #[allow(deprecated)]
            let list = match stage.as_str() {
                "prestart" => hooks.prestart_mut(),
                "createRuntime" => hooks.create_runtime_mut(),
                "createContainer" => hooks.create_container_mut(),
                "startContainer" => hooks.start_container_mut(),
                "poststart" => hooks.poststart_mut(),
                "poststop" => hooks.poststop_mut(),
                _ => continue, // checked at read
            };
            list.get_or_insert_with(Vec::new).push(rule.hook.clone());
        }
    }
    spec.set_hooks(Some(hooks));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn spec(args: &[&str], annotations: &[(&str, &str)]) -> Spec {
        let mut s = Spec::default();
        let mut p = s.process().clone().unwrap_or_default();
        p.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
        s.set_process(Some(p));
        s.set_annotations(Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
        s
    }

    #[test]
    fn matching_hooks_are_added_at_their_stages_in_file_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write(
            a.path(),
            "10-always.json",
            r#"{"version":"1.0.0","hook":{"path":"/bin/a","args":["a","x"]},"when":{"always":true},"stages":["prestart","poststop"]}"#,
        );
        write(
            a.path(),
            "20-sh.json",
            r#"{"version":"1.0.0","hook":{"path":"/bin/b","timeout":5},"when":{"commands":["^/bin/sh$"]},"stages":["createRuntime"]}"#,
        );
        // a later directory's file of the same name replaces it
        write(
            b.path(),
            "20-sh.json",
            r#"{"version":"1.0.0","hook":{"path":"/bin/c"},"when":{"commands":["sh$"],"annotations":{"^io\\.x$":"^yes$"}},"stages":["startContainer"]}"#,
        );
        let rules = load(&[a.path().to_path_buf(), b.path().to_path_buf(), "/nonexistent/hooks.d".into()]).unwrap();
        assert_eq!(rules.len(), 2);

        let mut s = spec(&["/bin/sh"], &[("io.x", "yes")]);
        inject(&mut s, &rules);
        let h = s.hooks().clone().unwrap();
        #[allow(deprecated)]
        let pre = h.prestart().clone().unwrap();
        assert_eq!(pre[0].path(), Path::new("/bin/a"));
        assert_eq!(pre[0].args().as_deref(), Some(&["a".to_string(), "x".to_string()][..]));
        assert_eq!(h.poststop().as_ref().unwrap().len(), 1);
        assert_eq!(h.start_container().as_ref().unwrap()[0].path(), Path::new("/bin/c"));
        assert!(h.create_runtime().is_none());

        // both conditions must hold (no "or"): the annotation is missing
        let mut s = spec(&["/bin/sh"], &[]);
        inject(&mut s, &rules);
        assert!(s.hooks().as_ref().unwrap().start_container().is_none());
    }

    #[test]
    fn or_takes_any_condition_and_bind_mounts_count() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "x.json",
            r#"{"version":"1.0.0","hook":{"path":"/bin/x"},"when":{"hasBindMounts":true,"commands":["^nomatch$"],"or":true},"stages":["poststart"]}"#,
        );
        let rule = HookRule::read(&f).unwrap();
        let mut s = spec(&["/bin/true"], &[]);
        assert!(!rule.matches(&s));
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination("/data".into()).set_typ(Some("bind".into())).set_source(Some("/tmp".into()));
        s.set_mounts(Some(vec![m]));
        assert!(rule.matches(&s));
    }

    #[test]
    fn a_malformed_file_is_named_with_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        for (body, want) in [
            (r#"{"version":"2","hook":{"path":"/x"},"when":{"always":true},"stages":["prestart"]}"#, "only 1.0.0"),
            (r#"{"version":"1.0.0","hook":{"path":"x"},"when":{"always":true},"stages":["prestart"]}"#, "not absolute"),
            (r#"{"version":"1.0.0","hook":{"path":"/x"},"when":{},"stages":["prestart"]}"#, "no condition"),
            (r#"{"version":"1.0.0","hook":{"path":"/x"},"when":{"always":true},"stages":["later"]}"#, "unknown stage"),
            (r#"{"version":"1.0.0","hook":{"path":"/x"},"when":{"commands":["("]},"stages":["prestart"]}"#, "pattern"),
            (
                r#"{"version":"1.0.0","hook":{"path":"/x"},"when":{"always":true},"stages":["prestart"],"x":1}"#,
                "unknown field",
            ),
        ] {
            let f = write(d.path(), "bad.json", body);
            let err = HookRule::read(&f).unwrap_err().to_string();
            assert!(err.contains("bad.json") && err.contains(want), "{err}");
        }
    }
}
