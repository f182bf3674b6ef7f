//! The registry client: endpoints, authenticated requests, manifests, blobs and uploads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_image::ingest::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use engine_image::manifest::{self, Descriptor, Index, Manifest, Platform};
use engine_image::{BlobWriter, Digest, ImageError};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};

use crate::auth::{AuthConfig, Challenge, TokenResponse};

/// The `traceparent` header (W3C Trace Context): a traced registry joins the caller's trace.
const TRACEPARENT: &str = "traceparent";
/// Attempts at a blob download before giving up (each resumes where the last stopped).
const BLOB_ATTEMPTS: u32 = 5;
/// Attempts at a blob upload before giving up (each resumes where the registry says the last
/// stopped, or starts over when it lost the upload).
const UPLOAD_ATTEMPTS: u32 = 5;
/// The header by which a registry asks for chunks of at least this size (OCI Distribution).
const OCI_CHUNK_MIN_LENGTH: &str = "oci-chunk-min-length";

/// How engined reaches registries, as dockerd's `daemon.json` says it.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Mirrors of Docker Hub, tried in order before it (`https://mirror.example:5000`).
    pub mirrors: Vec<String>,
    /// Registries reached over plain HTTP or unverified TLS: `host:port`, `host` or a CIDR.
    /// Loopback registries always are, as with Docker.
    pub insecure_registries: Vec<String>,
    /// `<dir>/<host:port>/ca.crt`, `client.cert`, `client.key`, as Docker's `certs.d`.
    pub certs_dir: Option<PathBuf>,
    /// Blobs larger than this are uploaded in chunks of it (`PATCH` with `Content-Range`), so a
    /// broken upload resumes where the registry says it stopped; 0 uploads each blob in one
    /// request.
    pub upload_chunk_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Credentials missing or refused.
    #[error("{0}")]
    Unauthorized(String),
    /// The repository, manifest or blob does not exist (or is not visible without credentials).
    #[error("{0}")]
    NotFound(String),
    /// A manifest or layer the engine does not handle (schema 1, foreign layers, other platforms).
    #[error("{0}")]
    Unsupported(String),
    /// The registry answered something the protocol does not allow.
    #[error("{0}")]
    Protocol(String),
    /// The registry could not be reached or the connection broke.
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl RegistryError {
    fn transport(url: &Url, e: reqwest::Error) -> Self {
        Self::from_reqwest(e.with_url(url.clone()))
    }

    fn from_reqwest(e: reqwest::Error) -> Self {
        RegistryError::Transport(describe_reqwest(e))
    }
}

/// A failed request in one line: the URL (never holding credentials), what failed and why, as
/// far down as the cause goes (`connection refused`, `connection closed before message
/// completed`).
fn describe_reqwest(e: reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !causes.iter().any(|c: &String| c.contains(&s_text)) {
            causes.push(s_text);
        }
        source = s.source();
    }
    let url = e.url().map(|u| format!("{:?}: ", u.as_str())).unwrap_or_default();
    let mut msg = format!("{url}{}", e.without_url());
    for c in causes {
        msg.push_str(": ");
        msg.push_str(&c);
    }
    msg
}

