//! The `azure` switch provider: ARM REST (api-version 2024-05-01).
//!
//! A switch is a list of actions (see [`AzureClient::plan`]): every
//! user-defined route (GET it, PUT it back with `If-Match` and the new next
//! hop), then the public IP (GET the failed NVA's NIC, PUT it back whole
//! without `publicIPAddress`; GET the new NVA's NIC, PUT it whole with it).
//! [`AzureClient::switch`] issues them as far in parallel as ARM allows: the
//! routes of one table in order, different tables at once, and beside them
//! the public IP (detach, then attach). Each action is preceded by the
//! caller's leadership check.
//!
//! Writes wait for their long-running operation (`Azure-AsyncOperation`, or
//! `Location`) honouring `Retry-After`; a poll that answers an error other
//! than 429/5xx fails at once. Requests retry 429 (after `Retry-After`), 5xx
//! and transport errors; a write re-reads and retries on 412, waits and
//! retries on 409 AnotherOperationInProgress, and waits for a resource still
//! `Updating` before calling it done. Writes are serialised per resource.
//! Every action is idempotent, so a new leader can run a half-done switch
//! again. Tokens come from the VM's managed identity (IMDS, never through a
//! proxy, retried as IMDS documents) or a service principal, for the
//! audience of the configured ARM endpoint.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{try_join, try_join_all};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::config::{AzureSettings, NvaSettings, TokenSource};

