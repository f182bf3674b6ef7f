//! A container's files: `engine diff`, `engine export` and `engine commit`.

use anyhow::Result;

use crate::client::{self, Client};
use crate::containers::urlencode;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    pub container: String,
}

/// Prints the container's changes as `docker diff` does: `A`dded, `C`hanged, `D`eleted.
pub async fn diff(c: &Client, a: DiffArgs) -> Result<i32> {
    let changes = c.get(&format!("/containers/{}/changes", urlencode(&a.container))).await?;
    for ch in changes.as_array().into_iter().flatten() {
        let letter = match ch["Kind"].as_u64() {
            Some(0) => 'C',
            Some(1) => 'A',
            Some(2) => 'D',
            _ => '?',
        };
        println!("{letter} {}", ch["Path"].as_str().unwrap_or(""));
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Write to a file, instead of STDOUT.
    #[arg(short = 'o', long)]
    pub output: Option<std::path::PathBuf>,
    pub container: String,
}

pub async fn export(c: &Client, a: ExportArgs) -> Result<i32> {
    let path = format!("/containers/{}/export", urlencode(&a.container));
    crate::images::download(c, &path, a.output.as_deref(), "export").await?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct CommitArgs {
    /// Author (e.g., "John Hannibal Smith <hannibal@a-team.com>").
    #[arg(short = 'a', long)]
    pub author: Option<String>,
    /// Apply Dockerfile instruction to the created image.
    #[arg(short = 'c', long = "change")]
    pub change: Vec<String>,
    /// Commit message.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Pause container during commit.
    #[arg(short = 'p', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub pause: bool,
    pub container: String,
    /// REPOSITORY[:TAG] of the new image.
    pub repository: Option<String>,
}

/// Prints the new image's id, as `docker commit` does.
pub async fn commit(c: &Client, a: CommitArgs) -> Result<i32> {
    let mut q = vec![format!("container={}", urlencode(&a.container)), format!("pause={}", a.pause as u8)];
    if let Some(r) = &a.repository {
        let (repo, tag) = crate::images::split_repo_tag(r);
        q.push(format!("repo={}", urlencode(repo)));
        if let Some(t) = tag {
            q.push(format!("tag={}", urlencode(t)));
        }
    }
    for (k, v) in [("author", &a.author), ("comment", &a.message)] {
        if let Some(v) = v {
            q.push(format!("{k}={}", urlencode(v)));
        }
    }
    q.extend(a.change.iter().map(|ch| format!("changes={}", urlencode(ch))));
    let r = c.post(&format!("/commit?{}", q.join("&")), None).await?;
    let v = client::read_json(r).await?;
    println!("{}", v["Id"].as_str().unwrap_or(""));
    Ok(0)
}