/// The client: per-registry HTTP clients (TLS settings differ by host) and tokens.
pub struct Client {
    cfg: RegistryConfig,
    http: Mutex<HashMap<(String, bool), reqwest::Client>>,
    tokens: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

/// Where a repository lives and how it is reached.
#[derive(Clone, Debug)]
struct Endpoint {
    base: Url,
    http: reqwest::Client,
}

impl Client {
    pub fn new(cfg: RegistryConfig) -> Self {
        Client { cfg, http: Mutex::new(HashMap::new()), tokens: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The options it was made with.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// Whether `host` (`host[:port]`) is reached without verified TLS.
    pub fn is_insecure(&self, host: &str) -> bool {
        let bare = host_without_port(host);
        if bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.cfg.insecure_registries.iter().any(|r| {
            r == host
                || r == bare
                || match (r.parse::<ipnet::IpNet>(), bare.parse::<std::net::IpAddr>()) {
                    (Ok(net), Ok(ip)) => net.contains(&ip),
                    _ => false,
                }
        })
    }

    fn http_for(&self, host: &str, insecure: bool) -> Result<reqwest::Client, RegistryError> {
        let mut clients = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&(host.to_string(), insecure)) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("engine/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::limited(10));
        if insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        let bare = host_without_port(host);
        if bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            b = b.no_proxy();
        }
        if let Some(dir) = self.cfg.certs_dir.as_ref().map(|d| d.join(host)).filter(|d| d.is_dir()) {
            b = with_certs(b, &dir)?;
        }
        let c = b.build().map_err(|e| RegistryError::Config(format!("registry client for {host}: {e}")))?;
        clients.insert((host.to_string(), insecure), c.clone());
        Ok(c)
    }

    /// The endpoints to try for a registry domain, in order.
    fn endpoints(&self, domain: &str) -> Result<Vec<Endpoint>, RegistryError> {
        let mut out = Vec::new();
        let parse = |s: &str| Url::parse(s).map_err(|e| RegistryError::Config(format!("registry URL {s:?}: {e}")));
        if domain == "docker.io" {
            for m in &self.cfg.mirrors {
                let base = parse(m)?;
                let host = base.host_str().unwrap_or_default().to_string()
                    + &base.port().map(|p| format!(":{p}")).unwrap_or_default();
                let insecure = self.is_insecure(&host);
                out.push(Endpoint { http: self.http_for(&host, insecure)?, base });
            }
            out.push(Endpoint {
                base: parse("https://registry-1.docker.io")?,
                http: self.http_for("docker.io", false)?,
            });
            return Ok(out);
        }
        if self.is_insecure(domain) {
            // As dockerd: HTTPS without verification first, then plain HTTP.
            out.push(Endpoint { base: parse(&format!("https://{domain}"))?, http: self.http_for(domain, true)? });
            out.push(Endpoint { base: parse(&format!("http://{domain}"))?, http: self.http_for(domain, true)? });
        } else {
            out.push(Endpoint { base: parse(&format!("https://{domain}"))?, http: self.http_for(domain, false)? });
        }
        Ok(out)
    }

    /// Opens a repository (`domain`, `path` as in `127.0.0.1:5000` and `library/busybox`) for
    /// pulling, or pushing too: finds an endpoint that answers and authenticates as it asks.
    pub async fn repository(
        &self,
        domain: &str,
        path: &str,
        creds: Option<AuthConfig>,
        push: bool,
        traceparent: Option<&str>,
    ) -> Result<Repository, RegistryError> {
        let scope = format!("repository:{path}:{}", if push { "pull,push" } else { "pull" });
        let (endpoint, ping) = self.ping(domain, traceparent).await?;
        let mut repo = Repository {
            endpoint,
            domain: domain.to_string(),
            path: path.to_string(),
            creds,
            scope,
            authorization: None,
            tokens: self.tokens.clone(),
            upload_chunk_size: self.cfg.upload_chunk_size,
        };
        if ping.status() == StatusCode::UNAUTHORIZED {
            repo.authenticate(&ping, false).await?;
        }
        Ok(repo)
    }

    /// `GET /v2/` on each endpoint until one answers (200 or 401).
    async fn ping(&self, domain: &str, traceparent: Option<&str>) -> Result<(Endpoint, Response), RegistryError> {
        let mut first: Option<RegistryError> = None;
        let mut last = None;
        for e in self.endpoints(domain)? {
            let url = e.base.join("/v2/").map_err(|err| RegistryError::Config(err.to_string()))?;
            let mut req = e.http.get(url.clone());
            if let Some(tp) = traceparent {
                req = req.header(TRACEPARENT, tp);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() || r.status() == StatusCode::UNAUTHORIZED => return Ok((e, r)),
                // A TLS server answers plain HTTP with 400: the HTTPS attempt's error says why.
                Ok(r) if r.status() == StatusCode::BAD_REQUEST && first.is_some() => break,
                Ok(r) => {
                    last = Some(RegistryError::Protocol(format!(
                        "Get {:?}: unexpected status {}",
                        url.as_str(),
                        r.status()
                    )))
                }
                Err(err) => last = Some(RegistryError::transport(&url, err)),
            }
            if first.is_none() {
                first = last.take();
            }
        }
        Err(last.or(first).unwrap_or_else(|| RegistryError::Config(format!("no endpoint for registry {domain}"))))
    }

    /// Checks credentials against a registry as `docker login` does.
    pub async fn login(&self, domain: &str, creds: &AuthConfig) -> Result<(), RegistryError> {
        let (endpoint, ping) = self.ping(domain, None).await?;
        let url = endpoint.base.join("/v2/").map_err(|e| RegistryError::Config(e.to_string()))?;
        if ping.status().is_success() {
            return Ok(());
        }
        let mut repo = Repository {
            endpoint,
            domain: domain.to_string(),
            path: String::new(),
            creds: Some(creds.clone()),
            scope: String::new(),
            authorization: None,
            tokens: self.tokens.clone(),
            upload_chunk_size: self.cfg.upload_chunk_size,
        };
        repo.authenticate(&ping, true).await?;
        let r =
            repo.request(Method::GET, url.clone(), None).send().await.map_err(|e| RegistryError::transport(&url, e))?;
        if r.status() == StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Unauthorized(format!(
                "login attempt to {url} failed with status: 401 Unauthorized"
            )));
        }
        Ok(())
    }
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// A registry's CA, and a client certificate, from its `certs.d` directory.
fn with_certs(mut b: reqwest::ClientBuilder, dir: &Path) -> Result<reqwest::ClientBuilder, RegistryError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| RegistryError::Config(format!("{}: {e}", p.display())));
    let entries = std::fs::read_dir(dir).map_err(|e| RegistryError::Config(format!("{}: {e}", dir.display())))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "crt") {
            let cert = reqwest::Certificate::from_pem(&read(&p)?)
                .map_err(|err| RegistryError::Config(format!("{}: {err}", p.display())))?;
            b = b.add_root_certificate(cert);
        }
    }
    let (cert, key) = (dir.join("client.cert"), dir.join("client.key"));
    if cert.is_file() && key.is_file() {
        let mut pem = read(&cert)?;
        pem.extend(read(&key)?);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|err| RegistryError::Config(format!("{}: {err}", cert.display())))?;
        b = b.identity(id);
    }
    Ok(b)
}

