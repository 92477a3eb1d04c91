//! The `azure` switch provider: ARM REST (api-version 2024-05-01).
//!
//! A switch is a list of actions, carried out in order, each preceded by the
//! caller's leadership check: first every user-defined route (GET it, PUT it
//! back with `If-Match` and the new next hop), then the public IP (GET the
//! failed NVA's NIC, PUT it back whole without `publicIPAddress`; GET the new
//! NVA's NIC, PUT it whole with it). Writes wait for their long-running
//! operation (`Azure-AsyncOperation`) to succeed, honour `Retry-After` on
//! 429, re-read and retry on 412, and are serialised per resource. Every
//! action is idempotent, so a new leader can run a half-done switch again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::config::{AzureSettings, NvaSettings, TokenSource};

pub const API_VERSION: &str = "2024-05-01";
/// Attempts of one request before giving up (429, 5xx, transport errors).
const MAX_ATTEMPTS: u32 = 8;
/// Attempts of one read-modify-write against concurrent writers (412).
const MAX_CONFLICTS: u32 = 5;
/// Longest wait for one long-running operation.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    #[error("{method} {url}: {detail}")]
    Http {
        method: String,
        url: String,
        detail: String,
    },
    #[error("access token: {0}")]
    Token(String),
    #[error("{0}")]
    Resource(String),
}

/// One step of a switch.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Point a user-defined route at the new NVA's internal IP.
    SetRoute { route_id: String },
    /// Take the public IP off a NIC's IP configuration.
    DetachPublicIp { nic_id: String, ip_config: String },
    /// Put the public IP on a NIC's IP configuration.
    AttachPublicIp { nic_id: String, ip_config: String },
}

