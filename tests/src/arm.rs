//! A local HTTP server that behaves like Azure Resource Manager for the
//! resources the failover daemon touches (routes, NICs), plus the token
//! endpoints (instance metadata service, Entra ID), where it matters to the
//! provider:
//!
//! - ETags with If-Match (412 on mismatch); 200 on update, 201 on create;
//! - every write starts a long-running operation: `Azure-AsyncOperation`
//!   (or `Location`) and `Retry-After` on the PUT and on every poll, the
//!   resource `Updating` until the operation ends `Succeeded`, `Failed` or
//!   `Canceled` (which rolls the write back);
//! - a write while an operation runs on the resource (or, for a route, on
//!   its route table) gets 409 AnotherOperationInProgress;
//! - read-only fields are ARM's, whatever a PUT sends: `provisioningState`,
//!   the ipconfigs' `id` and `etag`, `macAddress`, `virtualMachine`;
//! - a NIC PUT needs `location` and a subnet on every IP configuration (it
//!   must be the whole NIC), and is refused with 400 PublicIPAddressInUse
//!   when its public IP is on another NIC (or still is, while that NIC's
//!   write runs);
//! - injected failures, once each: any status with ARM's error body and an
//!   optional Retry-After (429, 412, 500, a 403 poll, IMDS 410...).
//!
//! ARM sends `Retry-After: 10` on a NIC write; this server sends
//! [`ArmServer::set_timing`]'s value (1 s by default) to keep tests fast. It
//! accepts absolute-form request targets, so it also works behind an HTTP
//! proxy. It records every request so tests can assert their order, bodies
//! and times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TOKEN: &str = "test-token";

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub if_match: Option<String>,
    pub body: Option<Value>,
    /// The body as sent (form-encoded token requests are not JSON).
    pub raw_body: String,
    /// The status the server answered.
    pub status: u16,
    pub at: Instant,
}

/// A failure to answer instead of the normal response, once.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: &'static str,
    pub path_contains: String,
    pub status: u16,
    pub retry_after_s: Option<u32>,
    /// ARM's error code and message in the body.
    pub code: String,
    pub message: String,
}