/// A manifest resolved for a platform.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// What the reference named: an index or a manifest (Docker's `Digest:` line and RepoDigest).
    pub target: Descriptor,
    /// The image manifest chosen.
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
}

/// One repository of one registry, authenticated for its scope. Clones share the token cache
/// (one per layer download running side by side).
#[derive(Clone)]
pub struct Repository {
    endpoint: Endpoint,
    domain: String,
    path: String,
    creds: Option<AuthConfig>,
    scope: String,
    authorization: Option<String>,
    tokens: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    upload_chunk_size: u64,
}

/// An upload the registry opened: where the next bytes go and how many it holds.
#[derive(Clone, Debug)]
struct UploadSession {
    url: Url,
    offset: u64,
    /// The smallest chunk the registry takes (`OCI-Chunk-Min-Length`), 0 when it does not say.
    min_chunk: u64,
}

/// Why an upload attempt stopped: the error, whether another attempt may succeed, and the
/// session to resume (none: start over).
struct Interrupted {
    error: RegistryError,
    retry: bool,
    resume: Option<UploadSession>,
}

impl From<RegistryError> for Interrupted {
    fn from(error: RegistryError) -> Self {
        let retry = matches!(error, RegistryError::Transport(_));
        Interrupted { error, retry, resume: None }
    }
}

impl Repository {
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn url(&self, rest: &str) -> Result<Url, RegistryError> {
        self.endpoint
            .base
            .join(&format!("/v2/{}/{rest}", self.path))
            .map_err(|e| RegistryError::Protocol(format!("URL for {rest}: {e}")))
    }

    fn request(&self, method: Method, url: Url, traceparent: Option<&str>) -> RequestBuilder {
        let mut req = self.endpoint.http.request(method, url);
        if let Some(a) = &self.authorization {
            req = req.header(AUTHORIZATION, a);
        }
        if let Some(tp) = traceparent {
            req = req.header(TRACEPARENT, tp);
        }
        req
    }