pub struct AzureClient {
    http: reqwest::Client,
    settings: AzureSettings,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct Response {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl AzureClient {
    pub fn new(settings: AzureSettings) -> Result<AzureClient, AzureError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AzureError::Token(e.to_string()))?;
        Ok(AzureClient {
            http,
            settings,
            token: tokio::sync::Mutex::new(None),
            locks: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn url(&self, resource_id: &str) -> String {
        format!(
            "{}{resource_id}?api-version={API_VERSION}",
            self.settings.arm_endpoint.trim_end_matches('/')
        )
    }

    /// The serialisation lock of one resource.
    fn lock_of(&self, resource_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("locks")
            .entry(resource_id.to_ascii_lowercase())
            .or_default()
            .clone()
    }

    /// An ARM access token (cached until shortly before it expires).
    async fn token(&self) -> Result<String, AzureError> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let resource = "https://management.azure.com/";
        let req = match &self.settings.token {
            TokenSource::ManagedIdentity { endpoint } => self
                .http
                .get(format!(
                    "{}/metadata/identity/oauth2/token",
                    endpoint.trim_end_matches('/')
                ))
                .query(&[("api-version", "2018-02-01"), ("resource", resource)])
                .header("Metadata", "true"),
            TokenSource::ServicePrincipal {
                authority,
                tenant_id,
                client_id,
                secret_file,
            } => {
                let secret = std::fs::read_to_string(secret_file)
                    .map_err(|e| AzureError::Token(format!("{}: {e}", secret_file.display())))?;
                self.http
                    .post(format!(
                        "{}/{tenant_id}/oauth2/v2.0/token",
                        authority.trim_end_matches('/')
                    ))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", client_id.as_str()),
                        ("client_secret", secret.trim()),
                        ("scope", "https://management.azure.com/.default"),
                    ])
            }
        };
        let resp = req
            .send()
            .await
            .map_err(|e| AzureError::Token(e.to_string()))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| AzureError::Token(e.to_string()))?;
        if !status.is_success() {
            return Err(AzureError::Token(format!("HTTP {status}: {body}")));
        }
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| AzureError::Token("no access_token in the answer".into()))?
            .to_string();
        // expires_in is a string from IMDS, a number from Entra ID.
        let expires_in = body["expires_in"]
            .as_u64()
            .or_else(|| body["expires_in"].as_str()?.parse().ok())
            .unwrap_or(300);
        let until = Instant::now() + Duration::from_secs(expires_in.saturating_sub(60).max(30));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// One ARM request, retried on 429 (after Retry-After), 5xx and
    /// transport errors (with backoff). 412 and other 4xx are returned.
    async fn request(
        &self,
        method: Method,
        url: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Response, AzureError> {
        let err = |detail: String| AzureError::Http {
            method: method.to_string(),
            url: url.to_string(),
            detail,
        };
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=MAX_ATTEMPTS {
            let token = self.token().await?;
            let mut req = self.http.request(method.clone(), url).bearer_auth(token);
            if let Some(etag) = if_match {
                req = req.header(reqwest::header::IF_MATCH, etag);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(%method, url, error = %e, "ARM request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => return Err(err(e.to_string())),
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status == StatusCode::TOO_MANY_REQUESTS && attempt < MAX_ATTEMPTS {
                let wait = retry_after(&headers).unwrap_or(backoff);
                tracing::warn!(%method, url, wait_s = wait.as_secs_f64(), "ARM throttled (429); waiting Retry-After");
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.is_server_error() && attempt < MAX_ATTEMPTS {
                tracing::warn!(%method, url, %status, "ARM server error; retrying");
                tokio::time::sleep(retry_after(&headers).unwrap_or(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
        Err(err("gave up after retries".into()))
    }

    /// GET a resource: its body and ETag.
    async fn get(&self, resource_id: &str) -> Result<(Value, String), AzureError> {
        let url = self.url(resource_id);
        let r = self.request(Method::GET, &url, None, None).await?;
        if !r.status.is_success() {
            return Err(AzureError::Http {
                method: "GET".into(),
                url,
                detail: format!("HTTP {}: {}", r.status, r.body),
            });
        }
        let etag = r
            .headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .or_else(|| r.body["etag"].as_str().map(String::from))
            .ok_or_else(|| AzureError::Resource(format!("{resource_id} has no ETag")))?;
        Ok((r.body, etag))
    }

    /// PUT a resource with If-Match and wait for its operation. Ok(false):
    /// the ETag no longer matched (412): re-read and try again.
    async fn put(&self, resource_id: &str, body: &Value, etag: &str) -> Result<bool, AzureError> {
        let url = self.url(resource_id);
        let r = self
            .request(Method::PUT, &url, Some(etag), Some(body))
            .await?;
        if r.status == StatusCode::PRECONDITION_FAILED {
            tracing::warn!(resource_id, "ETag changed meanwhile (412); reading again");
            return Ok(false);
        }
        if !r.status.is_success() {
            return Err(AzureError::Http {
                method: "PUT".into(),
                url,
                detail: format!("HTTP {}: {}", r.status, r.body),
            });
        }
        if let Some(op) = r
            .headers
            .get("Azure-AsyncOperation")
            .and_then(|v| v.to_str().ok())
        {
            self.wait_operation(op, retry_after(&r.headers)).await?;
        }
        Ok(true)
    }

    /// Polls a long-running operation until it succeeds.
    async fn wait_operation(
        &self,
        url: &str,
        first_wait: Option<Duration>,
    ) -> Result<(), AzureError> {
        let started = Instant::now();
        let poll = Duration::from_millis(self.settings.poll_interval_ms as u64);
        tokio::time::sleep(first_wait.unwrap_or(poll)).await;
        loop {
            let r = self.request(Method::GET, url, None, None).await?;
            match r.body["status"].as_str() {
                Some("Succeeded") => return Ok(()),
                Some(s @ ("Failed" | "Canceled")) => {
                    return Err(AzureError::Resource(format!(
                        "operation {url} ended {s}: {}",
                        r.body["error"]
                    )))
                }
                _ => {}
            }
            if started.elapsed() > OPERATION_TIMEOUT {
                return Err(AzureError::Resource(format!(
                    "operation {url} did not finish"
                )));
            }
            tokio::time::sleep(retry_after(&r.headers).unwrap_or(poll)).await;
        }
    }

    /// Read-modify-write of one resource under its lock: `change` edits
    /// the body and says whether anything changed (nothing: no PUT).
    async fn update(
        &self,
        resource_id: &str,
        change: impl Fn(&mut Value) -> Result<bool, AzureError>,
    ) -> Result<(), AzureError> {
        let lock = self.lock_of(resource_id);
        let _guard = lock.lock().await;
        for _ in 0..MAX_CONFLICTS {
            let (mut body, etag) = self.get(resource_id).await?;
            if !change(&mut body)? {
                return Ok(());
            }
            if self.put(resource_id, &body, &etag).await? {
                return Ok(());
            }
        }
        Err(AzureError::Resource(format!(
            "{resource_id}: changed by someone else {MAX_CONFLICTS} times in a row"
        )))
    }

    /// The actions that make `to` active (from `from`, if known).
    pub fn plan(&self, from: Option<&NvaSettings>, to: &NvaSettings) -> Vec<Action> {
        let mut actions: Vec<Action> = self
            .settings
            .route_tables
            .iter()
            .flat_map(|t| {
                t.routes.iter().map(move |r| Action::SetRoute {
                    route_id: format!("{}/routes/{r}", t.id),
                })
            })
            .collect();
        if let Some(from) = from.filter(|f| f.name != to.name) {
            if let (Some(nic), Some(cfg)) = (&from.nic_id, &from.ip_config) {
                actions.push(Action::DetachPublicIp {
                    nic_id: nic.clone(),
                    ip_config: cfg.clone(),
                });
            }
        }
        if let (Some(nic), Some(cfg)) = (&to.nic_id, &to.ip_config) {
            actions.push(Action::AttachPublicIp {
                nic_id: nic.clone(),
                ip_config: cfg.clone(),
            });
        }
        actions
    }

    /// Carries out one action for the switch to `to`.
    pub async fn execute(&self, action: &Action, to: &NvaSettings) -> Result<(), AzureError> {
        let pip = self.settings.public_ip_id.clone();
        match action {
            Action::SetRoute { route_id } => {
                let hop = to.internal_ip.to_string();
                self.update(route_id, |body| {
                    let props = body
                        .get_mut("properties")
                        .and_then(Value::as_object_mut)
                        .ok_or_else(|| {
                            AzureError::Resource(format!("{route_id}: no properties"))
                        })?;
                    if props.get("nextHopType").and_then(Value::as_str) == Some("VirtualAppliance")
                        && props.get("nextHopIpAddress").and_then(Value::as_str)
                            == Some(hop.as_str())
                    {
                        return Ok(false);
                    }
                    props.insert("nextHopType".into(), json!("VirtualAppliance"));
                    props.insert("nextHopIpAddress".into(), json!(hop));
                    Ok(true)
                })
                .await
            }
            Action::DetachPublicIp { nic_id, ip_config } => {
                self.update(nic_id, |nic| {
                    let cfg = ip_configuration(nic, nic_id, ip_config)?;
                    Ok(cfg.remove("publicIPAddress").is_some())
                })
                .await
            }
            Action::AttachPublicIp { nic_id, ip_config } => {
                self.update(nic_id, |nic| {
                    let cfg = ip_configuration(nic, nic_id, ip_config)?;
                    if cfg
                        .get("publicIPAddress")
                        .and_then(|p| p["id"].as_str())
                        .is_some_and(|id| id.eq_ignore_ascii_case(&pip))
                    {
                        return Ok(false);
                    }
                    cfg.insert("publicIPAddress".into(), json!({ "id": pip }));
                    Ok(true)
                })
                .await
            }
        }
    }

    /// Which NVA Azure points at: the one whose NIC holds the public IP and
    /// that every route names as next hop (None: nothing or a split).
    pub async fn active_nva(&self, nvas: &[NvaSettings]) -> Result<Option<usize>, AzureError> {
        let mut hops = Vec::new();
        for t in &self.settings.route_tables {
            for r in &t.routes {
                let (body, _) = self.get(&format!("{}/routes/{r}", t.id)).await?;
                hops.push(
                    body["properties"]["nextHopIpAddress"]
                        .as_str()
                        .map(String::from),
                );
            }
        }
        for (i, n) in nvas.iter().enumerate() {
            let ip = n.internal_ip.to_string();
            if !hops.iter().all(|h| h.as_deref() == Some(ip.as_str())) {
                continue;
            }
            let (Some(nic_id), Some(cfg_name)) = (&n.nic_id, &n.ip_config) else {
                return Ok(Some(i));
            };
            let (mut nic, _) = self.get(nic_id).await?;
            let cfg = ip_configuration(&mut nic, nic_id, cfg_name)?;
            if cfg
                .get("publicIPAddress")
                .and_then(|p| p["id"].as_str())
                .is_some_and(|id| id.eq_ignore_ascii_case(&self.settings.public_ip_id))
            {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

/// The `properties` of the IP configuration named `name` of a NIC.
fn ip_configuration<'a>(
    nic: &'a mut Value,
    nic_id: &str,
    name: &str,
) -> Result<&'a mut serde_json::Map<String, Value>, AzureError> {
    nic["properties"]["ipConfigurations"]
        .as_array_mut()
        .and_then(|cfgs| cfgs.iter_mut().find(|c| c["name"].as_str() == Some(name)))
        .and_then(|c| c.get_mut("properties"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| AzureError::Resource(format!("{nic_id} has no IP configuration {name:?}")))
}
