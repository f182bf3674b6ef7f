//! Debian's buildah with storage of its own (vfs: nothing mounted), never the host's, and no
//! registry to search short names in (nothing is ever resolved on a public host).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Buildah {
    root: PathBuf,
    registries_conf: PathBuf,
}

impl Buildah {
    /// A buildah keeping its images and containers under `dir/buildah`.
    pub fn new(dir: &Path) -> Buildah {
        let root = dir.join("buildah");
        std::fs::create_dir_all(&root).unwrap();
        let registries_conf = root.join("registries.conf");
        std::fs::write(&registries_conf, "unqualified-search-registries = []\n").unwrap();
        Buildah { root, registries_conf }
    }

    /// Runs `buildah ARGS` in `cwd`; its stdout, trimmed. Fails the test when buildah fails.
    pub fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = Command::new("buildah")
            .envs(crate::OFFLINE_ENV)
            .env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(self.root.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(out.status.success(), "buildah {args:?}: {}{}", crate::stdout(&out), crate::stderr(&out));
        crate::stdout(&out).trim().to_string()
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        // its working containers first: vfs keeps nothing mounted, so the directory then goes
        let _ = Command::new("buildah")
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(self.root.join("run"))
            .args(["--storage-driver", "vfs", "rm", "--all"])
            .output();
    }
}
