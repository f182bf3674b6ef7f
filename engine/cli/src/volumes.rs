//! `engine volume ...`, `engine events`, `engine system df`, `engine system check`.

use anyhow::Result;
use serde_json::{json, Value};

use crate::client::{self, Client};
use crate::containers::{each, filters_param, inspect_each, print_formatted, urlencode};
use crate::format;

#[derive(clap::Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume.
    Create {
        /// Set metadata for a volume.
        #[arg(short = 'l', long = "label")]
        label: Vec<String>,
        name: Option<String>,
    },
    /// List volumes.
    Ls {
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Display detailed information on one or more volumes.
    Inspect {
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more volumes.
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove all unused volumes.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

pub async fn volume(c: &Client, cmd: VolumeCommand) -> Result<i32> {
    match cmd {
        VolumeCommand::Create { label, name } => {
            let labels: serde_json::Map<String, Value> = label
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l, ""));
                    (k.to_string(), Value::String(v.to_string()))
                })
                .collect();
            let v = client::read_json(
                c.post("/volumes/create", Some(&json!({ "Name": name.unwrap_or_default(), "Labels": labels }))).await?,
            )
            .await?;
            println!("{}", v["Name"].as_str().unwrap_or(""));
        }
        VolumeCommand::Ls { quiet } => {
            let v = c.get("/volumes").await?;
            let vols: Vec<&Value> = v["Volumes"].as_array().into_iter().flatten().collect();
            if quiet {
                vols.iter().for_each(|v| println!("{}", v["Name"].as_str().unwrap_or("")));
            } else {
                let rows: Vec<Vec<String>> = vols
                    .iter()
                    .map(|v| vec!["local".to_string(), v["Name"].as_str().unwrap_or("").to_string()])
                    .collect();
                print!("{}", format::table(&["DRIVER", "VOLUME NAME"], &rows));
            }
        }
        VolumeCommand::Inspect { format: f, names } => return inspect_each(c, "/volumes", &names, f.as_deref()).await,
        VolumeCommand::Rm { force, names } => {
            return each(&names, |n| async move {
                c.delete(&format!("/volumes/{}?force={}", urlencode(&n), force as u8)).await.map(drop)
            })
            .await;
        }
        VolumeCommand::Prune { force } => {
            if !force {
                anyhow::bail!("this removes all volumes not used by a container: pass -f to confirm");
            }
            let v = client::read_json(c.post("/volumes/prune", None).await?).await?;
            println!("Deleted Volumes:");
            for n in v["VolumesDeleted"].as_array().into_iter().flatten() {
                println!("{}", n.as_str().unwrap_or(""));
            }
            println!("\nTotal reclaimed space: {}", format::size(v["SpaceReclaimed"].as_u64().unwrap_or(0)));
        }
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Show events created since this unix timestamp.
    #[arg(long)]
    pub since: Option<String>,
    /// Stream events until this unix timestamp.
    #[arg(long)]
    pub until: Option<String>,
    /// Filter output (type=, container=, event=).
    #[arg(long = "filter")]
    pub filter: Vec<String>,
    /// Format output using a Go-template subset.
    #[arg(long)]
    pub format: Option<String>,
}

pub async fn events(c: &Client, a: EventsArgs) -> Result<i32> {
    let mut q = format!("filters={}", filters_param(&a.filter)?);
    if let Some(s) = &a.since {
        q.push_str(&format!("&since={}", urlencode(s)));
    }
    if let Some(u) = &a.until {
        q.push_str(&format!("&until={}", urlencode(u)));
    }
    let r = c.send(hyper::Method::GET, &format!("/events?{q}"), client::empty_body(), None).await?;
    client::for_each_json_line(r, |ev| match &a.format {
        Some(f) => print_formatted(f, std::slice::from_ref(&ev)),
        None => {
            let attrs: Vec<String> = ev["Actor"]["Attributes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            println!(
                "{} {} {} {} ({})",
                ev["timeNano"],
                ev["Type"].as_str().unwrap_or(""),
                ev["Action"].as_str().unwrap_or(""),
                ev["Actor"]["ID"].as_str().unwrap_or(""),
                attrs.join(", ")
            );
        }
    })
    .await?;
    Ok(0)
}

#[derive(clap::Subcommand, Debug)]
pub enum SystemCommand {
    /// Show engine disk usage.
    Df,
    /// Display system-wide information.
    Info,
    /// List what removed or lost containers left behind (tasks, shims, cgroups, network
    /// namespaces and endpoints, port proxies, snapshots); exits 1 if anything is left.
    Check {
        /// Remove what is found, and say what went.
        #[arg(long)]
        collect: bool,
    },
}

/// `engine system check [--collect]`.
pub async fn system_check(c: &Client, collect: bool) -> Result<i32> {
    let path = "/engine/v1/system/check";
    let v = if collect { client::read_json(c.post(path, None).await?).await? } else { c.get(path).await? };
    let orphans = v["Orphans"].as_array().cloned().unwrap_or_default();
    let unchecked = v["Unchecked"].as_array().cloned().unwrap_or_default();
    for what in &unchecked {
        eprintln!("not checked: {}", what.as_str().unwrap_or_default());
    }
    if orphans.is_empty() {
        println!("nothing orphaned");
        return Ok(if unchecked.is_empty() { 0 } else { 1 });
    }
    let text = |o: &Value, k: &str| o[k].as_str().unwrap_or_default().to_string();
    let rows: Vec<Vec<String>> = orphans
        .iter()
        .map(|o| {
            let mut row = vec![text(o, "Kind"), text(o, "Container").chars().take(12).collect(), text(o, "Path")];
            if collect {
                row.push(match (o["Collected"].as_bool(), o["Error"].as_str()) {
                    (Some(true), _) => "removed".into(),
                    (_, Some(e)) => format!("left: {e}"),
                    _ => "left".into(),
                });
            }
            row
        })
        .collect();
    let header: &[&str] =
        if collect { &["KIND", "CONTAINER", "PATH", "RESULT"] } else { &["KIND", "CONTAINER", "PATH"] };
    print!("{}", format::table(header, &rows));
    let all_removed = collect && orphans.iter().all(|o| o["Collected"].as_bool() == Some(true));
    Ok(if all_removed && unchecked.is_empty() { 0 } else { 1 })
}

pub async fn system_df(c: &Client) -> Result<i32> {
    let v = c.get("/system/df").await?;
    let count = |k: &str| v[k].as_array().map(|a| a.len()).unwrap_or(0);
    let sum = |k: &str, f: &str| v[k].as_array().into_iter().flatten().map(|x| x[f].as_u64().unwrap_or(0)).sum::<u64>();
    let active_images =
        v["Images"].as_array().into_iter().flatten().filter(|i| i["Containers"].as_u64().unwrap_or(0) > 0).count();
    let running = v["Containers"].as_array().into_iter().flatten().filter(|c| c["State"] == "running").count();
    let rows = vec![
        vec![
            "Images".into(),
            count("Images").to_string(),
            active_images.to_string(),
            format::size(v["LayersSize"].as_u64().unwrap_or(0)),
        ],
        vec![
            "Containers".into(),
            count("Containers").to_string(),
            running.to_string(),
            format::size(sum("Containers", "SizeRw")),
        ],
        vec![
            "Local Volumes".into(),
            count("Volumes").to_string(),
            "".into(),
            format::size(
                v["Volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| x["UsageData"]["Size"].as_u64().unwrap_or(0))
                    .sum(),
            ),
        ],
    ];
    print!("{}", format::table(&["TYPE", "TOTAL", "ACTIVE", "SIZE"], &rows));
    Ok(0)
}
