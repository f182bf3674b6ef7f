//! The Docker Engine API routes engined serves (negotiated from v1.41 up), each a thin
//! handler over [`Daemon`] or the image store.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use engine_api::v1::*;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon::{parse_signal, Daemon, Entry};
use crate::http::{self, empty, json, ApiError, Query, Resp};
use crate::lifecycle::task;
use crate::trace::Trace;
use engine_docker_api::{ContainerConfig, ContainerCreateBody};
use engine_image::StorageDriver;
use engine_util::time::{rfc3339_nanos, unix_seconds_of as unix_of};

pub const API_VERSION: &str = "1.43";
pub const MIN_API_VERSION: &str = "1.41";

fn version_ok(v: &str) -> bool {
    let parse = |s: &str| s.split_once('.').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    match (parse(v), parse(MIN_API_VERSION)) {
        (Some(v), Some(min)) => v >= min,
        _ => false,
    }
}

/// Handles one request: strips the version prefix, routes, and records the request span.
pub async fn handle(d: Arc<Daemon>, req: Request<http::RequestBody>) -> Result<Resp, std::convert::Infallible> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let traceparent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (version, path) = match raw_path.strip_prefix("/v").and_then(|rest| rest.split_once('/')) {
        Some((v, rest)) if v.contains('.') => (Some(v.to_string()), format!("/{rest}")),
        _ => (None, raw_path.clone()),
    };
    let route = route_name(&method, &path);
    // Reading or receiving traces is not itself traced; nor is a read (GET, HEAD) no caller asked
    // to trace: a monitor polling `ps` would otherwise crowd the operations out of the store.
    let read_only = method == Method::GET || method == Method::HEAD;
    let traced =
        !(path.starts_with("/v1/traces") || path.starts_with("/engine/v1/") || (read_only && traceparent.is_none()));
    let trace = Arc::new(Trace::new(
        d.sink.as_ref().filter(|_| traced),
        traceparent.as_deref(),
        &format!("{} {route}", method_label(&method)),
    ));
    trace.attr(trace.root, "http.request.method", method.to_string());
    trace.attr(trace.root, "url.path", raw_path.clone());
    trace.attr(trace.root, "http.route", route.clone());
    let result = match version {
        Some(v) if !version_ok(&v) => Err(ApiError::bad_request(format!(
            "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        ))),
        // A request that changes state runs to its end in a task of its own, even when its
        // client goes away (as dockerd's handlers do): a start cut short would leave a task
        // that its container's record does not show.
        _ if read_only => trace.scope(dispatch(&d, &trace, req, &method, &path)).await,
        _ => {
            let (d, op_trace, method, path) = (d.clone(), trace.clone(), method.clone(), path.clone());
            let op = async move { op_trace.scope(dispatch(&d, &op_trace, req, &method, &path)).await };
            tokio::spawn(op).await.unwrap_or_else(|e| Err(ApiError::internal(format!("request failed: {e}"))))
        }
    };
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    d.metrics.observe_request(method_label(&method), &route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    let h = resp.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Server", HeaderValue::from_static(concat!("engine/", env!("CARGO_PKG_VERSION"), " (linux)")));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    // The server span's context goes back out, so a client can link to this request's trace.
    if let Some(tp) = trace.traceparent(trace.root).and_then(|t| HeaderValue::from_str(&t).ok()) {
        h.insert("traceparent", tp);
    }
    trace.close(resp.status().as_u16());
    Ok(resp)
}

/// The route template (`/containers/{id}/start`), the stable name of the request span.
/// The `X-Registry-Auth` header of a pull, push or distribution inspect (base64 JSON
/// credentials, decoded by the image routes).
fn registry_auth(req: &Request<http::RequestBody>) -> Option<&str> {
    req.headers().get("x-registry-auth").and_then(|v| v.to_str().ok())
}

fn route_name(method: &Method, path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let t: String = match segs.as_slice() {
        ["containers", "create"] | ["containers", "json"] | ["containers", "prune"] => format!("/{}", segs.join("/")),
        ["containers", _] => "/containers/{id}".into(),
        ["containers", _, action] if CONTAINER_ACTIONS.contains(action) => format!("/containers/{{id}}/{action}"),
        ["exec", _, action] if ["start", "json", "resize"].contains(action) => format!("/exec/{{id}}/{action}"),
        ["images", "json"] | ["images", "load"] | ["images", "get"] | ["images", "create"] | ["images", "prune"] => {
            format!("/{}", segs.join("/"))
        }
        ["images", .., last] if ["json", "history", "tag", "get", "push"].contains(last) => {
            format!("/images/{{name}}/{last}")
        }
        ["distribution", .., "json"] => "/distribution/{name}/json".into(),
        ["images", ..] if method == Method::DELETE => "/images/{name}".into(),
        ["volumes", "create"] | ["volumes", "prune"] => format!("/{}", segs.join("/")),
        ["volumes", _] => "/volumes/{name}".into(),
        ["networks", "create"] | ["networks", "prune"] => format!("/{}", segs.join("/")),
        ["networks", _] => "/networks/{id}".into(),
        ["networks", _, action] if ["connect", "disconnect"].contains(action) => format!("/networks/{{id}}/{action}"),
        ["engine", "v1", "containers", _, "traces"] => "/engine/v1/containers/{id}/traces".into(),
        ["engine", "v1", "traces", "stats"] => "/engine/v1/traces/stats".into(),
        ["engine", "v1", "traces", _] => "/engine/v1/traces/{trace_id}".into(),
        // the fixed paths as they are; anything else a client made up is one name (it names a
        // span and labels a metric: it must not grow without bound)
        _ if FIXED_PATHS.contains(&path) => path.to_string(),
        _ => "(unmatched)".into(),
    };
    t
}

const CONTAINER_ACTIONS: &[&str] = &[
    "json", "start", "stop", "restart", "kill", "wait", "logs", "top", "stats", "attach", "resize", "exec", "rename",
    "pause", "unpause", "update", "export", "changes", "archive", "traces",
];
const FIXED_PATHS: &[&str] = &[
    "/_ping",
    "/version",
    "/info",
    "/events",
    "/system/df",
    "/images/json",
    "/volumes",
    "/networks",
    "/metrics",
    "/v1/traces",
    "/engine/v1/traces",
    "/engine/v1/probes",
    "/engine/v1/system/check",
    "/plugins",
    "/containers/json",
    "/auth",
    "/commit",
    "/build",
    "/build/prune",
];

/// The request method as a metric label: the standard ones, else "other".
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

async fn dispatch(
    d: &Arc<Daemon>,
    trace: &Trace,
    req: Request<http::RequestBody>,
    method: &Method,
    path: &str,
) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let segs: Vec<String> = path.trim_matches('/').split('/').map(http::decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    use Method as M;
    match (method, segs.as_slice()) {
        (&M::GET | &M::HEAD, ["_ping"]) => {
            let mut r = Resp::new(http::full(if method == M::HEAD { "" } else { "OK" }));
            r.headers_mut().insert("Cache-Control", HeaderValue::from_static("no-cache, no-store, must-revalidate"));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            Ok(r)
        }
        (&M::GET, ["version"]) => Ok(json(StatusCode::OK, &version(d))),
        (&M::GET, ["info"]) => Ok(json(StatusCode::OK, &info(d))),

        // containers
        (&M::POST, ["containers", "create"]) => {
            let body: ContainerCreateBody = http::read_json(req.into_body()).await?;
            let id = d.create(trace, q.get("name").map(str::to_string), body).await?;
            Ok(json(StatusCode::CREATED, &json!({ "Id": id, "Warnings": [] })))
        }
        (&M::GET, ["containers", "json"]) => Ok(json(StatusCode::OK, &list_containers(d, &q)?)),
        (&M::GET, ["containers", id, "json"]) => {
            Ok(json(StatusCode::OK, &inspect_container(d, &d.containers.find(id)?)))
        }
        (&M::POST, ["containers", id, "start"]) => {
            let e = d.containers.find(id)?;
            d.start(trace, &e).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&M::POST, ["containers", id, "stop"]) => {
            let e = d.containers.find(id)?;
            d.stop(trace, &e, q.int("t")?.or(q.int("timeout")?)).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&M::POST, ["containers", "prune"]) => {
            let f = PruneFilter::parse(&q, &["until", "label", "label!"])?;
            let (deleted, reclaimed) =
                d.prune(|r| f.picks(&r.created, |k| r.config.labels.as_ref()?.get(k).cloned())).await;
            let deleted = if deleted.is_empty() { Value::Null } else { json!(deleted) };
            Ok(json(StatusCode::OK, &json!({ "ContainersDeleted": deleted, "SpaceReclaimed": reclaimed })))
        }
        (&M::POST, ["containers", id, "update"]) => {
            let e = d.containers.find(id)?;
            d.update(&e, http::read_json(req.into_body()).await?).await?;
            Ok(json(StatusCode::OK, &json!({ "Warnings": null })))
        }
        (&M::POST, ["containers", id, "pause"]) => {
            d.pause(&d.containers.find(id)?).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&M::POST, ["containers", id, "unpause"]) => {
            d.unpause(&d.containers.find(id)?).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&M::POST, ["containers", id, "restart"]) => {
            let e = d.containers.find(id)?;
            d.restart(trace, &e, q.int("t")?).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&M::POST, ["containers", id, "kill"]) => {
            let e = d.containers.find(id)?;
            let signal = parse_signal(q.get("signal").filter(|s| !s.is_empty()).unwrap_or("SIGKILL"))?;
            d.kill(&e, signal).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&M::POST, ["containers", id, "wait"]) => {
            let e = d.containers.find(id)?;
            let condition = q.get("condition").unwrap_or("not-running").to_string();
            if !matches!(condition.as_str(), "" | "not-running" | "next-exit" | "removed") {
                return Err(ApiError::bad_request(format!("invalid condition: {condition:?}")));
            }
            // Headers go out at once (the CLI waits for them before starting the container).
            let (tx, body) = http::channel_body(1);
            let d = d.clone();
            // the request's span lasts until the answer, and the exit it reports (engined's work
            // after it, the container's run) joins its trace: a `run`'s trace has its whole run
            let this = crate::trace::current().ok_or_else(|| ApiError::internal("a wait outside of a request"))?;
            let hold = this.hold();
            let (done, exit_recorded) = tokio::sync::oneshot::channel();
            let waiter = crate::records::ExitWaiter { trace: this, done };
            let joined = e.wait_for_exit(waiter);
            tokio::spawn(async move {
                let out = match d.wait(&e, &condition).await {
                    Ok((code, err)) if err.is_empty() => json!({ "StatusCode": code, "Error": null }),
                    Ok((code, err)) => json!({ "StatusCode": code, "Error": { "Message": err } }),
                    Err(err) => json!({ "StatusCode": -1, "Error": { "Message": err.message } }),
                };
                if joined && !e.withdraw_exit_waiter(hold.trace()) {
                    // the exit took it: its spans are recorded before the answer goes
                    let _ = tokio::time::timeout(Duration::from_secs(30), exit_recorded).await;
                }
                // the span ends before the answer goes, so it ends inside its caller's
                drop(hold);
                let _ = tx.send(Bytes::from(format!("{out}\n"))).await;
            });
            let mut r = Resp::new(body);
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(r)
        }
        (&M::DELETE, ["containers", id]) => {
            let e = d.containers.find(id)?;
            d.remove(&e, q.flag("force"), q.flag("v")).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&M::DELETE, ["containers", name, alias]) if q.flag("link") => {
            d.remove_link(&d.containers.find(name)?, alias).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&M::POST, ["containers", id, "rename"]) => {
            let e = d.containers.find(id)?;
            d.rename(&e, q.get("name").unwrap_or(""))?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&M::GET, ["containers", id, "logs"]) => logs(d, &d.containers.find(id)?, &q).await,
        (&M::GET, ["containers", id, "top"]) => top(d, &d.containers.find(id)?).await,
        (&M::GET, ["containers", id, "changes"]) => crate::commit::changes(&d.files(), &d.containers.find(id)?).await,
        (&M::HEAD, ["containers", id, "archive"]) => {
            crate::commit::archive_get(&d.files(), &d.containers.find(id)?, &q, true).await
        }
        (&M::GET, ["containers", id, "archive"]) => {
            crate::commit::archive_get(&d.files(), &d.containers.find(id)?, &q, false).await
        }
        (&M::PUT, ["containers", id, "archive"]) => {
            crate::commit::archive_put(&d.files(), &d.containers.find(id)?, &q, req.into_body()).await
        }
        (&M::GET, ["containers", id, "export"]) => crate::commit::export(&d.files(), &d.containers.find(id)?).await,
        (&M::POST, ["build"]) => {
            let configs = req.headers().get("x-registry-config").and_then(|v| v.to_str().ok()).unwrap_or("");
            let configs = engine_registry::AuthConfig::configs_from_header(configs).map_err(ApiError::bad_request)?;
            let client = http::ClientWatch::of(&req);
            build(d, &q, configs, client, req.into_body()).await
        }
        // the cache's entries name images, which image prune reclaims: nothing to free here
        (&M::POST, ["build", "prune"]) => {
            Ok(json(StatusCode::OK, &json!({ "CachesDeleted": d.build_cache.clear(), "SpaceReclaimed": 0 })))
        }
        (&M::POST, ["commit"]) => {
            let body: Option<ContainerConfig> = http::read_json(req.into_body()).await?;
            let id = d.commit(trace, &q, body).await?;
            Ok(json(StatusCode::CREATED, &json!({ "Id": id.to_string() })))
        }
        (&M::GET, ["containers", id, "stats"]) => stats(d, &d.containers.find(id)?, &q).await,
        (&M::POST, ["containers", id, "attach"]) => attach(d, d.containers.find(id)?, &q, req).await,
        (&M::POST, ["containers", id, "resize"]) => {
            let e = d.containers.find(id)?;
            let (h, w) = (q.int("h")?.unwrap_or(0), q.int("w")?.unwrap_or(0));
            let req = ResizePtyRequest {
                container_id: e.snapshot().id,
                width: w as u32,
                height: h as u32,
                exec_id: String::new(),
            };
            d.lifecycle.resize_pty(req).await?;
            Ok(empty(StatusCode::OK))
        }

        // exec
        (&M::POST, ["containers", id, "exec"]) => {
            let e = d.containers.find(id)?;
            let config: crate::exec::ExecConfig = http::read_json(req.into_body()).await?;
            Ok(json(StatusCode::CREATED, &json!({ "Id": d.execs.create(&e, config)? })))
        }
        (&M::POST, ["exec", id, "start"]) => {
            let mut req = req;
            let upgrade = req.headers().get(UPGRADE).is_some().then(|| hyper::upgrade::on(&mut req));
            let start = http::read_json(req.into_body()).await?;
            d.execs.start(id, start, upgrade).await
        }
        (&M::GET, ["exec", id, "json"]) => Ok(json(StatusCode::OK, &d.execs.inspect(id)?)),
        (&M::POST, ["exec", id, "resize"]) => {
            d.execs.resize(id, q.int("h")?.unwrap_or(0), q.int("w")?.unwrap_or(0)).await
        }

        // images
        (&M::POST, ["images", "prune"]) => {
            let f = PruneFilter::parse(&q, &["until", "label", "label!", "dangling"])?;
            let all = f.dangling == Some(false);
            crate::images::prune(&d.image_service, all, |i| {
                let labels = i.config.config.as_ref().and_then(|c| c.labels.as_ref());
                f.picks(i.config.created.as_deref().unwrap_or(""), |k| labels?.get(k).cloned())
            })
            .await
        }
        (&M::GET, ["images", "json"]) => Ok(json(StatusCode::OK, &crate::images::list(&d.image_service, &q)?)),
        (&M::POST, ["images", "load"]) => crate::images::load(&d.image_service, req.into_body(), q.flag("quiet")).await,
        (&M::GET, ["images", "get"]) => crate::images::save(&d.image_service, q.all("names")).await,
        (&M::POST, ["images", "create"]) if q.get("fromImage").is_some_and(|s| !s.is_empty()) => {
            crate::images::pull(&d.image_service, &q, registry_auth(&req)).await
        }
        (&M::POST, ["images", "create"]) => crate::images::create(&d.image_service, &q, req.into_body()).await,
        (&M::POST, ["images", name @ .., "push"]) if !name.is_empty() => {
            crate::images::push(&d.image_service, &name.join("/"), &q, registry_auth(&req)).await
        }
        (&M::GET, ["distribution", name @ .., "json"]) if !name.is_empty() => {
            crate::images::distribution_inspect(&d.image_service, &name.join("/"), registry_auth(&req)).await
        }
        (&M::POST, ["auth"]) => crate::images::login(&d.image_service, http::read_json(req.into_body()).await?).await,
        (&M::GET, ["images", name @ .., "get"]) if !name.is_empty() => {
            crate::images::save(&d.image_service, vec![name.join("/")]).await
        }
        (&M::GET, ["images", name @ .., "json"]) if !name.is_empty() => {
            crate::images::inspect(&d.image_service, &name.join("/"))
        }
        (&M::GET, ["images", name @ .., "history"]) if !name.is_empty() => {
            crate::images::history(&d.image_service, &name.join("/"))
        }
        (&M::POST, ["images", name @ .., "tag"]) if !name.is_empty() => {
            crate::images::tag(&d.image_service, &name.join("/"), &q)
        }
        (&M::DELETE, ["images", name @ ..]) if !name.is_empty() => {
            crate::images::remove(&d.image_service, &name.join("/"), q.flag("force")).await
        }

        // volumes
        (&M::POST, ["volumes", "create"]) => {
            crate::volumes::create(&d.volumes, http::read_json(req.into_body()).await?)
        }
        (&M::GET, ["volumes"]) => crate::volumes::list(&d.volumes, &d.containers, &q),
        (&M::POST, ["volumes", "prune"]) => crate::volumes::prune(&d.volumes, &d.containers),
        (&M::GET, ["volumes", name]) => crate::volumes::inspect(&d.volumes, name),
        (&M::DELETE, ["volumes", name]) => crate::volumes::remove(&d.volumes, &d.containers, name, q.flag("force")),

        // networks
        (&M::GET, ["networks"]) => crate::network::list(&d.network_service, &q),
        (&M::POST, ["networks", "create"]) => {
            crate::network::create(&d.network_service, http::read_json(req.into_body()).await?).await
        }
        (&M::POST, ["networks", "prune"]) => crate::network::prune(&d.network_service, &q).await,
        (&M::GET, ["networks", id]) => crate::network::inspect(&d.network_service, id),
        (&M::DELETE, ["networks", id]) => crate::network::remove(&d.network_service, id).await,
        (&M::POST, ["networks", id, "connect"]) => {
            crate::network::connect(&d.network_service, id, http::read_json(req.into_body()).await?).await
        }
        (&M::POST, ["networks", id, "disconnect"]) => {
            crate::network::disconnect(&d.network_service, id, http::read_json(req.into_body()).await?).await
        }

        (&M::GET, ["metrics"]) => crate::metrics::scrape(&d.metrics_service).await,

        // engine extensions
        (&M::GET, ["engine", "v1", "containers", id, "traces"]) => {
            crate::traces::container_traces(&d.trace_service, id)
        }
        (&M::GET, ["engine", "v1", "traces"]) => crate::traces::recent(&d.trace_service, &q),
        (&M::GET, ["engine", "v1", "probes"]) => crate::traces::probes(&d.trace_service),
        (&M::GET, ["engine", "v1", "system", "check"]) => {
            Ok(http::json(StatusCode::OK, &crate::orphans::find(&d.orphans).await))
        }
        (&M::POST, ["engine", "v1", "system", "check"]) => {
            Ok(http::json(StatusCode::OK, &crate::orphans::collect(&d.orphans).await))
        }
        (&M::GET, ["engine", "v1", "traces", "stats"]) => crate::traces::stats(&d.trace_service, &q).await,
        (&M::GET, ["engine", "v1", "traces", id]) => crate::traces::trace(&d.trace_service, id).await,
        (&M::POST, ["v1", "traces"]) => {
            let ct = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
            crate::traces::receive(&d.trace_service, ct.as_deref(), req.into_body()).await
        }

        // system
        (&M::GET, ["events"]) => events(d, &q),
        (&M::GET, ["system", "df"]) => system_df(d),

        // not a swarm node: answered as dockerd answers outside a swarm, so clients read it so
        (_, ["swarm" | "services" | "nodes" | "tasks" | "secrets" | "configs", ..]) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.",
        )),
        (&M::GET, ["plugins"]) => Ok(json(StatusCode::OK, &json!([]))),

        (_, ["containers" | "images" | "exec" | "volumes" | "networks" | "system", ..])
        | (_, ["_ping" | "version" | "info"]) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("page not found: {method} {path} is not served by engined"),
        )),
        _ => Err(ApiError::not_found(format!("page not found: {path}"))),
    }
}

