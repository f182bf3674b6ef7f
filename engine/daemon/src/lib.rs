#![recursion_limit = "256"]
//! engined: the Docker Engine API server.
//!
//! Owns the API (Docker Engine API v1.41 and up on a unix socket), images and snapshots
//! (through engine-image), container metadata and its on-disk records, volumes, restart
//! policies, and the supervision of engine-lifecycled. It must never run containers itself:
//! tasks, shims and the runtime belong to lifecycled; engined only asks it, and keeps working
//! (reattaching) across restarts of either side.

pub mod api;
pub mod build;
pub mod commit;
pub mod config;
pub mod cri;
pub mod cristream;
pub mod daemon;
pub mod detach;
pub mod distribution;
pub mod events;
pub mod exec;
pub mod format;
pub mod health;
pub mod hostconfig;
pub mod http;
pub mod images;
pub mod kernel;
pub mod lifecycle;
pub mod metrics;
pub mod network;
pub mod ocihooks;
pub mod orphans;
pub mod podlabels;
pub mod records;
pub mod runconfig;
pub mod state;
pub mod supervisor;
pub mod systemd;
pub mod tailsample;
pub mod trace;
pub mod traces;
pub mod tracestore;
pub mod volumes;

#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

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
        let mut backoff = AcceptBackoff::default();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff.recovered();
                    stream
                }
                Err(e) => {
                    let (pause, first) = backoff.failed();
                    if first {
                        log!(d.cfg, "warn", "metrics accept: {e}; backing off");
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let d = d.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let d = d.clone();
                    async move {
                        let resp = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                            metrics::scrape(&d.metrics_service).await.unwrap_or_else(http::ApiError::into_response)
                        } else {
                            http::ApiError::not_found("only GET /metrics is served here").into_response()
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// Back-off of the accept loop after errors: 5 ms doubling to 1 s, reset by a success.
#[derive(Default)]
struct AcceptBackoff {
    failures: u64,
}

impl AcceptBackoff {
    /// After an error: how long to wait, and whether it is the first of a run.
    fn failed(&mut self) -> (Duration, bool) {
        self.failures += 1;
        let ms = 5u64 << (self.failures - 1).min(8);
        (Duration::from_millis(ms.min(1000)), self.failures == 1)
    }

    /// After a success: the number of errors of the run it ends, if there was one.
    fn recovered(&mut self) -> Option<u64> {
        let n = std::mem::take(&mut self.failures);
        (n > 0).then_some(n)
    }
}

/// The descriptor limit engined started with, before [`raise_nofile_limit`].
static STARTING_NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Raises the soft limit on open descriptors to the hard one, as Go programs (dockerd,
/// containerd) do at start: each API connection holds one. Call it before threads start.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            let _ = STARTING_NOFILE.set((soft, hard));
        }
    }
}

/// The limit to give back to a child (lifecycled, and through it the shims and containers,
/// which inherit it as they would from a daemon that never raised it); none when unchanged.
pub(crate) fn starting_nofile_limit() -> Option<(u64, u64)> {
    STARTING_NOFILE.get().copied()
}

/// API connections at once when `--max-api-connections` is not given: the descriptor limit
/// (as raised) less 1024 kept for the containers' operations, at least 64.
fn default_connection_limit() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map(|(soft, _)| soft).unwrap_or(1024);
    usize::try_from(soft.saturating_sub(1024)).unwrap_or(usize::MAX).max(64)
}

/// SIGHUP: the configuration read again (the same flags, the file as it is now); what dockerd
/// reloads takes effect at once (log level, registry mirrors and insecure registries, concurrent
/// downloads and uploads) and the log says what changed. A configuration that does not read
/// changes nothing.
fn reload(cfg: &Config, current: &mut config::Reloadable, daemon: &daemon::Daemon) {
    systemd::notify("RELOADING=1");
    let read = Config::from_args(std::env::args_os()).map_err(anyhow::Error::from).and_then(Config::resolve);
    match read {
        Err(e) => log!(cfg, "error", "reloading the configuration: {e:#}; it stays as it was"),
        Ok(new) => {
            let next = config::Reloadable::of(&new);
            let changes = current.changes(&next);
            next.apply_log_level();
            daemon.distribution.reconfigure(new.registry(), next.max_concurrent_downloads, next.max_concurrent_uploads);
            if let Ok(mut labels) = daemon.labels.write() {
                labels.clone_from(&next.labels);
            }
            if changes.is_empty() {
                log!(cfg, "info", "reloaded the configuration: nothing that a reload changes changed");
            } else {
                log!(cfg, "info", "reloaded the configuration: {}", changes.join(", "));
            }
            *current = next;
        }
    }
    systemd::notify("READY=1");
}