    /// Answers a `401`'s challenge: credentials for Basic, a token for Bearer.
    async fn authenticate(&mut self, unauthorized: &Response, login: bool) -> Result<(), RegistryError> {
        let header = unauthorized.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
        let denied = || {
            RegistryError::Unauthorized(match &self.creds {
                Some(_) => "unauthorized: incorrect username or password".to_string(),
                None => "unauthorized: authentication required".to_string(),
            })
        };
        match header.and_then(Challenge::parse) {
            Some(Challenge::Basic) | None => {
                self.authorization = Some(self.creds.as_ref().and_then(AuthConfig::basic).ok_or_else(denied)?);
                Ok(())
            }
            Some(Challenge::Bearer { realm, service, scope }) => {
                if let Some(t) = self.creds.as_ref().map(|c| c.registrytoken.clone()).filter(|t| !t.is_empty()) {
                    self.authorization = Some(format!("Bearer {t}"));
                    return Ok(());
                }
                let scope = if login { None } else { Some(scope.unwrap_or_else(|| self.scope.clone())) };
                // Tokens are shared by requests with the same credentials only: the key holds a
                // digest of them, so another client naming the same user with another password
                // never gets this one's token.
                let who = self
                    .creds
                    .as_ref()
                    .and_then(AuthConfig::basic)
                    .map(|b| engine_image::Digest::of(b.as_bytes()).to_string())
                    .unwrap_or_default();
                let key =
                    format!("{realm}\n{}\n{}\n{who}", service.as_deref().unwrap_or(""), scope.as_deref().unwrap_or(""));
                let cached = self
                    .tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .filter(|(_, until)| *until > Instant::now())
                    .map(|(t, _)| t.clone());
                if let Some(t) = cached {
                    self.authorization = Some(format!("Bearer {t}"));
                    return Ok(());
                }
                let mut url =
                    Url::parse(&realm).map_err(|e| RegistryError::Protocol(format!("token realm {realm:?}: {e}")))?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    if let Some(s) = &scope {
                        q.append_pair("scope", s);
                    }
                }
                let mut req = self.endpoint.http.get(url.clone());
                if let Some(basic) = self.creds.as_ref().and_then(AuthConfig::basic) {
                    req = req.header(AUTHORIZATION, basic);
                }
                let r = req.send().await.map_err(|e| RegistryError::transport(&url, e))?;
                if r.status() == StatusCode::UNAUTHORIZED || r.status() == StatusCode::FORBIDDEN {
                    let base = self.endpoint.base.join("/v2/").map(|u| u.to_string()).unwrap_or_default();
                    return Err(RegistryError::Unauthorized(format!("Get {base:?}: {}", denied())));
                }
                if !r.status().is_success() {
                    return Err(RegistryError::Protocol(format!(
                        "token server {}: status {}",
                        url.origin().ascii_serialization(),
                        r.status()
                    )));
                }
                let t: TokenResponse = r
                    .json()
                    .await
                    .map_err(|e| RegistryError::Protocol(format!("token server answer: {}", e.without_url())))?;
                let token =
                    t.token().ok_or_else(|| RegistryError::Protocol("token server sent no token".into()))?.to_string();
                // Reused until shortly before it expires (60 s when the server does not say).
                let ttl = Duration::from_secs(t.expires_in.unwrap_or(60).saturating_sub(10).max(1));
                self.tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, (token.clone(), Instant::now() + ttl));
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
        }
    }

    /// Sends a request made by `build`; on `401` answers the challenge once and sends again.
    async fn send(
        &mut self,
        build: impl Fn(&Self) -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Response, RegistryError> {
        let req = build(self)?;
        let r = req.send().await.map_err(RegistryError::from_reqwest)?;
        if r.status() != StatusCode::UNAUTHORIZED {
            return Ok(r);
        }
        self.authenticate(&r, false).await?;
        build(self)?.send().await.map_err(RegistryError::from_reqwest)
    }

    /// The registry's error for a failed request, in Docker's words where Docker has them.
    async fn error(&self, what: &str, r: Response) -> RegistryError {
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        let detail = body["errors"]
            .as_array()
            .and_then(|e| e.first())
            .map(|e| {
                format!(
                    "{}: {}",
                    e["code"].as_str().unwrap_or("").to_ascii_lowercase().replace('_', " "),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_else(|| status.to_string());
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized(format!(
                "access denied for {}/{}, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
                self.domain, self.path
            )),
            StatusCode::NOT_FOUND => RegistryError::NotFound(format!("{what}: {detail}")),
            _ => RegistryError::Protocol(format!("{what}: {detail}")),
        }
    }

    /// Fetches the manifest a tag or digest names, refusing schema 1 and over-large ones.
    pub async fn fetch_manifest(
        &mut self,
        reference: &str,
        traceparent: Option<&str>,
    ) -> Result<(Descriptor, Vec<u8>), RegistryError> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let accept = [
            manifest::MEDIA_OCI_INDEX,
            manifest::MEDIA_OCI_MANIFEST,
            manifest::MEDIA_DOCKER_LIST,
            manifest::MEDIA_DOCKER_MANIFEST,
        ]
        .join(", ");
        let r = self.send(|s| Ok(s.request(Method::GET, url.clone(), traceparent).header(ACCEPT, &accept))).await?;
        if !r.status().is_success() {
            let e = self.error(&format!("manifest for {}/{}:{reference} not found", self.domain, self.path), r).await;
            return Err(e);
        }
        let header_digest = r.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_type = r
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let bytes = read_limited(r, MAX_MANIFEST_BYTES, "manifest").await?;
        let digest = Digest::of(&bytes);
        if let Ok(want) = reference.parse::<Digest>() {
            if want != digest {
                return Err(
                    ImageError::DigestMismatch { what: "manifest".into(), expected: want, actual: digest }.into()
                );
            }
        } else if let Some(h) = header_digest.and_then(|h| h.parse::<Digest>().ok()) {
            if h != digest {
                return Err(ImageError::DigestMismatch { what: "manifest".into(), expected: h, actual: digest }.into());
            }
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            schema_version: u32,
            #[serde(default)]
            media_type: Option<String>,
        }
        let probe: Probe = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Protocol(format!("manifest {digest} is not JSON: {e}")))?;
        let media_type = probe.media_type.filter(|m| !m.is_empty()).unwrap_or(content_type);
        if probe.schema_version == 1 || media_type.contains("distribution.manifest.v1") {
            return Err(RegistryError::Unsupported(format!(
                "{}/{}:{reference}: manifest schema 1 images are not supported; push it again with a current tool",
                self.domain, self.path
            )));
        }
        if !manifest::is_index(&media_type) && !manifest::is_manifest(&media_type) {
            return Err(RegistryError::Unsupported(format!("unsupported manifest media type {media_type:?}")));
        }
        let size = bytes.len() as u64;
        Ok((Descriptor { media_type, digest, size, platform: None, annotations: Default::default() }, bytes))
    }

    /// The repository's tags (`GET /v2/<name>/tags/list`), following the `Link` header's pages.
    pub async fn list_tags(&mut self, traceparent: Option<&str>) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut url = self.url("tags/list?n=1000")?;
        // A registry that pages forever is cut off: 100 pages of 1000 tags.
        for _ in 0..100 {
            let r = self.send(|s| Ok(s.request(Method::GET, url.clone(), traceparent))).await?;
            if !r.status().is_success() {
                return Err(self.error(&format!("tags of {}/{}", self.domain, self.path), r).await);
            }
            let next = r
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split(';').next())
                .map(|l| l.trim().trim_start_matches('<').trim_end_matches('>').to_string());
            let bytes = read_limited(r, MAX_MANIFEST_BYTES, "tag list").await?;
            let page: TagList = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::Protocol(format!("tag list of {}/{}: {e}", self.domain, self.path)))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => {
                    url = url.join(&n).map_err(|e| RegistryError::Protocol(format!("tag list link {n:?}: {e}")))?
                }
                None => break,
            }
        }
        Ok(tags)
    }

    /// Resolves a tag or digest to the image manifest for `platform`, through an index if the
    /// reference names one.
    pub async fn resolve(
        &mut self,
        reference: &str,
        platform: &Platform,
        traceparent: Option<&str>,
    ) -> Result<Resolved, RegistryError> {
        let (target, bytes) = self.fetch_manifest(reference, traceparent).await?;
        if manifest::is_manifest(&target.media_type) {
            let manifest = parse_manifest(&bytes, &target.digest)?;
            return Ok(Resolved { descriptor: target.clone(), target, bytes, manifest });
        }
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Protocol(format!("index {}: {e}", target.digest)))?;
        let matches = |p: &Platform| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && (platform.variant.is_none() || p.variant == platform.variant)
        };
        let chosen = index
            .manifests
            .iter()
            .filter(|d| manifest::is_manifest(&d.media_type))
            .find(|d| d.platform.as_ref().is_some_and(matches))
            .ok_or_else(|| {
                RegistryError::Unsupported(format!(
                    "no matching manifest for {}/{} in the manifest list entries",
                    platform.os, platform.architecture
                ))
            })?
            .clone();
        let (descriptor, bytes) = self.fetch_manifest(&chosen.digest.to_string(), traceparent).await?;
        let manifest = parse_manifest(&bytes, &descriptor.digest)?;
        Ok(Resolved { target, descriptor, bytes, manifest })
    }

    fn blob_request(
        &self,
        desc: &Descriptor,
        from: u64,
        traceparent: Option<&str>,
    ) -> Result<RequestBuilder, RegistryError> {
        let mut req = self.request(Method::GET, self.url(&format!("blobs/{}", desc.digest))?, traceparent);
        if from > 0 {
            req = req.header(RANGE, format!("bytes={from}-"));
        }
        Ok(req)
    }

    /// Fetches a small blob (a config) into memory, verified.
    pub async fn fetch_config(
        &mut self,
        desc: &Descriptor,
        traceparent: Option<&str>,
    ) -> Result<Vec<u8>, RegistryError> {
        if desc.size > MAX_CONFIG_BYTES {
            return Err(RegistryError::Unsupported(format!(
                "image config {} is {} bytes: too large",
                desc.digest, desc.size
            )));
        }
        let r = self.send(|s| s.blob_request(desc, 0, traceparent)).await?;
        if !r.status().is_success() {
            return Err(self.error(&format!("blob {}", desc.digest), r).await);
        }
        let bytes = read_limited(r, MAX_CONFIG_BYTES, "image config").await?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(ImageError::DigestMismatch {
                what: "image config".into(),
                expected: desc.digest.clone(),
                actual,
            }
            .into());
        }
        Ok(bytes)
    }

    /// Streams a blob into `sink`, resuming with `Range` after a broken connection and retrying
    /// with backoff; `progress` gets the bytes written so far. The caller commits the sink,
    /// which checks the digest.
    pub async fn fetch_blob(
        &mut self,
        desc: &Descriptor,
        sink: &mut BlobWriter,
        progress: &mut (dyn FnMut(u64) + Send),
        traceparent: Option<&str>,
    ) -> Result<(), RegistryError> {
        use std::io::Write;
        let mut last_error = None;
        for attempt in 0..BLOB_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
            let from = sink.written();
            let mut r = match self.send(|s| s.blob_request(desc, from, traceparent)).await {
                Ok(r) => r,
                Err(RegistryError::Transport(e)) => {
                    last_error = Some(RegistryError::Transport(format!(
                        "blob {}: {e} (after {} of {} bytes)",
                        desc.digest,
                        sink.written(),
                        desc.size
                    )));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match r.status() {
                StatusCode::PARTIAL_CONTENT if from > 0 => {}
                s if s.is_success() => {
                    if from > 0 {
                        sink.restart().map_err(|e| RegistryError::Transport(format!("blob {}: {e}", desc.digest)))?;
                    }
                }
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    last_error = Some(RegistryError::Protocol(format!("blob {}: status {s}", desc.digest)));
                    continue;
                }
                _ => return Err(self.error(&format!("blob {}", desc.digest), r).await),
            }
            loop {
                match r.chunk().await {
                    Ok(Some(chunk)) => {
                        sink.write_all(&chunk)
                            .map_err(|e| RegistryError::Protocol(format!("blob {}: {e}", desc.digest)))?;
                        progress(sink.written());
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let e = describe_reqwest(e);
                        last_error = Some(RegistryError::Transport(format!(
                            "blob {}: {e} (after {} of {} bytes)",
                            desc.digest,
                            sink.written(),
                            desc.size
                        )));
                        break;
                    }
                }
            }
            if sink.written() == desc.size {
                return Ok(());
            }
            last_error.get_or_insert_with(|| {
                RegistryError::Transport(format!(
                    "blob {}: connection closed after {} of {} bytes",
                    desc.digest,
                    sink.written(),
                    desc.size
                ))
            });
        }
        Err(last_error.unwrap_or_else(|| RegistryError::Transport(format!("blob {}: download failed", desc.digest))))
    }

    /// Whether the repository already has a blob (`HEAD`).
    pub async fn has_blob(&mut self, digest: &Digest, traceparent: Option<&str>) -> Result<bool, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"))?;
        let r = self.send(|s| Ok(s.request(Method::HEAD, url.clone(), traceparent))).await?;
        match r.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.error(&format!("blob {digest}"), r).await),
        }
    }

    /// Asks the registry to mount a blob from another repository it holds; false when it
    /// would rather have an upload.
    pub async fn mount_blob(
        &mut self,
        digest: &Digest,
        from: &str,
        traceparent: Option<&str>,
    ) -> Result<bool, RegistryError> {
        let mut url = self.url("blobs/uploads/")?;
        url.query_pairs_mut().append_pair("mount", &digest.to_string()).append_pair("from", from);
        let r = self.send(|s| Ok(s.request(Method::POST, url.clone(), traceparent).header(CONTENT_LENGTH, 0))).await?;
        Ok(r.status() == StatusCode::CREATED)
    }

    /// Uploads a blob from a file: in one `PUT` when it is no larger than the chunk size, else
    /// in `PATCH` chunks and a closing `PUT`. A broken connection or a server error is retried
    /// with backoff, resuming at the offset the registry reports for the upload (or from the
    /// start when it lost it). `progress` gets the bytes the registry holds so far.
    pub async fn upload_blob(
        &mut self,
        desc: &Descriptor,
        path: &Path,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
        traceparent: Option<&str>,
    ) -> Result<(), RegistryError> {
        let mut resume = None;
        let mut last_error = None;
        for attempt in 0..UPLOAD_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
            match self.upload_attempt(desc, path, resume.take(), &progress, traceparent).await {
                Ok(()) => return Ok(()),
                Err(i) if i.retry => {
                    resume = i.resume;
                    last_error = Some(i.error);
                }
                Err(i) => return Err(i.error),
            }
        }
        Err(last_error.unwrap_or_else(|| RegistryError::Transport(format!("blob upload {}: failed", desc.digest))))
    }

    async fn upload_attempt(
        &mut self,
        desc: &Descriptor,
        path: &Path,
        resume: Option<UploadSession>,
        progress: &Arc<dyn Fn(u64) + Send + Sync>,
        traceparent: Option<&str>,
    ) -> Result<(), Interrupted> {
        let what = format!("blob upload {}", desc.digest);
        let mut session = match resume {
            Some(s) => match self.upload_status(&s, traceparent).await? {
                Some(s) => s,
                None => self.start_upload(&what, traceparent).await?,
            },
            None => self.start_upload(&what, traceparent).await?,
        };
        progress(session.offset);
        let chunk = match self.upload_chunk_size {
            0 => 0,
            n => n.max(session.min_chunk),
        };
        if session.offset == 0 && (chunk == 0 || desc.size <= chunk) {
            // One request: the whole blob in the closing PUT.
            let mut url = session.url.clone();
            url.query_pairs_mut().append_pair("digest", &desc.digest.to_string());
            let body = file_body(path, 0, desc.size, progress.clone()).await?;
            let r = self
                .request(Method::PUT, url, traceparent)
                .headers(octet_stream(desc.size))
                .body(body)
                .send()
                .await
                .map_err(|e| RegistryError::Transport(format!("{what}: {}", describe_reqwest(e))))?;
            return match r.status() {
                StatusCode::CREATED => Ok(()),
                s => Err(self.upload_error(&what, r, s, None).await),
            };
        }
        while session.offset < desc.size {
            let len = chunk.min(desc.size - session.offset);
            let end = session.offset + len - 1;
            let body = file_body(path, session.offset, len, {
                let (p, base) = (progress.clone(), session.offset);
                Arc::new(move |sent| p(base + sent))
            })
            .await?;
            let mut headers = octet_stream(len);
            let range = HeaderValue::try_from(format!("{}-{end}", session.offset))
                .map_err(|e| RegistryError::Protocol(format!("{what}: {e}")))?;
            headers.insert(CONTENT_RANGE, range);
            let sent =
                self.request(Method::PATCH, session.url.clone(), traceparent).headers(headers).body(body).send().await;
            let r = match sent {
                Ok(r) => r,
                Err(e) => {
                    return Err(Interrupted {
                        error: RegistryError::Transport(format!(
                            "{what}: {} (at {} of {} bytes)",
                            describe_reqwest(e),
                            session.offset,
                            desc.size
                        )),
                        retry: true,
                        resume: Some(session),
                    })
                }
            };
            if r.status() != StatusCode::ACCEPTED {
                let s = r.status();
                return Err(self.upload_error(&what, r, s, Some(session)).await);
            }
            session = advance(&session, &r, end + 1)?;
            progress(session.offset);
        }
        let mut url = session.url.clone();
        url.query_pairs_mut().append_pair("digest", &desc.digest.to_string());
        let r = match self.request(Method::PUT, url, traceparent).header(CONTENT_LENGTH, 0).send().await {
            Ok(r) => r,
            Err(e) => {
                return Err(Interrupted {
                    error: RegistryError::Transport(format!("{what}: {}", describe_reqwest(e))),
                    retry: true,
                    resume: Some(session),
                })
            }
        };
        match r.status() {
            StatusCode::CREATED => Ok(()),
            s => Err(self.upload_error(&what, r, s, Some(session)).await),
        }
    }

    /// Opens an upload (`POST …/blobs/uploads/`).
    async fn start_upload(&mut self, what: &str, traceparent: Option<&str>) -> Result<UploadSession, Interrupted> {
        let start = self.url("blobs/uploads/")?;
        let r =
            self.send(|s| Ok(s.request(Method::POST, start.clone(), traceparent).header(CONTENT_LENGTH, 0))).await?;
        if r.status() != StatusCode::ACCEPTED {
            let s = r.status();
            return Err(self.upload_error(what, r, s, None).await);
        }
        let min_chunk = r
            .headers()
            .get(OCI_CHUNK_MIN_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let fresh = UploadSession { url: start, offset: 0, min_chunk };
        Ok(advance(&fresh, &r, 0)?)
    }

    /// Asks where an upload stands (`GET` on its location); `None` when the registry no
    /// longer has it, so the upload starts over.
    async fn upload_status(
        &mut self,
        session: &UploadSession,
        traceparent: Option<&str>,
    ) -> Result<Option<UploadSession>, Interrupted> {
        let r = match self.request(Method::GET, session.url.clone(), traceparent).send().await {
            Ok(r) => r,
            Err(e) => {
                return Err(Interrupted {
                    error: RegistryError::Transport(format!("blob upload status: {}", describe_reqwest(e))),
                    retry: true,
                    resume: Some(session.clone()),
                })
            }
        };
        match r.status() {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::ACCEPTED => {
                let held = upload_range_end(&r).unwrap_or(0);
                Ok(Some(advance(session, &r, held)?))
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Err(Interrupted {
                error: RegistryError::Protocol(format!("blob upload status: {s}")),
                retry: true,
                resume: Some(session.clone()),
            }),
            _ => Ok(None),
        }
    }

    /// The error of a failed upload request and whether to try again: a server error resumes,
    /// an upload the registry lost or refused a range of starts over, anything else is final.
    async fn upload_error(
        &self,
        what: &str,
        r: Response,
        status: StatusCode,
        session: Option<UploadSession>,
    ) -> Interrupted {
        let error = self.error(what, r).await;
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Interrupted { error, retry: true, resume: session };
        }
        let lost =
            matches!(status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::RANGE_NOT_SATISFIABLE);
        Interrupted { error, retry: lost && session.is_some(), resume: None }
    }

    /// Puts a manifest under a tag (or its digest); returns its digest.
    pub async fn put_manifest(
        &mut self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        traceparent: Option<&str>,
    ) -> Result<Digest, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let body = bytes.to_vec();
        let r = self
            .send(|s| {
                Ok(s.request(Method::PUT, url.clone(), traceparent).header(CONTENT_TYPE, media_type).body(body.clone()))
            })
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(self.error(&format!("manifest {reference}"), r).await);
        }
        Ok(Digest::of(bytes))
    }
}

