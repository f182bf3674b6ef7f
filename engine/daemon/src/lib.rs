#![recursion_limit = "256"]
//! engined: the Docker Engine API server.
//!
//! Owns the API (Docker Engine API v1.41 and up on a unix socket), images and snapshots
//! (through engine-image), container metadata and its on-disk records, volumes, restart
//! policies, and the supervision of engine-lifecycled. It must never run containers itself:
//! tasks, shims and the runtime belong to lifecycled; engined only asks it, and keeps working
//! (reattaching) across restarts of either side.

pub mod api;
pub mod config;
pub mod daemon;
pub mod distribution;
pub mod events;
pub mod exec;
pub mod hostconfig;
pub mod http;
pub mod images;
pub mod kernel;
pub mod lifecycle;
pub mod metrics;
pub mod network;
pub mod records;
pub mod state;
pub mod supervisor;
pub mod trace;
pub mod traces;
pub mod tracestore;
pub mod types;
pub mod volumes;

use std::sync::Arc;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub use config::Config;

/// `--metrics-addr`: `GET /metrics` alone on a TCP address (as dockerd's), nothing else.
fn serve_metrics(d: Arc<daemon::Daemon>, listener: tokio::net::TcpListener) {
    log!(
        d.cfg,
        "info",
        "metrics on http://{}/metrics",
        listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let d = d.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let d = d.clone();
                    async move {
                        let resp = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                            metrics::scrape(&d).await.unwrap_or_else(http::ApiError::into_response)
                        } else {
                            http::ApiError::not_found("only GET /metrics is served here").into_response()
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}

/// Runs engined until SIGTERM or SIGINT.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg.resolve()?);
    let sock = cfg.socket_path()?;
    for dir in [&cfg.data_root, &cfg.exec_root] {
        config::ensure_dir(dir)?;
    }
    if let Some(parent) = sock.parent() {
        config::ensure_dir(parent)?;
    }
    if let Some(p) = &cfg.pidfile {
        std::fs::write(p, std::process::id().to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    // the probes first: they follow lifecycled from its start
    let probes = kernel::start(&cfg);
    let running = match &probes {
        kernel::ProbeState::Running(p) => Some(p.clone()),
        kernel::ProbeState::Disabled(_) => None,
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let traces = traces::start(&cfg, running.clone(), metrics.clone()).context("starting the trace store")?;
    // bound before anything is started, so a taken address changes nothing
    let metrics_listener = match &cfg.metrics_addr {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics-addr {addr}"))?)
        }
        None => None,
    };
    let supervisor = supervisor::start(cfg.clone()).await.context("starting engine-lifecycled")?;
    if let Some(p) = running {
        kernel::follow_engine_processes(&cfg, p, supervisor.pid.clone());
    }
    let lifecycled = supervisor.clone();
    let daemon = match daemon::Daemon::open(cfg.clone(), supervisor, traces, probes, metrics).await {
        Ok(d) => d,
        Err(e) => {
            // engined does not come up: the lifecycled it started goes too (nothing runs yet)
            supervisor::stop(&cfg, &lifecycled).await;
            return Err(e.context("opening the daemon state"));
        }
    };
    if let Some(listener) = metrics_listener {
        serve_metrics(daemon.clone(), listener);
    }

    let _ = std::fs::remove_file(&sock);
    let listener = engine_api::bind_unix(&sock).with_context(|| format!("listening on {}", sock.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("chmod {}", sock.display()))?;
    }
    log!(cfg, "info", "API listening on {}", sock.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        log!(cfg, "warn", "accept: {e}");
                        continue;
                    }
                };
                let d = daemon.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| api::handle(d.clone(), req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    log!(cfg, "info", "shutting down: stopping running containers");
    drop(listener);
    let _ = std::fs::remove_file(&sock);
    daemon.shutdown().await;
    supervisor::stop(&cfg, &daemon.supervisor).await;
    if let Some(p) = &cfg.pidfile {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