/// Runs engined until SIGTERM or SIGINT.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg.resolve()?);
    config::apply_log_format(&cfg);
    let listen = cfg.listen()?;
    for dir in [&cfg.data_root, &cfg.exec_root] {
        config::ensure_dir(dir)?;
    }
    // a data root of a newer engine is refused before anything reads or changes it
    format::check(&cfg.data_root)?;
    // a socket handed over is taken first: a wrong one changes nothing
    let activated = match &listen {
        config::Listen::Unix(sock) => {
            if let Some(parent) = sock.parent() {
                config::ensure_dir(parent)?;
            }
            None
        }
        config::Listen::Activated(fd) => Some(systemd::activated_listener(*fd)?),
    };
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
    systemd::notify("STATUS=starting engine-lifecycled");
    let supervisor = supervisor::start(cfg.clone()).await.context("starting engine-lifecycled")?;
    if let Some(p) = running {
        kernel::follow_engine_processes(&cfg, p, supervisor.pid.clone());
    }
    if let Some(sampler) = traces.0.sampler().cloned() {
        // a trace that spans a restart of lifecycled is always exported
        let mut pid = supervisor.pid.clone();
        tokio::spawn(async move {
            pid.borrow_and_update();
            while pid.changed().await.is_ok() {
                sampler.note_restart();
            }
        });
    }
    let lifecycled = supervisor.clone();
    systemd::notify("STATUS=reading the records and adopting running containers");
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
    orphans::spawn_periodic(daemon.orphans.clone());

    let (listener, sock) = match (&listen, activated) {
        (config::Listen::Unix(sock), _) => {
            let _ = std::fs::remove_file(sock);
            let listener = engine_api::bind_unix(sock).with_context(|| format!("listening on {}", sock.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o660))
                .with_context(|| format!("chmod {}", sock.display()))?;
            log!(cfg, "info", "API listening on {}", sock.display());
            (listener, Some(sock.clone()))
        }
        (config::Listen::Activated(_), Some(handed)) => {
            let listener = tokio::net::UnixListener::from_std(handed).context("the socket handed over")?;
            let at = listener.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
            log!(cfg, "info", "API listening on the socket handed over ({})", at.unwrap_or_default());
            (listener, None)
        }
        (config::Listen::Activated(_), None) => anyhow::bail!("no socket was handed over"),
    };
    let cri_sock = match (&cfg.cri_socket, cfg.no_cri) {
        (Some(path), false) => {
            let _ = std::fs::remove_file(path);
            let listener = engine_api::bind_unix(path).with_context(|| format!("the CRI socket {}", path.display()))?;
            let runtime = Arc::new(cristream::CriStreams::new(
                daemon.containers.clone(),
                daemon.execs.clone(),
                daemon.lifecycle.clone(),
            ));
            let streams = engine_streaming::Server::bind(cfg.cri_stream_address, runtime)
                .await
                .with_context(|| format!("the CRI streaming server on {}", cfg.cri_stream_address))?;
            log!(cfg, "info", "CRI listening on {} (streaming on {})", path.display(), streams.address());
            cri::serve(daemon.clone(), listener, streams);
            Some(path.clone())
        }
        _ => None,
    };
    // ready: the API answers, lifecycled is up and the containers are adopted
    systemd::notify("READY=1\nSTATUS=serving the Docker Engine API");
    systemd::spawn_watchdog();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut reloadable = config::Reloadable::of(&cfg);
    let mut backoff = AcceptBackoff::default();
    let limit = cfg.max_api_connections.unwrap_or_else(default_connection_limit);
    let connections = Arc::new(tokio::sync::Semaphore::new(limit));
    let header_timeout = (cfg.api_header_timeout > 0).then(|| Duration::from_secs(cfg.api_header_timeout));
    let body_timeout = (cfg.api_body_timeout > 0).then(|| Duration::from_secs(cfg.api_body_timeout));
    let mut at_limit = false;
    loop {
        // A connection is accepted only with a place for it: at the limit, the next ones wait
        // in the listen backlog until others close (the header timeout closes stalled ones).
        let place = match connections.clone().try_acquire_owned() {
            Ok(p) => {
                at_limit = false;
                p
            }
            Err(_) => {
                if !at_limit {
                    log!(
                        cfg,
                        "warn",
                        "{limit} API connections open (--max-api-connections): new ones wait until some close"
                    );
                    at_limit = true;
                }
                tokio::select! {
                    p = connections.clone().acquire_owned() => p.context("the connection limit closed")?,
                    _ = term.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => {
                        if let Some(n) = backoff.recovered() {
                            log!(cfg, "info", "accepting connections again ({n} accept errors)");
                        }
                        s
                    }
                    Err(e) => {
                        // Out of descriptors (or memory): wait before trying again instead of
                        // spinning, and say so once, not once per attempt.
                        let (pause, first) = backoff.failed();
                        if first {
                            log!(cfg, "warn", "accept: {e}; backing off until connections close");
                        }
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                let d = daemon.clone();
                let socket = std::os::fd::AsRawFd::as_raw_fd(&stream);
                tokio::spawn(async move {
                    let _place = place;
                    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        // a build watches its client (http::ClientWatch); no other request needs to
                        if req.uri().path().ends_with("/build") {
                            // SAFETY: the service is called from the connection's own poll, while
                            // the connection (and so its socket) is open.
                            let stream = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket) };
                            req.extensions_mut().insert(http::ClientWatch::socket(stream));
                        }
                        api::handle(d.clone(), req.map(|body| http::RequestBody::new(body, body_timeout)))
                    });
                    // half_close: a request whose client closed its side right after sending
                    // it is still served (and one that changes state runs to its end, see
                    // api::handle), as Go's net/http serves it for dockerd.
                    let _ = http1::Builder::new()
                        .half_close(true)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
            _ = hup.recv() => reload(&cfg, &mut reloadable, &daemon),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(listener);
    // a socket systemd handed over stays its own
    for sock in sock.iter().chain(cri_sock.iter()) {
        let _ = std::fs::remove_file(sock);
    }
    if cfg.live_restore {
        // the containers, their shims and lifecycled stay for the next engined to adopt
        let running = daemon.containers.all().iter().filter(|e| e.snapshot().state.running()).count();
        log!(cfg, "info", "shutting down (live-restore): {running} running containers stay running");
        systemd::notify("STOPPING=1\nSTATUS=stopping; the running containers stay (live-restore)");
        daemon.shutdown(true).await;
        daemon.supervisor.release();
    } else {
        log!(cfg, "info", "shutting down: stopping running containers");
        systemd::notify("STOPPING=1\nSTATUS=stopping running containers");
        daemon.shutdown(false).await;
        supervisor::stop(&cfg, &daemon.supervisor).await;
    }
    if let Some(p) = &cfg.pidfile {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