/// The headers of an upload request's body of `len` bytes.
fn octet_stream(len: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers
}

/// `len` bytes of the file at `path` from `offset`, as a streamed body; `progress` gets the
/// bytes read so far.
async fn file_body(
    path: &Path,
    offset: u64,
    len: u64,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<reqwest::Body, RegistryError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let io = |e| RegistryError::Image(ImageError::Io { path: path.to_path_buf(), source: e });
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    let mut sent = 0u64;
    let stream = futures_util::StreamExt::map(
        tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 * 1024),
        move |c| {
            if let Ok(b) = &c {
                sent += b.len() as u64;
                progress(sent);
            }
            c
        },
    );
    Ok(reqwest::Body::wrap_stream(stream))
}

/// The session after the registry's answer: its `Location` (relative to the last one) and the
/// bytes it holds (its `Range`, else `offset`).
fn advance(session: &UploadSession, r: &Response, offset: u64) -> Result<UploadSession, RegistryError> {
    let url = match r.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
        Some(l) => {
            session.url.join(l).map_err(|e| RegistryError::Protocol(format!("blob upload Location {l:?}: {e}")))?
        }
        None if offset == 0 && session.offset == 0 => {
            return Err(RegistryError::Protocol("blob upload: no Location in the answer".into()))
        }
        None => session.url.clone(),
    };
    let offset = upload_range_end(r).unwrap_or(offset);
    Ok(UploadSession { url, offset, min_chunk: session.min_chunk })
}