pub const API_VERSION: &str = "2024-05-01";
/// The token API version of the instance metadata service.
const IMDS_API_VERSION: &str = "2018-02-01";
/// Attempts of one request before giving up (429, 5xx, transport errors).
const MAX_ATTEMPTS: u32 = 8;
/// Attempts of one read-modify-write against concurrent writers (412).
const MAX_CONFLICTS: u32 = 5;
/// Longest wait for one long-running operation, or for a resource to leave
/// `Updating`.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a token fetch keeps retrying: IMDS answers 410 while it is
/// being updated and asks clients to retry for up to 70 s.
const TOKEN_DEADLINE: Duration = Duration::from_secs(90);
/// First wait of an exponential backoff (without Retry-After), and the
/// longest.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(16);

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
    /// For the instance metadata service: never through a proxy (IMDS
    /// answers only on the VM's own link-local path).
    imds: reqwest::Client,
    settings: AzureSettings,
    backoff: Duration,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Response {
    /// "HTTP 403 Forbidden: AuthorizationFailed: The client ..." (ARM's
    /// error code and message when the body has them).
    fn describe(&self) -> String {
        format!(
            "HTTP {}: {}",
            self.status,
            error_text(&self.body, &self.text)
        )
    }

    fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The error in an ARM (`{"error": {"code", "message"}}`) or token
/// (`{"error", "error_description"}`) answer, else the body itself.
fn error_text(body: &Value, text: &str) -> String {
    let e = &body["error"];
    match (e["code"].as_str(), e["message"].as_str(), e.as_str()) {
        (Some(c), Some(m), _) => format!("{c}: {m}"),
        (Some(c), None, _) => c.to_string(),
        (_, _, Some(c)) => match body["error_description"].as_str() {
            Some(d) => format!("{c}: {d}"),
            None => c.to_string(),
        },
        _ if text.trim().is_empty() => "(empty body)".into(),
        _ => text.chars().take(500).collect(),
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The result of one conditional PUT.
enum Put {
    /// Written and its operation succeeded.
    Done,
    /// The ETag no longer matched (412): read again.
    Stale,
    /// 409 AnotherOperationInProgress: wait this long, read again.
    Busy(Duration),
}

/// A failed token fetch, and whether trying again may help.
struct TokenFailure {
    retry: bool,
    retry_after: Option<Duration>,
    message: String,
}

impl AzureClient {
    pub fn new(settings: AzureSettings) -> Result<AzureClient, AzureError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AzureError::Token(e.to_string()))?;
        let imds = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| AzureError::Token(e.to_string()))?;
        Ok(AzureClient {
            http,
            imds,
            settings,
            backoff: FIRST_BACKOFF,
            token: tokio::sync::Mutex::new(None),
            locks: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Sets the first wait of the backoffs used without `Retry-After`
    /// (transport errors, 5xx, token retries; 1 s by default) so that tests
    /// stay fast. `Retry-After` is always honoured as sent.
    pub fn with_backoff(mut self, first: Duration) -> AzureClient {
        self.backoff = first;
        self
    }

    fn url(&self, resource_id: &str) -> String {
        format!(
            "{}{resource_id}?api-version={API_VERSION}",
            self.settings.arm_endpoint.trim_end_matches('/')
        )
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.settings.poll_interval_ms as u64)
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

    /// An ARM access token (cached until shortly before it expires),
    /// retried with backoff while the failure may pass (IMDS: 404 while the
    /// identity is being assigned, 410 while IMDS is updated, 429, 5xx).
    async fn token(&self) -> Result<String, AzureError> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let started = Instant::now();
        let mut backoff = self.backoff;
        for attempt in 1.. {
            let failure = match self.fetch_token().await {
                Ok((token, expires_in)) => {
                    let until =
                        Instant::now() + Duration::from_secs(expires_in.saturating_sub(60).max(30));
                    *cached = Some((token.clone(), until));
                    return Ok(token);
                }
                Err(f) => f,
            };
            let wait = failure.retry_after.unwrap_or(backoff).max(backoff);
            if !failure.retry || started.elapsed() + wait > TOKEN_DEADLINE {
                return Err(AzureError::Token(format!(
                    "{} (attempt {attempt}, after {:.1} s)",
                    failure.message,
                    started.elapsed().as_secs_f64()
                )));
            }
            tracing::warn!(
                attempt,
                error = %failure.message,
                wait_s = wait.as_secs_f64(),
                "token fetch failed; retrying"
            );
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        unreachable!("the loop returns")
    }

    /// One token request: the token and its lifetime in seconds.
    async fn fetch_token(&self) -> Result<(String, u64), TokenFailure> {
        // The audience is the ARM endpoint in use: sovereign clouds (and
        // Azure Stack) issue tokens for their own management endpoint.
        let audience = self.settings.arm_endpoint.trim_end_matches('/');
        let (req, imds) = match &self.settings.token {
            TokenSource::ManagedIdentity {
                endpoint,
                client_id,
            } => {
                let resource = format!("{audience}/");
                let mut query = vec![
                    ("api-version", IMDS_API_VERSION),
                    ("resource", resource.as_str()),
                ];
                if let Some(id) = client_id {
                    query.push(("client_id", id.as_str()));
                }
                let req = self
                    .imds
                    .get(format!(
                        "{}/metadata/identity/oauth2/token",
                        endpoint.trim_end_matches('/')
                    ))
                    .query(&query)
                    .header("Metadata", "true");
                (req, true)
            }
            TokenSource::ServicePrincipal {
                authority,
                tenant_id,
                client_id,
                secret_file,
            } => {
                let secret = std::fs::read_to_string(secret_file).map_err(|e| TokenFailure {
                    retry: false,
                    retry_after: None,
                    message: format!("{}: {e}", secret_file.display()),
                })?;
                let req = self
                    .http
                    .post(format!(
                        "{}/{tenant_id}/oauth2/v2.0/token",
                        authority.trim_end_matches('/')
                    ))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", client_id.as_str()),
                        ("client_secret", secret.trim()),
                        ("scope", &format!("{audience}/.default")),
                    ]);
                (req, false)
            }
        };
        let resp = req.send().await.map_err(|e| TokenFailure {
            retry: true,
            retry_after: None,
            message: e.to_string(),
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let retry = status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
                || (imds && matches!(status.as_u16(), 404 | 410));
            return Err(TokenFailure {
                retry,
                retry_after: retry_after(&headers),
                message: format!("HTTP {status}: {}", error_text(&body, &text)),
            });
        }
        let token = body["access_token"].as_str().ok_or_else(|| TokenFailure {
            retry: false,
            retry_after: None,
            message: "no access_token in the answer".into(),
        })?;
        // expires_in is a string from IMDS, a number from Entra ID.
        let expires_in = body["expires_in"]
            .as_u64()
            .or_else(|| body["expires_in"].as_str()?.parse().ok())
            .unwrap_or(300);
        Ok((token.to_string(), expires_in))
    }

    /// One ARM request, retried on 429 (after Retry-After), 5xx and
    /// transport errors (with backoff), and once on 401 with a new token.
    /// 412 and other 4xx are returned.
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
        let mut backoff = self.backoff;
        let mut renewed = false;
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
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(e) => return Err(err(e.to_string())),
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status == StatusCode::UNAUTHORIZED && !renewed && attempt < MAX_ATTEMPTS {
                // A token revoked or expired early: fetch a new one, once.
                tracing::warn!(%method, url, "ARM refused the token (401); fetching a new one");
                *self.token.lock().await = None;
                renewed = true;
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS && attempt < MAX_ATTEMPTS {
                let wait = retry_after(&headers).unwrap_or(backoff);
                tracing::warn!(%method, url, wait_s = wait.as_secs_f64(), "ARM throttled (429); waiting Retry-After");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            if status.is_server_error() && attempt < MAX_ATTEMPTS {
                tracing::warn!(%method, url, %status, "ARM server error; retrying");
                tokio::time::sleep(retry_after(&headers).unwrap_or(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            return Ok(Response {
                status,
                headers,
                body,
                text,
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
                detail: r.describe(),
            });
        }
        let etag = r
            .header(reqwest::header::ETAG.as_str())
            .map(String::from)
            .or_else(|| r.body["etag"].as_str().map(String::from))
            .ok_or_else(|| AzureError::Resource(format!("{resource_id} has no ETag")))?;
        Ok((r.body, etag))
    }

    /// PUT a resource with If-Match and wait for its operation.
    async fn put(&self, resource_id: &str, body: &Value, etag: &str) -> Result<Put, AzureError> {
        let url = self.url(resource_id);
        let r = self
            .request(Method::PUT, &url, Some(etag), Some(body))
            .await?;
        if r.status == StatusCode::PRECONDITION_FAILED {
            tracing::warn!(resource_id, "ETag changed meanwhile (412); reading again");
            return Ok(Put::Stale);
        }
        if r.status == StatusCode::CONFLICT && r.error_code() == Some("AnotherOperationInProgress")
        {
            let wait = retry_after(&r.headers).unwrap_or(self.poll_interval());
            tracing::warn!(
                resource_id,
                wait_s = wait.as_secs_f64(),
                "another operation is in progress on it (409); waiting"
            );
            return Ok(Put::Busy(wait));
        }
        if !r.status.is_success() {
            return Err(AzureError::Http {
                method: "PUT".into(),
                url,
                detail: r.describe(),
            });
        }
        // ARM answers a write with Retry-After (10 s for a NIC): the first
        // poll waits for it.
        let first_wait = retry_after(&r.headers);
        if let Some(op) = r.header("Azure-AsyncOperation") {
            self.wait_operation(resource_id, op, false, first_wait)
                .await?;
        } else if let Some(op) = r.header(reqwest::header::LOCATION.as_str()) {
            self.wait_operation(resource_id, op, true, first_wait)
                .await?;
        }
        Ok(Put::Done)
    }

    /// Polls the long-running operation of a write to `resource_id` until
    /// it succeeds: an `Azure-AsyncOperation` URL (a `status` in the body)
    /// or a `Location` URL (202 while it runs, 200/201/204 when done).
    async fn wait_operation(
        &self,
        resource_id: &str,
        url: &str,
        location: bool,
        first_wait: Option<Duration>,
    ) -> Result<(), AzureError> {
        let started = Instant::now();
        let poll = self.poll_interval();
        tokio::time::sleep(first_wait.unwrap_or(poll)).await;
        loop {
            let r = self.request(Method::GET, url, None, None).await?;
            // 429 and 5xx were retried by request(); any other error (401 or
            // 403 for an identity that may write but not read operations, 404)
            // will not pass by polling again.
            let failed = |detail: String| AzureError::Http {
                method: "GET".into(),
                url: url.to_string(),
                detail: format!("{detail} (the operation of the write to {resource_id})"),
            };
            if !r.status.is_success() {
                return Err(failed(r.describe()));
            }
            let status = if location {
                if r.status == StatusCode::ACCEPTED {
                    None
                } else {
                    Some("Succeeded")
                }
            } else {
                match r.body["status"].as_str() {
                    Some(s) => Some(s),
                    None => {
                        return Err(failed(format!(
                            "HTTP {} without an operation status: {}",
                            r.status,
                            error_text(&r.body, &r.text)
                        )))
                    }
                }
            };
            match status {
                Some("Succeeded") => return Ok(()),
                Some(s @ ("Failed" | "Canceled")) => {
                    return Err(AzureError::Resource(format!(
                        "{resource_id}: the write's operation ended {s}: {} ({url})",
                        error_text(&r.body, &r.text)
                    )))
                }
                // InProgress, or a provider's own state.
                _ => {}
            }
            if started.elapsed() > OPERATION_TIMEOUT {
                return Err(AzureError::Resource(format!(
                    "{resource_id}: operation {url} did not finish in {} s",
                    OPERATION_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(retry_after(&r.headers).unwrap_or(poll)).await;
        }
    }

    /// Waits before reading `resource_id` again while an operation runs on
    /// it, up to OPERATION_TIMEOUT from `started`.
    async fn wait_busy(
        &self,
        resource_id: &str,
        started: Instant,
        why: &str,
        wait: Duration,
    ) -> Result<(), AzureError> {
        if started.elapsed() > OPERATION_TIMEOUT {
            return Err(AzureError::Resource(format!(
                "{resource_id}: still {why} after {} s",
                OPERATION_TIMEOUT.as_secs()
            )));
        }
        tracing::info!(
            resource_id,
            why,
            wait_s = wait.as_secs_f64(),
            "waiting for the resource's operation"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Read-modify-write of one resource under its lock: `change` edits
    /// the body and says whether anything changed (nothing: no PUT). A
    /// resource still `Updating` is waited for first: its values are not
    /// final, and a write would get 409 AnotherOperationInProgress.
    async fn update(
        &self,
        resource_id: &str,
        change: impl Fn(&mut Value) -> Result<bool, AzureError>,
    ) -> Result<(), AzureError> {
        let lock = self.lock_of(resource_id);
        let _guard = lock.lock().await;
        let started = Instant::now();
        let mut conflicts = 0;
        let mut repairing = false;
        loop {
            let (mut body, etag) = self.get(resource_id).await?;
            let state = body["properties"]["provisioningState"]
                .as_str()
                .map(String::from);
            match state.as_deref() {
                None | Some("Succeeded" | "Failed" | "Canceled") => {}
                Some(s) => {
                    let why = format!("provisioningState {s}");
                    self.wait_busy(resource_id, started, &why, self.poll_interval())
                        .await?;
                    continue;
                }
            }
            if !change(&mut body)? {
                if state.as_deref() != Some("Failed") {
                    return Ok(());
                }
                if repairing {
                    return Err(AzureError::Resource(format!(
                        "{resource_id}: provisioningState still Failed after putting it back"
                    )));
                }
                // The values are right but the last write failed: putting
                // the resource back as it is repairs it (Microsoft's advice
                // for network resources in a failed state).
                tracing::warn!(
                    resource_id,
                    "provisioningState Failed; putting it back as it is"
                );
                repairing = true;
            }
            match self.put(resource_id, &body, &etag).await? {
                Put::Done => return Ok(()),
                Put::Stale => {
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS {
                        return Err(AzureError::Resource(format!(
                            "{resource_id}: changed by someone else {MAX_CONFLICTS} times in a row"
                        )));
                    }
                }
                Put::Busy(wait) => {
                    self.wait_busy(resource_id, started, "AnotherOperationInProgress", wait)
                        .await?
                }
            }
        }
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

    /// Carries out `actions` (a plan) for the switch to `to`, in parallel
    /// where ARM allows it: the routes of one route table one after the
    /// other (ARM runs one operation per table at a time and answers 409
    /// AnotherOperationInProgress), different tables at once, and beside
    /// them the public IP: detached from the old NICs first (ARM refuses a
    /// public IP on two NICs), then attached. ARM asks for 10 s before the
    /// first poll of a NIC write, so done one by one, 2 routes and 2 NICs
    /// take 40 s; this way 20 s. `fence` runs before every action (the
    /// leadership check); its error stops the switch.
    pub async fn switch<E, F, Fut>(
        &self,
        actions: &[Action],
        to: &NvaSettings,
        fence: F,
    ) -> Result<(), E>
    where
        E: From<AzureError>,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut tables: Vec<(String, Vec<&Action>)> = Vec::new();
        let (mut detach, mut attach) = (Vec::new(), Vec::new());
        for a in actions {
            match a {
                Action::SetRoute { route_id } => {
                    let table = route_id
                        .rsplit_once("/routes/")
                        .map_or(route_id.as_str(), |(t, _)| t)
                        .to_ascii_lowercase();
                    match tables.iter_mut().find(|(t, _)| *t == table) {
                        Some((_, routes)) => routes.push(a),
                        None => tables.push((table, vec![a])),
                    }
                }
                Action::DetachPublicIp { .. } => detach.push(a),
                Action::AttachPublicIp { .. } => attach.push(a),
            }
        }
        let fence = &fence;
        let routes = try_join_all(tables.iter().map(|(_, routes)| async move {
            for a in routes {
                self.step(a, to, fence).await?;
            }
            Ok::<(), E>(())
        }));
        let public_ip = async {
            try_join_all(detach.iter().map(|a| self.step(a, to, fence))).await?;
            for a in &attach {
                self.step(a, to, fence).await?;
            }
            Ok::<(), E>(())
        };
        try_join(routes, public_ip).await?;
        Ok(())
    }

    /// One action of a switch, after the fence.
    async fn step<E, F, Fut>(&self, action: &Action, to: &NvaSettings, fence: &F) -> Result<(), E>
    where
        E: From<AzureError>,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        fence().await?;
        let started = Instant::now();
        self.execute(action, to).await?;
        tracing::info!(
            ?action,
            elapsed_s = started.elapsed().as_secs_f64(),
            "Azure action done"
        );
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::config::{ProbeTarget, RouteTableSettings};

    /// Stands for the daemon: its leadership check needs `&mut self`.
    struct Leader {
        checks: u32,
    }

    impl Leader {
        async fn leading(&mut self) -> anyhow::Result<bool> {
            self.checks += 1;
            Ok(false)
        }
    }

    fn nva(name: &str, ip: &str) -> NvaSettings {
        NvaSettings {
            name: name.into(),
            probe: ProbeTarget::Tcp("127.0.0.1:9".parse().unwrap()),
            internal_ip: ip.parse().unwrap(),
            external_ip: None,
            nic_id: Some(format!("/subscriptions/s/networkInterfaces/{name}")),
            ip_config: Some("ipconfig1".into()),
            netns: String::new(),
        }
    }

    /// The daemon shares its `&mut self` check between the parallel
    /// branches through a mutex; a lost leadership stops the switch before
    /// any request (the endpoint here answers nothing).
    #[tokio::test]
    async fn a_mut_leadership_check_fences_the_switch() {
        let client = AzureClient::new(AzureSettings {
            route_tables: vec![RouteTableSettings {
                id: "/subscriptions/s/routeTables/rt".into(),
                routes: vec!["default".into()],
            }],
            public_ip_id: "/subscriptions/s/publicIPAddresses/pip".into(),
            arm_endpoint: "http://127.0.0.1:9".into(),
            token: TokenSource::ManagedIdentity {
                endpoint: "http://127.0.0.1:9".into(),
                client_id: None,
            },
            poll_interval_ms: 10,
        })
        .unwrap();
        let (a, b) = (nva("a", "10.0.0.1"), nva("b", "10.0.0.2"));
        let plan = client.plan(Some(&a), &b);
        let mut leader = Leader { checks: 0 };
        let me = tokio::sync::Mutex::new(&mut leader);
        let me = &me;
        let result: anyhow::Result<()> = client
            .switch(&plan, &b, move || async move {
                if me.lock().await.leading().await? {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("fenced"))
                }
            })
            .await;
        assert_eq!(result.unwrap_err().to_string(), "fenced");
        assert!(leader.checks >= 1);
    }
}