impl Fault {
    pub fn new(method: &'static str, path_contains: impl Into<String>, status: u16) -> Fault {
        Fault {
            method,
            path_contains: path_contains.into(),
            status,
            retry_after_s: None,
            code: "Injected".into(),
            message: format!("injected {status}"),
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Fault {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn error(mut self, code: &str, message: &str) -> Fault {
        self.code = code.into();
        self.message = message.into();
        self
    }
}

/// How a write's long-running operation ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Canceled,
}

struct Resource {
    body: Value,
    etag: u64,
    /// The write in progress: its operation and the body before it.
    pending: Option<(u64, Value)>,
}

struct Operation {
    resource: String,
    done_at: Instant,
    outcome: Outcome,
    settled: bool,
}

struct State {
    resources: HashMap<String, Resource>,
    operations: HashMap<u64, Operation>,
    next_operation: u64,
    faults: Vec<Fault>,
    /// The next write to a path containing .0 ends with .1.
    outcomes: Vec<(String, Outcome)>,
    log: Vec<Recorded>,
    retry_after_s: u32,
    operation_time: Duration,
    /// Answer writes with `Location` instead of `Azure-AsyncOperation`.
    location: bool,
}

pub struct ArmServer {
    pub base: String,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

fn etag_of(n: u64) -> String {
    format!("W/\"{n}\"")
}

const OPERATIONS: &str = "/subscriptions/0000/providers/Microsoft.Network/locations/westeurope";

impl ArmServer {
    /// Listens on an ephemeral port of 127.0.0.1.
    pub fn start() -> ArmServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            resources: HashMap::new(),
            operations: HashMap::new(),
            next_operation: 0,
            faults: Vec::new(),
            outcomes: Vec::new(),
            log: Vec::new(),
            retry_after_s: 1,
            operation_time: Duration::from_millis(300),
            location: false,
        }));
        let (st, b) = (state.clone(), base.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, b) = (st.clone(), b.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, st, b).await;
                });
            }
        });
        ArmServer {
            base,
            state,
            _runtime: runtime,
        }
    }

    /// Creates or replaces a resource as it is (no operation).
    pub fn put_resource(&self, id: &str, body: Value) {
        let mut s = self.state.lock().unwrap();
        s.resources.insert(
            id.to_ascii_lowercase(),
            Resource {
                body,
                etag: 1,
                pending: None,
            },
        );
    }

    /// A resource as stored (without its ETag).
    pub fn resource(&self, id: &str) -> Value {
        let mut s = self.state.lock().unwrap();
        settle(&mut s);
        s.resources[&id.to_ascii_lowercase()].body.clone()
    }

    pub fn inject(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    /// The `Retry-After` of writes and polls, and how long an operation
    /// runs.
    pub fn set_timing(&self, retry_after_s: u32, operation_time: Duration) {
        let mut s = self.state.lock().unwrap();
        s.retry_after_s = retry_after_s;
        s.operation_time = operation_time;
    }

    /// Answer writes with `Location` instead of `Azure-AsyncOperation`.
    pub fn use_location(&self, on: bool) {
        self.state.lock().unwrap().location = on;
    }

    /// The next write to a path that contains `path_contains` ends so.
    pub fn end_next_write(&self, path_contains: &str, outcome: Outcome) {
        let mut s = self.state.lock().unwrap();
        s.outcomes.push((path_contains.to_string(), outcome));
    }

    /// Someone else's write to `id` (values unchanged) runs for `time`:
    /// the resource is `Updating` meanwhile.
    pub fn begin_foreign_write(&self, id: &str, time: Duration) {
        let mut s = self.state.lock().unwrap();
        let key = id.to_ascii_lowercase();
        let before = s.resources[&key].body.clone();
        let op = new_operation(&mut s, &key, time, Outcome::Succeeded);
        let r = s.resources.get_mut(&key).unwrap();
        r.etag += 1;
        r.pending = Some((op, before));
        set_provisioning_state(&mut r.body, "Updating");
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    base: String,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let mut target = parts.next().unwrap_or_default().to_string();
    // Absolute form (through a proxy): keep the path and query.
    if let Some(rest) = target.strip_prefix("http://") {
        target = rest.find('/').map_or("/".into(), |i| rest[i..].to_string());
    }
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let raw = &buf[head_end..(head_end + length).min(buf.len())];
    let body: Option<Value> = serde_json::from_slice(raw).ok();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let (status, extra, reply) = {
        let mut s = state.lock().unwrap();
        settle(&mut s);
        let a = answer(&mut s, &base, &method, &path, &headers, body.as_ref());
        s.log.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query,
            if_match: headers.get("if-match").cloned(),
            body,
            raw_body: String::from_utf8_lossy(raw).into_owned(),
            status: a.0,
            at: Instant::now(),
        });
        a
    };
    let text = if reply.is_null() {
        String::new()
    } else {
        reply.to_string()
    };
    let mut resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        text.len()
    );
    for (k, v) in extra {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    resp.push_str(&text);
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

type Answer = (u16, Vec<(String, String)>, Value);

fn arm_error(status: u16, code: &str, message: &str) -> Answer {
    (
        status,
        vec![],
        json!({"error": {"code": code, "message": message, "details": []}}),
    )
}

/// Sets `provisioningState` on a resource and on its IP configurations.
fn set_provisioning_state(body: &mut Value, state: &str) {
    if !body["properties"].is_object() {
        return;
    }
    body["properties"]["provisioningState"] = json!(state);
    if let Some(cfgs) = body["properties"]["ipConfigurations"].as_array_mut() {
        for c in cfgs {
            if c["properties"].is_object() {
                c["properties"]["provisioningState"] = json!(state);
            }
        }
    }
}

fn new_operation(s: &mut State, key: &str, time: Duration, outcome: Outcome) -> u64 {
    s.next_operation += 1;
    let op = s.next_operation;
    s.operations.insert(
        op,
        Operation {
            resource: key.to_string(),
            done_at: Instant::now() + time,
            outcome,
            settled: false,
        },
    );
    op
}

/// Ends the operations whose time has come.
fn settle(s: &mut State) {
    let now = Instant::now();
    for (id, op) in s.operations.iter_mut() {
        if op.settled || op.done_at > now {
            continue;
        }
        op.settled = true;
        let Some(r) = s.resources.get_mut(&op.resource) else {
            continue;
        };
        let before = match r.pending.take() {
            Some((p, before)) if p == *id => before,
            other => {
                r.pending = other;
                continue;
            }
        };
        match op.outcome {
            Outcome::Succeeded => set_provisioning_state(&mut r.body, "Succeeded"),
            Outcome::Failed => set_provisioning_state(&mut r.body, "Failed"),
            Outcome::Canceled => {
                r.body = before;
                r.etag += 1;
                set_provisioning_state(&mut r.body, "Succeeded");
            }
        }
    }
}

/// The route table a route belongs to (lower case), if it is a route.
fn table_of(key: &str) -> Option<&str> {
    key.split_once("/routes/").map(|(t, _)| t)
}

/// The public IPs a NIC body's IP configurations hold (lower case).
fn public_ips(nic: &Value) -> Vec<String> {
    nic["properties"]["ipConfigurations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["properties"]["publicIPAddress"]["id"].as_str())
        .map(str::to_ascii_lowercase)
        .collect()
}

fn answer(
    s: &mut State,
    base: &str,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: Option<&Value>,
) -> Answer {
    if let Some(i) = s
        .faults
        .iter()
        .position(|f| f.method == method && path.contains(&f.path_contains))
    {
        let f = s.faults.remove(i);
        let (status, mut extra, body) = arm_error(f.status, &f.code, &f.message);
        if let Some(r) = f.retry_after_s {
            extra.push(("Retry-After".to_string(), r.to_string()));
        }
        return (status, extra, body);
    }
    if path == "/metadata/identity/oauth2/token" {
        if headers.get("metadata").map(String::as_str) != Some("true") {
            return (
                400,
                vec![],
                json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
            );
        }
        return (
            200,
            vec![],
            json!({"access_token": TOKEN, "expires_in": "3600", "token_type": "Bearer"}),
        );
    }
    if method == "POST" && path.ends_with("/oauth2/v2.0/token") {
        return (
            200,
            vec![],
            json!({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}),
        );
    }
    if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
        return arm_error(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or invalid.",
        );
    }
    let retry_after = ("Retry-After".to_string(), s.retry_after_s.to_string());
    if let Some((_, op)) = path.rsplit_once("/operations/") {
        let Some(o) = op.parse().ok().and_then(|op: u64| s.operations.get(&op)) else {
            return arm_error(404, "NotFound", "The operation was not found.");
        };
        return match (o.settled, o.outcome) {
            (false, _) => (200, vec![retry_after], json!({"status": "InProgress"})),
            (true, Outcome::Succeeded) => (200, vec![], json!({"status": "Succeeded"})),
            (true, Outcome::Failed) => (
                200,
                vec![],
                json!({"status": "Failed", "error": {"code": "InternalServerError", "message": "An error occurred."}}),
            ),
            (true, Outcome::Canceled) => (
                200,
                vec![],
                json!({"status": "Canceled", "error": {"code": "Canceled", "message": "Operation was canceled."}}),
            ),
        };
    }
    if let Some((_, op)) = path.rsplit_once("/operationResults/") {
        let Some(o) = op.parse().ok().and_then(|op: u64| s.operations.get(&op)) else {
            return arm_error(404, "NotFound", "The operation was not found.");
        };
        return match (o.settled, o.outcome) {
            (false, _) => (202, vec![retry_after], Value::Null),
            (true, Outcome::Succeeded) => {
                let r = &s.resources[&o.resource];
                let mut v = r.body.clone();
                v["etag"] = json!(etag_of(r.etag));
                (200, vec![], v)
            }
            (true, Outcome::Failed) => arm_error(400, "InternalServerError", "An error occurred."),
            (true, Outcome::Canceled) => arm_error(400, "Canceled", "Operation was canceled."),
        };
    }
    let key = path.to_ascii_lowercase();
    match method {
        "GET" => match s.resources.get(&key) {
            Some(r) => {
                let mut v = r.body.clone();
                let etag = etag_of(r.etag);
                v["etag"] = json!(etag);
                // An IP configuration's ETag is its NIC's.
                if let Some(cfgs) = v["properties"]["ipConfigurations"].as_array_mut() {
                    for c in cfgs {
                        c["etag"] = json!(etag);
                    }
                }
                (200, vec![("ETag".into(), etag)], v)
            }
            None => arm_error(404, "NotFound", &format!("Resource {path} was not found.")),
        },
        "PUT" => put(s, base, path, &key, headers, body),
        _ => arm_error(405, "MethodNotAllowed", "The method is not allowed."),
    }
}

fn put(
    s: &mut State,
    base: &str,
    path: &str,
    key: &str,
    headers: &HashMap<String, String>,
    body: Option<&Value>,
) -> Answer {
    let (before, etag) = match s.resources.get(key) {
        Some(r) => (Some(r.body.clone()), r.etag + 1),
        None => (None, 1),
    };
    match (headers.get("if-match"), s.resources.get(key)) {
        (Some(m), Some(r)) if m != "*" && *m != etag_of(r.etag) => {
            return arm_error(
                412,
                "PreconditionFailed",
                "The condition specified using HTTP conditional header(s) is not met.",
            )
        }
        (Some(_), None) => {
            return arm_error(412, "PreconditionFailed", "The resource does not exist.")
        }
        _ => {}
    }
    // ARM runs one operation at a time on a resource, and on a route table
    // with its routes.
    let busy = s.resources.iter().find_map(|(k, r)| {
        let (op, _) = r.pending.as_ref()?;
        let related = k == key
            || table_of(key).is_some_and(|t| k == t || table_of(k) == Some(t))
            || table_of(k) == Some(key);
        related.then_some(*op)
    });
    if let Some(op) = busy {
        return arm_error(
            409,
            "AnotherOperationInProgress",
            &format!("Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: {base}{OPERATIONS}/operations/{op}?api-version=2024-05-01."),
        );
    }
    let Some(mut stored) = body.cloned().filter(Value::is_object) else {
        return arm_error(400, "InvalidRequestFormat", "Cannot parse the request.");
    };
    let nic = key.contains("/networkinterfaces/");
    if nic {
        if stored["location"].as_str().is_none() {
            return arm_error(
                400,
                "LocationRequired",
                "The location property is required for this definition.",
            );
        }
        let cfgs = stored["properties"]["ipConfigurations"].as_array();
        if cfgs.is_none_or(|c| {
            c.is_empty()
                || c.iter()
                    .any(|c| c["properties"]["subnet"]["id"].as_str().is_none())
        }) {
            return arm_error(
                400,
                "InvalidRequestFormat",
                "Every IP configuration of a network interface needs a subnet.",
            );
        }
        for pip in public_ips(&stored) {
            let holder = s.resources.iter().find(|(k, r)| {
                k.as_str() != key
                    && k.contains("/networkinterfaces/")
                    && (public_ips(&r.body).contains(&pip)
                        || r.pending
                            .as_ref()
                            .is_some_and(|(_, before)| public_ips(before).contains(&pip)))
            });
            if let Some((k, _)) = holder {
                return arm_error(
                    400,
                    "PublicIPAddressInUse",
                    &format!("Public IP address {pip} is in use by {k} and cannot be referenced by {path}."),
                );
            }
        }
    }
    // Read-only fields are ARM's, whatever the request says.
    if let Some(o) = stored.as_object_mut() {
        o.remove("etag");
        o.insert("id".into(), json!(path));
    }
    if let Some(old) = &before {
        for f in ["macAddress", "virtualMachine", "resourceGuid"] {
            match old["properties"].get(f) {
                Some(v) => stored["properties"][f] = v.clone(),
                None => {
                    if let Some(p) = stored["properties"].as_object_mut() {
                        p.remove(f);
                    }
                }
            }
        }
    }
    if let Some(cfgs) = stored["properties"]["ipConfigurations"].as_array_mut() {
        for c in cfgs {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            if let Some(o) = c.as_object_mut() {
                o.remove("etag");
                o.insert(
                    "id".into(),
                    json!(format!("{path}/ipConfigurations/{name}")),
                );
            }
        }
    }
    set_provisioning_state(&mut stored, "Updating");
    let outcome = s
        .outcomes
        .iter()
        .position(|(p, _)| path.contains(p.as_str()))
        .map_or(Outcome::Succeeded, |i| s.outcomes.remove(i).1);
    let time = s.operation_time;
    let op = new_operation(s, key, time, outcome);
    let created = before.is_none();
    s.resources.insert(
        key.to_string(),
        Resource {
            body: stored.clone(),
            etag,
            pending: Some((op, before.unwrap_or(Value::Null))),
        },
    );
    stored["etag"] = json!(etag_of(etag));
    let poll = if s.location {
        (
            "Location".to_string(),
            format!("{base}{OPERATIONS}/operationResults/{op}?api-version=2024-05-01"),
        )
    } else {
        (
            "Azure-AsyncOperation".to_string(),
            format!("{base}{OPERATIONS}/operations/{op}?api-version=2024-05-01"),
        )
    };
    (
        if created { 201 } else { 200 },
        vec![
            poll,
            ("Retry-After".to_string(), s.retry_after_s.to_string()),
        ],
        stored,
    )
}