/// The bytes an upload holds, from the registry's `Range: 0-<last>`. An empty upload is
/// `0-0` (Docker's registry) or `0--1`; `0-0` is read as empty, and were it one byte, the
/// next chunk's range would be refused and the upload start over.
fn upload_range_end(r: &Response) -> Option<u64> {
    let range = r.headers().get(RANGE)?.to_str().ok()?;
    range_end(range)
}

fn range_end(range: &str) -> Option<u64> {
    let last = range.trim().trim_start_matches("bytes=").split_once('-')?.1;
    let last: i64 = last.parse().ok()?;
    Some(if last <= 0 { 0 } else { last as u64 + 1 })
}

fn parse_manifest(bytes: &[u8], digest: &Digest) -> Result<Manifest, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Protocol(format!("manifest {digest}: {e}")))
}

/// Reads a whole body, refusing one larger than `limit`.
async fn read_limited(mut r: Response, limit: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
    if r.content_length().is_some_and(|n| n > limit) {
        return Err(RegistryError::Unsupported(format!("{what} is larger than {limit} bytes")));
    }
    let mut out = Vec::new();
    while let Some(c) = r.chunk().await.map_err(|e| RegistryError::Transport(format!("{what}: {}", e.without_url())))? {
        out.extend_from_slice(&c);
        if out.len() as u64 > limit {
            return Err(RegistryError::Unsupported(format!("{what} is larger than {limit} bytes")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ranges_read_as_dockers_registry_writes_them() {
        assert_eq!(range_end("0-0"), Some(0));
        assert_eq!(range_end("0--1"), Some(0));
        assert_eq!(range_end("0-1048575"), Some(1 << 20));
        assert_eq!(range_end("bytes=0-99"), Some(100));
        assert_eq!(range_end("junk"), None);
    }

    #[test]
    fn loopback_and_listed_registries_are_insecure() {
        let c = Client::new(RegistryConfig {
            insecure_registries: vec!["reg.test:5000".into(), "10.1.0.0/16".into()],
            ..Default::default()
        });
        for h in ["127.0.0.1:5000", "localhost:5000", "[::1]:5000", "reg.test:5000", "10.1.2.3:443"] {
            assert!(c.is_insecure(h), "{h}");
        }
        for h in ["reg.test:5001", "docker.io", "10.2.0.1"] {
            assert!(!c.is_insecure(h), "{h}");
        }
    }
}
