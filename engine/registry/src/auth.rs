//! Credentials and authentication challenges.
//!
//! A registry answers an unauthenticated request with `401` and a `WWW-Authenticate` challenge:
//! `Basic realm=…` (send the credentials on every request) or `Bearer realm=…,service=…,scope=…`
//! (fetch a token from the realm with the credentials, then send the token). Tokens are kept per
//! registry and scope and reused until they expire.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Credentials for one registry, in Docker's `X-Registry-Auth` / `POST /auth` form. Its `Debug`
/// never shows a secret.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// `base64(username:password)`, as config.json keeps it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth: String,
    #[serde(default, skip_serializing_if = "String::is_empty", alias = "serverAddress")]
    pub serveraddress: String,
    /// A refresh token (OAuth2), used instead of a password.
    #[serde(default, skip_serializing_if = "String::is_empty", alias = "identityToken")]
    pub identitytoken: String,
    /// A bearer token sent as it is.
    #[serde(default, skip_serializing_if = "String::is_empty", alias = "registryToken")]
    pub registrytoken: String,
}

/// Credentials per registry address, as `X-Registry-Config` carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryConfigs(pub BTreeMap<String, AuthConfig>);

impl RegistryConfigs {
    /// The credentials for registry `domain` (`127.0.0.1:5000`, `docker.io`): keyed by the
    /// address as written, with or without a scheme and path, Docker Hub's by its index URL.
    pub fn for_registry(&self, domain: &str) -> Option<AuthConfig> {
        let host = |key: &str| {
            let k = key.trim_start_matches("https://").trim_start_matches("http://");
            k.split('/').next().unwrap_or(k).to_string()
        };
        let hub = matches!(domain, "docker.io" | "index.docker.io" | "registry-1.docker.io");
        self.0
            .iter()
            .find(|(k, _)| {
                let h = host(k);
                h == domain || (hub && matches!(h.as_str(), "docker.io" | "index.docker.io" | "registry-1.docker.io"))
            })
            .map(|(_, a)| a.clone())
            .filter(|a| !a.is_anonymous())
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("serveraddress", &self.serveraddress)
            .field("password", &if self.password.is_empty() { "" } else { "<redacted>" })
            .finish_non_exhaustive()
    }
}

impl AuthConfig {
    /// Decodes an `X-Registry-Auth` header: base64url (padded or not) of the JSON. An empty or
    /// `{}` header means anonymous.
    pub fn from_header(value: &str) -> Result<Option<Self>, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(value))
            .map_err(|_| "X-Registry-Auth is not base64".to_string())?;
        let a: AuthConfig =
            serde_json::from_slice(&raw).map_err(|_| "X-Registry-Auth does not hold the auth JSON".to_string())?;
        Ok(Some(a).filter(|a| !a.is_anonymous()))
    }

    /// Decodes an `X-Registry-Config` header (what `docker build` sends): base64url of a JSON
    /// map from registry address to credentials, one per registry the client has a login for.
    pub fn configs_from_header(value: &str) -> Result<RegistryConfigs, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(RegistryConfigs::default());
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(value))
            .map_err(|_| "X-Registry-Config is not base64".to_string())?;
        let all: BTreeMap<String, AuthConfig> = serde_json::from_slice(&raw)
            .map_err(|_| "X-Registry-Config does not hold a map of registry credentials".to_string())?;
        Ok(RegistryConfigs(all))
    }

    /// The header value for these credentials (what the CLI sends).
    pub fn to_header(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE.encode(json)
    }

    /// Username and password, from the fields or from `auth`.
    pub fn user_password(&self) -> Option<(String, String)> {
        if !self.username.is_empty() || !self.password.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(&self.auth).ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }

    pub fn is_anonymous(&self) -> bool {
        self.user_password().is_none() && self.identitytoken.is_empty() && self.registrytoken.is_empty()
    }

    /// `Authorization: Basic …` for these credentials.
    pub fn basic(&self) -> Option<String> {
        let (u, p) = self.user_password()?;
        Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

impl Challenge {
    /// Parses `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => {
                let params = parse_params(rest);
                Some(Challenge::Bearer {
                    realm: params.get("realm")?.clone(),
                    service: params.get("service").cloned(),
                    scope: params.get("scope").cloned(),
                })
            }
            _ => None,
        }
    }
}

/// `k="v",k2=v2` (quoted values may hold commas).
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else { break };
        let key = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// A token endpoint's answer.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub(crate) fn token(&self) -> Option<&str> {
        [&self.token, &self.access_token].into_iter().find(|t| !t.is_empty()).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(Challenge::parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into())
            })
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn registry_config_header_finds_each_registrys_credentials() {
        let header = base64::engine::general_purpose::URL_SAFE.encode(
            r#"{"https://index.docker.io/v1/":{"username":"hub","password":"h"},
                "127.0.0.1:5000":{"username":"local","password":"l"},
                "http://[::1]:5001/v2/":{"username":"six","password":"s"},
                "127.0.0.1:5002":{}}"#,
        );
        let c = AuthConfig::configs_from_header(&header).unwrap();
        let user = |d: &str| c.for_registry(d).map(|a| a.username);
        assert_eq!(user("docker.io").as_deref(), Some("hub"));
        assert_eq!(user("127.0.0.1:5000").as_deref(), Some("local"));
        assert_eq!(user("[::1]:5001").as_deref(), Some("six"));
        assert_eq!(user("127.0.0.1:5002"), None, "empty credentials are anonymous");
        assert_eq!(user("127.0.0.1:5003"), None);
        assert_eq!(AuthConfig::configs_from_header("").unwrap(), RegistryConfigs::default());
        assert!(AuthConfig::configs_from_header("%%%").unwrap_err().contains("base64"));
    }

    #[test]
    fn auth_header_round_trips_and_never_shows_the_password() {
        let a = AuthConfig { username: "u".into(), password: "s3cret".into(), ..Default::default() };
        let back = AuthConfig::from_header(&a.to_header()).unwrap().unwrap();
        assert_eq!(back.user_password(), Some(("u".into(), "s3cret".into())));
        assert!(!format!("{back:?}").contains("s3cret"));
        // config.json's `auth` field.
        let b = AuthConfig { auth: base64::engine::general_purpose::STANDARD.encode("x:y:z"), ..Default::default() };
        assert_eq!(b.user_password(), Some(("x".into(), "y:z".into())));
        assert_eq!(AuthConfig::from_header("e30=").unwrap(), None);
        assert!(AuthConfig::from_header("!!").is_err());
    }
}