/// `POST /build`: the context is unpacked and its Dockerfile read first (a bad one is a plain
/// error answer), then the build streams its steps; one `daemon.build` span holds them. The
/// context goes when it ends; a client that goes away cancels it.
async fn build(
    d: &Arc<Daemon>,
    q: &Query,
    registry_auth: engine_registry::RegistryConfigs,
    client: http::ClientWatch,
    body: http::RequestBody,
) -> Result<Resp, ApiError> {
    let mut opts = crate::build::BuildOptions::from_query(q)?;
    opts.registry_auth = registry_auth;
    let trace = crate::trace::current().ok_or_else(|| ApiError::internal("build outside of a request"))?;
    let context = d.cfg.data_root.join("build").join(http::new_id()?);
    std::fs::create_dir_all(&context).map_err(|e| ApiError::internal(format!("{}: {e}", context.display())))?;
    let (dir, reader, dockerfile) = (context.clone(), http::BodyReader::new(body), opts.dockerfile.clone());
    let unpacked = tokio::task::spawn_blocking(move || crate::build::unpack_context(&dir, reader, &dockerfile))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let instructions = match unpacked.and_then(|text| crate::build::instructions(&text, &opts.dockerfile)) {
        Ok(instructions) => instructions,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&context);
            return Err(ApiError::bad_request(e.message));
        }
    };
    let hold = trace.hold();
    let span = trace.start(engine_telemetry::names::DAEMON_BUILD);
    let previous = trace.enter(span);
    let (lines, mut rx) = tokio::sync::mpsc::channel::<Value>(64);
    let (tx, resp_body) = http::channel_body(64);
    // the lines to the answer; a client that went away (its connection closed, or the answer
    // dropped) drops the receiver, which cancels the build (`build::cancelled`)
    let forward = tokio::spawn(async move {
        let mut check = tokio::time::interval(std::time::Duration::from_millis(250));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let v = tokio::select! {
                v = rx.recv() => v,
                _ = tx.closed() => None,
                _ = check.tick() => match client.gone() {
                    true => None,
                    false => continue,
                },
            };
            let Some(v) = v else { break };
            if tx.send(Bytes::from(format!("{v}\n"))).await.is_err() {
                break;
            }
        }
    });
    let (d, t) = (d.clone(), trace.clone());
    let work = async move {
        let host = Arc::new(crate::daemon::BuildHost(d.clone()));
        let result = crate::build::build(host, &d.build_cache, &t, &context, &instructions, &opts, &lines).await;
        match &result {
            Ok(id) => {
                // `engine trace --build NAME` finds the build by the name it gave
                if let Some(tag) = opts.tags.first() {
                    t.attr(span, "oci.reference", tag.to_string());
                }
                t.attr(span, "image.id", id.to_string());
                let _ = lines.send(json!({ "aux": { "ID": id.to_string() } })).await;
                let _ = lines.send(json!({ "stream": format!("Successfully built {}\n", &id.hex()[..12]) })).await;
                for tag in &opts.tags {
                    let _ = lines.send(json!({ "stream": format!("Successfully tagged {}\n", tag.familiar()) })).await;
                }
            }
            Err(e) => {
                let mut detail = json!({ "message": e.message });
                if let Some(code) = e.code {
                    detail["code"] = json!(code);
                }
                let _ = lines.send(json!({ "errorDetail": detail, "error": e.message })).await;
            }
        }
        let _ = t.finish(span, result.map(|_| ()).map_err(|e| e.message));
        t.enter(previous);
        let _ = std::fs::remove_dir_all(&context);
        drop(lines);
        let _ = forward.await;
        drop(hold);
    };
    tokio::spawn(async move { trace.scope(work).await });
    let mut r = Resp::new(resp_body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// The filters of `container prune` and `image prune`: `until` (a time: what was created
/// before it), `label` (`key` or `key=value`: all must match), `label!` (none may), and for
/// images `dangling`.
struct PruneFilter {
    until: Option<SystemTime>,
    labels: Vec<String>,
    not_labels: Vec<String>,
    dangling: Option<bool>,
}

impl PruneFilter {
    fn parse(q: &Query, known: &[&str]) -> Result<PruneFilter, ApiError> {
        let f = http::Filters::parse(q)?;
        f.only(known)?;
        let until =
            match f.get("until").as_slice() {
                [] => None,
                [t] => Some(engine_util::time::parse_docker_time(t, SystemTime::now()).ok_or_else(|| {
                    ApiError::bad_request(format!("invalid until filter {t:?}: a time or a duration"))
                })?),
                _ => return Err(ApiError::bad_request("more than one until filter")),
            };
        let dangling = match f.get("dangling").as_slice() {
            [] => None,
            [v] if matches!(v.as_str(), "true" | "1") => Some(true),
            [v] if matches!(v.as_str(), "false" | "0") => Some(false),
            v => return Err(ApiError::bad_request(format!("invalid filter 'dangling={}'", v.join(",")))),
        };
        Ok(PruneFilter { until, labels: f.get("label"), not_labels: f.get("label!"), dangling })
    }

    /// Whether a thing created at `created` (RFC 3339) with the labels `label` looks up is
    /// picked.
    fn picks(&self, created: &str, label: impl Fn(&str) -> Option<String>) -> bool {
        let matches = |l: &String| match l.split_once('=') {
            Some((k, v)) => label(k).as_deref() == Some(v),
            None => label(l).is_some(),
        };
        let before = self.until.is_none_or(|u| engine_util::time::parse_rfc3339(created).is_some_and(|c| c < u));
        before && self.labels.iter().all(matches) && !self.not_labels.iter().any(matches)
    }
}

/// `GET /events`: container events as they happen (and the recent ones after `since`),
/// until `until` or the client goes; filters `type`, `container`, `event`.
fn events(d: &Arc<Daemon>, q: &Query) -> Result<Resp, ApiError> {
    let filters = http::Filters::parse(q)?;
    let filter = crate::events::Filter {
        kinds: filters.get("type"),
        actions: filters.get("event"),
        containers: filters.get("container"),
    };
    let keep = move |ev: &crate::events::Event| filter.matches(ev);
    let since = parse_since(q.get("since"))?;
    let until = parse_since(q.get("until"))?;
    let (replay, mut rx) = d.events.subscribe(since);
    let (tx, body) = http::channel_body(64);
    tokio::spawn(async move {
        let now = || SystemTime::now().duration_since(UNIX_EPOCH).map(|t| t.as_nanos() as i64).unwrap_or(0);
        for ev in replay.into_iter().filter(|e| keep(e)) {
            if until.is_some_and(|u| ev.time_nano > u) || tx.send(event_line(&ev)).await.is_err() {
                return;
            }
        }
        loop {
            let wait = match until {
                Some(u) => Duration::from_nanos((u - now()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Ok(ev)) if keep(&ev) => {
                    if tx.send(event_line(&ev)).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) => return,
                Err(_) if until.is_some() => return,
                Err(_) => {}
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    let mut r = Resp::new(body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// `GET /system/df`: what images, containers and volumes take on disk.
fn system_df(d: &Arc<Daemon>) -> Result<Resp, ApiError> {
    let (_, layers) = d.images.disk_usage()?;
    let recs: Vec<_> = d.containers.all().iter().map(|e| e.snapshot()).collect();
    let images: Vec<Value> = d
        .images
        .list()?
        .iter()
        .map(|i| {
            let tags: Vec<String> = i.names.iter().map(|n| n.familiar()).collect();
            json!({
                "Id": i.id().to_string(), "ParentId": "", "RepoTags": tags, "RepoDigests": [],
                "Created": i.config.created.as_deref().map(unix_of).unwrap_or(0),
                "Size": i.record.size(), "SharedSize": -1, "VirtualSize": i.record.size(), "Labels": null,
                "Containers": recs.iter().filter(|r| &r.image_id == i.id()).count(),
            })
        })
        .collect();
    let containers: Vec<Value> = recs
        .iter()
        .map(|r| {
            json!({
                "Id": r.id, "Names": [format!("/{}", r.name)], "Image": r.image, "ImageID": r.image_id.to_string(),
                "Command": list_command(&r.path, &r.args),
                "Created": unix_of(&r.created), "State": r.state.status(), "Status": status_line(r),
                "SizeRw": engine_util::fs::dir_size(&r.upper), "SizeRootFs": 0, "Labels": r.config.labels, "Mounts": mounts_of(d, r),
            })
        })
        .collect();
    let volumes: Vec<Value> = d.volumes.list()
        .into_iter()
        .map(|v| {
            let size = engine_util::fs::dir_size(&v.mountpoint);
            let mut j = serde_json::to_value(&v).unwrap_or_default();
            j["UsageData"] = json!({ "Size": size, "RefCount": recs.iter().filter(|r| r.host_config.binds.iter().flatten().any(|b| b.split(':').next() == Some(v.name.as_str()))).count() });
            j
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({ "LayersSize": layers, "Images": images, "Containers": containers, "Volumes": volumes, "BuildCache": [] }),
    ))
}

fn version(d: &Daemon) -> Value {
    let _ = d;
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    json!({
        "Platform": { "Name": "engine" },
        "Components": [{ "Name": "Engine", "Version": env!("CARGO_PKG_VERSION"), "Details": { "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux", "Arch": "amd64", "KernelVersion": kernel } }],
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": "amd64",
        "KernelVersion": kernel,
        "BuildTime": ""
    })
}

fn info(d: &Daemon) -> Value {
    let all = d.containers.all();
    let count = |f: &dyn Fn(&crate::daemon::ContainerRecord) -> bool| all.iter().filter(|e| f(&e.snapshot())).count();
    let running = count(&|r| r.state.running() && !r.state.paused());
    let paused = count(&|r| r.state.paused());
    let uts = nix::sys::utsname::uname().ok();
    let cgroup_v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .unwrap_or(0)
        * 1024;
    json!({
        "ID": "",
        "Containers": all.len(),
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": all.len() - running - paused,
        "Images": d.images.list().map(|l| l.len()).unwrap_or(0),
        "ExperimentalBuild": false,
        "Driver": d.images.driver().as_str(),
        "DriverStatus": [["Backing Filesystem", "extfs"]],
        "Plugins": { "Volume": ["local"], "Network": ["bridge", "host", "null"], "Log": ["json-file"] },
        "MemoryLimit": true, "SwapLimit": false, "CpuCfsPeriod": true, "CpuCfsQuota": true, "PidsLimit": true,
        "IPv4Forwarding": std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1"),
        "Debug": d.cfg.log_enabled("debug"),
        "NFd": std::fs::read_dir("/proc/self/fd").map(|r| r.count()).unwrap_or(0),
        "NGoroutines": 0,
        "SystemTime": rfc3339_nanos(SystemTime::now()),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": if cgroup_v2 { "2" } else { "1" },
        "KernelVersion": uts.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        "OperatingSystem": os_name(),
        "OSType": "linux",
        "Architecture": "x86_64",
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": mem,
        "DockerRootDir": d.cfg.data_root,
        "Name": uts.as_ref().map(|u| u.nodename().to_string_lossy().into_owned()).unwrap_or_default(),
        "Labels": d.labels.read().map(|l| l.clone()).unwrap_or_default(),
        "RegistryConfig": registry_json(&d.distribution.registry_config()),
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": { "engine-runtime": { "path": "engine-runtime" } },
        "DefaultRuntime": "engine-runtime",
        "LiveRestoreEnabled": d.cfg.live_restore,
        "Isolation": "",
        "InitBinary": "engine-init",
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "Warnings": [],
        "Engine": { "LifecycledRestarts": d.supervisor.restarts.load(std::sync::atomic::Ordering::Relaxed), "LifecycledPid": *d.supervisor.pid.borrow(), "Probes": crate::traces::probe_status(&d.trace_service), "Traces": { "Bytes": d.traces.usage().0, "Count": d.traces.usage().1 }, "Firewall": d.networks.firewall_backend(), "Networks": d.networks.list().len() }
    })
}

/// `RegistryConfig` of `info`, as dockerd's: Docker Hub's mirrors, the insecure registries
/// (loopback always), and the index of each.
fn registry_json(r: &engine_registry::RegistryConfig) -> Value {
    let (cidrs, names): (Vec<&String>, Vec<&String>) =
        r.insecure_registries.iter().partition(|i| i.parse::<ipnet::IpNet>().is_ok());
    let mut cidrs: Vec<String> = cidrs.into_iter().cloned().collect();
    cidrs.insert(0, "127.0.0.0/8".into());
    let mut index = serde_json::Map::new();
    index.insert(
        "docker.io".into(),
        json!({ "Name": "docker.io", "Mirrors": r.mirrors, "Secure": true, "Official": true }),
    );
    for n in names {
        index.insert(n.clone(), json!({ "Name": n, "Mirrors": [], "Secure": false, "Official": false }));
    }
    json!({ "AllowNondistributableArtifactsCIDRs": [], "AllowNondistributableArtifactsHostnames": [],
        "InsecureRegistryCIDRs": cidrs, "IndexConfigs": index, "Mirrors": r.mirrors })
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "Linux".into())
}

fn ago(t: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    human_duration((now - unix_of(t)).max(0))
}

/// Docker's "About a minute", "3 hours"...
pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 1 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 172_800 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn status_line(r: &crate::daemon::ContainerRecord) -> String {
    use crate::state::Status;
    let s = &r.state;
    match s.status() {
        Status::Restarting => format!("Restarting ({}) {} ago", s.exit_code(), ago(s.finished_at())),
        Status::Running => match s.health().map(|h| h.status) {
            Some(crate::state::HealthStatus::Starting) => format!("Up {} (health: starting)", ago(s.started_at())),
            Some(h) => format!("Up {} ({})", ago(s.started_at()), h.as_str()),
            None => format!("Up {}", ago(s.started_at())),
        },
        Status::Paused => format!("Up {} (Paused)", ago(s.started_at())),
        Status::Created => "Created".into(),
        Status::Removing => "Removal In Progress".into(),
        Status::Exited | Status::Dead => format!("Exited ({}) {} ago", s.exit_code(), ago(s.finished_at())),
    }
}

fn list_containers(d: &Daemon, q: &Query) -> Result<Vec<Value>, ApiError> {
    let filters = http::Filters::parse(q)?;
    filters.only(&["name", "id", "status", "label", "ancestor", "exited", "health"])?;
    let values = |k: &str| filters.get(k);
    let all = q.flag("all") || !values("status").is_empty() || !values("exited").is_empty();
    let mut recs: Vec<_> = d.containers.all().iter().map(|e| e.snapshot()).collect();
    recs.sort_by(|a, b| b.created.cmp(&a.created));
    // the CRI's pods and containers are the CRI's to list, as containerd keeps its namespaces
    // apart; a label filter on `io.engine.cri` asks for them
    let cri = values("label").iter().any(|l| l.split('=').next() == Some(crate::podlabels::KIND_LABEL));
    let mut out = Vec::new();
    for r in recs {
        if (!all && !r.state.running()) || crate::podlabels::is_cri(&r) != cri {
            continue;
        }
        let status = r.state.status().as_str();
        let keep = values("name").iter().all(|n| r.name.contains(n.trim_start_matches('/')))
            && values("id").iter().all(|i| r.id.starts_with(i))
            && (values("status").is_empty() || values("status").iter().any(|s| s == status))
            && values("exited").iter().all(|c| r.state.exited() && c.parse::<i64>().ok() == Some(r.state.exit_code()))
            && (values("health").is_empty()
                || values("health").iter().any(|h| h == r.state.health().map_or("none", |h| h.status.as_str())))
            && values("ancestor").iter().all(|a| {
                &r.image == a
                    || r.image_id.to_string().starts_with(a)
                    || d.images.resolve(a).map(|i| i.id() == &r.image_id).unwrap_or(false)
            })
            && values("label").iter().all(|l| {
                let labels = r.config.labels.clone().unwrap_or_default();
                match l.split_once('=') {
                    Some((k, v)) => labels.get(k).map(String::as_str) == Some(v),
                    None => labels.contains_key(l),
                }
            });
        if !keep {
            continue;
        }
        let command = list_command(&r.path, &r.args);
        out.push(json!({
            "Id": r.id,
            "Names": [format!("/{}", r.name)],
            "Image": r.image,
            "ImageID": r.image_id.to_string(),
            "Command": command,
            "Created": unix_of(&r.created),
            "Ports": crate::network::ps_ports(&r),
            "Labels": r.config.labels.clone().unwrap_or_default(),
            "State": status,
            "Status": status_line(&r),
            "HostConfig": { "NetworkMode": if r.host_config.network_mode.is_empty() { "default" } else { r.host_config.network_mode.as_str() } },
            "NetworkSettings": { "Networks": crate::network::ps_networks(&d.network_service, &r) },
            "Mounts": mounts_of(d, &r),
        }));
    }
    Ok(out)
}

/// The container's binds and volumes as inspect and list show them (a volume's source is under
/// this daemon's data-root).
fn mounts_of(d: &Daemon, r: &crate::daemon::ContainerRecord) -> Vec<Value> {
    let mut out = Vec::new();
    for b in r.host_config.binds.iter().flatten() {
        let parts: Vec<&str> = b.split(':').collect();
        let (src, dst) = (parts[0], parts.get(1).copied().unwrap_or(""));
        let rw = !parts.get(2).is_some_and(|m| m.split(',').any(|o| o == "ro"));
        if src.starts_with('/') {
            out.push(json!({ "Type": "bind", "Source": src, "Destination": dst, "Mode": parts.get(2).copied().unwrap_or(""), "RW": rw, "Propagation": "rprivate" }));
        } else {
            out.push(json!({ "Type": "volume", "Name": src, "Source": d.volumes.data_path(src), "Destination": dst, "Driver": "local", "Mode": "z", "RW": rw, "Propagation": "" }));
        }
    }
    for m in r.host_config.mounts.iter().flatten() {
        match m.typ.as_str() {
            "bind" => {
                let propagation = m.bind_options.as_ref().map(|o| o.propagation.as_str()).filter(|p| !p.is_empty());
                out.push(json!({ "Type": "bind", "Source": m.source, "Destination": m.target, "Mode": "", "RW": !m.read_only, "Propagation": propagation.unwrap_or("rprivate") }));
            }
            "tmpfs" => out.push(json!({ "Type": "tmpfs", "Source": "", "Destination": m.target, "Mode": "", "RW": !m.read_only, "Propagation": "" })),
            // an anonymous one is among the anonymous volumes below, by the name it was given
            _ if m.source.is_empty() => {}
            _ => out.push(json!({ "Type": "volume", "Name": m.source, "Source": d.volumes.data_path(&m.source), "Destination": m.target, "Driver": "local", "Mode": "z", "RW": !m.read_only, "Propagation": "" })),
        }
    }
    for (name, dst) in &r.anonymous_volumes {
        let ro = r.host_config.mounts.iter().flatten().any(|m| m.typ == "volume" && &m.target == dst && m.read_only);
        out.push(json!({ "Type": "volume", "Name": name, "Source": d.volumes.data_path(name), "Destination": dst, "Driver": "local", "Mode": "", "RW": !ro, "Propagation": "" }));
    }
    out
}

fn inspect_container(d: &Daemon, e: &Arc<Entry>) -> Value {
    let r = e.snapshot();
    let dir = d.container_dir(&r.id);
    let lower: Vec<String> = r.lower.iter().rev().map(|p| p.display().to_string()).collect();
    let state = &r.state;
    // the driver that made its snapshot (the daemon's may have changed since)
    let driver = d.images.snapshot(&r.id).ok().flatten().map_or(d.images.driver(), |s| s.driver);
    let graph_driver = match driver {
        StorageDriver::Overlay2 => json!({ "Name": "overlay2", "Data": {
            "LowerDir": lower.join(":"), "UpperDir": r.upper, "WorkDir": r.work, "MergedDir": r.rootfs } }),
        StorageDriver::Vfs => json!({ "Name": "vfs", "Data": null }),
    };
    json!({
        "Id": r.id,
        "Created": r.created,
        "Path": r.path,
        "Args": r.args,
        "State": state,
        "Image": r.image_id.to_string(),
        "ResolvConfPath": dir.join("resolv.conf"),
        "HostnamePath": dir.join("hostname"),
        "HostsPath": dir.join("hosts"),
        "LogPath": "",
        "Name": format!("/{}", r.name),
        "RestartCount": r.restart_count,
        "Driver": driver.as_str(),
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": r.host_config,
        "GraphDriver": graph_driver,
        "Mounts": mounts_of(d, &r),
        "Config": r.config,
        "NetworkSettings": crate::network::settings_json(&d.network_service, &r),
    })
}

/// `GET /containers/{id}/logs`: the json-file log through lifecycled, multiplexed unless the
/// container has a terminal.
async fn logs(d: &Arc<Daemon>, e: &Arc<Entry>, q: &Query) -> Result<Resp, ApiError> {
    let rec = e.snapshot();
    let (want_out, want_err) = (q.flag("stdout"), q.flag("stderr"));
    if !want_out && !want_err {
        return Err(ApiError::bad_request("Bad parameters: you must choose at least one stream"));
    }
    if rec.host_config.log_config.as_ref().is_some_and(|lc| lc.typ == "none") {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "configured logging driver does not support reading".to_string(),
        ));
    }
    let follow = q.flag("follow");
    let timestamps = q.flag("timestamps");
    let tail = match q.get("tail") {
        None | Some("all") | Some("") => 0,
        Some(t) => t.parse::<u32>().map_err(|_| ApiError::bad_request(format!("invalid tail value: {t:?}")))?,
    };
    // --tail 0: nothing of the past, only what comes while following.
    let since = match q.get("tail") {
        Some("0") => Some(SystemTime::now().duration_since(UNIX_EPOCH).map(|t| t.as_nanos() as i64).unwrap_or(0)),
        _ => parse_since(q.get("since"))?,
    };
    let until = parse_since(q.get("until"))?.filter(|u| *u > 0);
    let req = LogsRequest { container_id: rec.id.clone(), follow: follow && rec.state.running(), tail };
    let mut stream = d.lifecycle.logs(req).await?;
    let (tx, body) = http::channel_body(64);
    let tty = rec.config.tty;
    tokio::spawn(async move {
        while let Ok(Some(entry)) = stream.message().await {
            if entry.time_unix_nanos < since.unwrap_or(0) || until.is_some_and(|u| entry.time_unix_nanos > u) {
                continue;
            }
            let is_err = entry.stream == "stderr";
            if (is_err && !want_err) || (!is_err && !want_out) {
                continue;
            }
            let mut payload = Vec::new();
            if timestamps {
                let t = UNIX_EPOCH + Duration::from_nanos(entry.time_unix_nanos.max(0) as u64);
                payload.extend_from_slice(rfc3339_nanos(t).as_bytes());
                payload.push(b' ');
            }
            payload.extend_from_slice(&entry.line);
            let chunk = if tty { Bytes::from(payload) } else { http::frame(if is_err { 2 } else { 1 }, &payload) };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut r = Resp::new(body);
    let ct = if tty { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" };
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(r)
}

/// `since`/`until`: unix seconds with an optional fraction; nanoseconds out.
/// One event as a line of `GET /events`' stream.
fn event_line(ev: &crate::events::Event) -> Bytes {
    let mut line = serde_json::to_vec(ev).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A `since`/`until` of logs and events (unix seconds[.nanoseconds], as the Docker CLI sends
/// them; Docker's durations and RFC 3339 times read too), in nanoseconds since the epoch.
fn parse_since(v: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(s) = v.filter(|s| !s.is_empty()) else { return Ok(None) };
    engine_util::time::parse_docker_time(s, SystemTime::now())
        .map(|t| Some(engine_util::time::unix_nanos(t)))
        .ok_or_else(|| ApiError::bad_request(format!("invalid timestamp {s:?}: want unix seconds[.nanoseconds]")))
}

async fn top(d: &Arc<Daemon>, e: &Arc<Entry>) -> Result<Resp, ApiError> {
    let rec = e.snapshot();
    if !rec.state.running() {
        return Err(ApiError::conflict(format!("Container {} is not running", rec.id)));
    }
    let pids = d.lifecycle.pids(task(&rec.id)).await?.pids;
    let mut processes = Vec::new();
    for pid in pids {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
            .unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.split_whitespace().next().unwrap_or("").to_string()))
                .unwrap_or_default()
        };
        processes.push(vec![field("Uid:"), pid.to_string(), field("PPid:"), cmd]);
    }
    Ok(json(StatusCode::OK, &json!({ "Titles": ["UID", "PID", "PPID", "CMD"], "Processes": processes })))
}

/// `GET /containers/{id}/stats`: as dockerd streams them, a sample a second (`precpu_stats`
/// the one before) until the container stops or the client goes; `stream=0` one sample
/// (`one-shot=1`: without waiting for a second to fill `precpu_stats`).
async fn stats(d: &Arc<Daemon>, e: &Arc<Entry>, q: &Query) -> Result<Resp, ApiError> {
    let stream = q.get("stream").is_none_or(|_| q.flag("stream"));
    let one_shot = q.flag("one-shot");
    let first = stats_sample(d, e, &Value::Null).await?;
    if !stream {
        let sample = if one_shot || !e.snapshot().state.running() {
            first
        } else {
            // as dockerd: a second sample, so precpu_stats is a second before
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            stats_sample(d, e, &first["cpu_stats"]).await?
        };
        return Ok(json(StatusCode::OK, &sample));
    }
    let (tx, body) = http::channel_body(4);
    let (d, e) = (d.clone(), e.clone());
    tokio::spawn(async move {
        let mut sample = first;
        loop {
            if tx.send(Bytes::from(format!("{sample}\n"))).await.is_err() || !e.snapshot().state.running() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match stats_sample(&d, &e, &sample["cpu_stats"]).await {
                Ok(next) => sample = next,
                Err(_) => return,
            }
        }
    });
    let mut r = Resp::new(body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// One stats sample of container `e` in dockerd's shape, `precpu` the previous sample's
/// `cpu_stats`; a container that does not run has zeros.
async fn stats_sample(d: &Arc<Daemon>, e: &Arc<Entry>, precpu: &Value) -> Result<Value, ApiError> {
    let rec = e.snapshot();
    let raw: Value = if rec.state.running() {
        let s = d.lifecycle.stats(task(&rec.id)).await?;
        serde_json::from_str(&s.stats_json).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let data = &raw["data"];
    let mem = data["memory"]["usage"]["usage"].as_u64().unwrap_or(0);
    let limit = data["memory"]["usage"]["limit"].as_u64().unwrap_or(0);
    let max_usage = data["memory"]["usage"]["max"].as_u64().unwrap_or(0);
    let cpu = data["cpu"]["usage"]["total"].as_u64().unwrap_or(0);
    let pids = data["pids"]["current"].as_u64().unwrap_or(0);
    let online = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let system = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse::<u64>().ok()).sum::<u64>();
            // jiffies (USER_HZ 100) as nanoseconds
            Some(cpu * 10_000_000)
        })
        .unwrap_or(0);
    let mut sample = json!({
        "read": rfc3339_nanos(SystemTime::now()),
        "preread": if precpu.is_null() { "0001-01-01T00:00:00Z".to_string() } else { rfc3339_nanos(SystemTime::now() - std::time::Duration::from_secs(1)) },
        "name": format!("/{}", rec.name),
        "id": rec.id,
        "num_procs": 0,
        "pids_stats": { "current": pids },
        "blkio_stats": {
            "io_service_bytes_recursive": null, "io_serviced_recursive": null, "io_queue_recursive": null,
            "io_service_time_recursive": null, "io_wait_time_recursive": null, "io_merged_recursive": null,
            "io_time_recursive": null, "sectors_recursive": null,
        },
        "cpu_stats": {
            "cpu_usage": { "total_usage": cpu, "usage_in_kernelmode": 0, "usage_in_usermode": 0 },
            "system_cpu_usage": system,
            "online_cpus": online,
            "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 },
        },
        "precpu_stats": if precpu.is_null() { json!({ "cpu_usage": { "total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0 }, "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 } }) } else { precpu.clone() },
        "memory_stats": if rec.state.running() { json!({ "usage": mem, "max_usage": max_usage, "limit": limit, "stats": data["memory"]["raw"].clone() }) } else { json!({}) },
        "storage_stats": {},
    });
    // its interfaces' traffic, read in its network namespace
    let pid = rec.state.pid();
    if pid > 0 {
        if let Ok(dev) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) {
            let networks: serde_json::Map<String, Value> = crate::network::interface_counters(&dev)
                .into_iter()
                .map(|(name, n)| {
                    (
                        name,
                        json!({
                            "rx_bytes": n[0], "rx_packets": n[1], "rx_errors": n[2], "rx_dropped": n[3],
                            "tx_bytes": n[8], "tx_packets": n[9], "tx_errors": n[10], "tx_dropped": n[11],
                        }),
                    )
                })
                .collect();
            if !networks.is_empty() {
                sample["networks"] = Value::Object(networks);
            }
        }
    }
    Ok(sample)
}

/// `POST /containers/{id}/attach`: the connection is hijacked; the container's output is
/// streamed to it (multiplexed without a terminal) and what the client writes goes to stdin.
async fn attach(
    d: &Arc<Daemon>,
    e: Arc<Entry>,
    q: &Query,
    mut req: Request<http::RequestBody>,
) -> Result<Resp, ApiError> {
    let rec = e.snapshot();
    let (want_in, want_out, want_err) = (q.flag("stdin"), q.flag("stdout"), q.flag("stderr"));
    // `logs`: the output so far first; `stream`: then follow it (without, the attach ends
    // once what was asked for is sent)
    let (logs, follow) = (q.flag("logs"), q.flag("stream"));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|t| t.as_nanos() as i64).unwrap_or(0);
    let from = if logs { 0 } else { now };
    // the detach keys end an attach with a terminal (as dockerd: only there)
    let mut escape = crate::detach::Escape::new(crate::detach::parse(q.get("detachKeys").unwrap_or(""))?);
    let exits_at_attach = e.life.borrow().exits;
    let upgrade = hyper::upgrade::on(&mut req);
    let d = d.clone();
    let tty = rec.config.tty;
    struct Attached(Arc<Entry>);
    impl Drop for Attached {
        fn drop(&mut self) {
            self.0.attached.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    e.attached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let guard = Attached(e.clone());
    tokio::spawn(async move {
        let _guard = guard;
        let Ok(upgraded) = upgrade.await else { return };
        let io = TokioIo::new(upgraded);
        let (mut rd, mut wr) = tokio::io::split(io);
        let id = rec.id.clone();
        // Output: wait until the container runs, then follow its log from the attach on.
        let out = {
            let d = d.clone();
            let e = e.clone();
            let id = id.clone();
            async move {
                if !follow && !logs {
                    let _ = wr.shutdown().await;
                    return;
                }
                // Following: until it runs (or has run and exited since the attach); a
                // container removed first (an auto-remove one whose start failed) ends the
                // stream. Not following: what it wrote so far, and the end.
                let mut life = e.life.subscribe();
                let started = !follow
                    || life
                        .wait_for(|l| l.running || l.exits > exits_at_attach || l.removed)
                        .await
                        .is_ok_and(|l| l.running || l.exits > exits_at_attach);
                if !started {
                    let _ = wr.shutdown().await;
                    return;
                }
                let req = LogsRequest { container_id: id.clone(), follow, tail: 0 };
                let Ok(mut stream) = d.lifecycle.logs(req).await else {
                    return;
                };
                while let Ok(Some(entry)) = stream.message().await {
                    if entry.time_unix_nanos < from || (!follow && entry.time_unix_nanos > now) {
                        continue;
                    }
                    let is_err = entry.stream == "stderr";
                    if (is_err && !want_err) || (!is_err && !want_out) {
                        continue;
                    }
                    let chunk = if tty {
                        Bytes::from(entry.line)
                    } else {
                        http::frame(if is_err { 2 } else { 1 }, &entry.line)
                    };
                    if wr.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            }
        };
        let input = async {
            if !want_in {
                return std::future::pending::<()>().await;
            }
            // The container's stdin exists from its start: what a client sends before (the
            // Docker CLI streams stdin, and its end, from the attach on, before it starts the
            // container) waits in the socket until then instead of going to no task.
            let mut life = e.life.subscribe();
            if life.wait_for(|l| l.running || l.exits > exits_at_attach || l.removed).await.is_err() {
                return std::future::pending::<()>().await;
            }
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = d.lifecycle.close_io(task(&id)).await;
                        return std::future::pending::<()>().await;
                    }
                    Ok(n) => {
                        let (data, detach) = match escape.feed(&buf[..n]) {
                            crate::detach::Fed::Forward(data) if tty => (data, false),
                            crate::detach::Fed::Detach(data) if tty => (data, true),
                            _ => (buf[..n].to_vec(), false),
                        };
                        if !data.is_empty() {
                            let req = WriteRequest { container_id: id.clone(), data, exec_id: String::new() };
                            let _ = d.lifecycle.write(req).await;
                        }
                        if detach {
                            // the attach ends; the container runs on
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = out => {}
            _ = input => {}
        }
    });
    let mut r = empty(StatusCode::SWITCHING_PROTOCOLS);
    let ct = if tty { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" };
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut().insert(UPGRADE, HeaderValue::from_static("tcp"));
    Ok(r)
}

/// A container's command as a list shows it: dockerd's, its path then each argument, an
/// argument with a space in single quotes (`sh -c 'echo up; exec sleep 9'`).
fn list_command(path: &str, args: &[String]) -> String {
    std::iter::once(path.to_string())
        .chain(args.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { a.clone() }))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_command_quotes_arguments_with_spaces_as_dockerd() {
        let args = ["-c".to_string(), "echo up; exec sleep 9".to_string()];
        assert_eq!(list_command("sh", &args), "sh -c 'echo up; exec sleep 9'");
        assert_eq!(list_command("true", &[]), "true");
    }

    #[test]
    fn parses_times_and_versions() {
        assert_eq!(unix_of("2023-11-14T22:13:20.123Z"), 1_700_000_000);
        assert!(version_ok("1.41") && version_ok("1.43") && !version_ok("1.40") && !version_ok("x"));
        assert_eq!(parse_since(Some("12.5")).unwrap(), Some(12_500_000_000));
        assert_eq!(human_duration(90), "About a minute");
    }
}
