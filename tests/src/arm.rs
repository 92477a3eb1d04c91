//! A local HTTP server that behaves like Azure Resource Manager for the
//! resources the failover daemon touches (routes, NICs), plus the instance
//! metadata token endpoint: ETags with If-Match (412 on mismatch),
//! long-running operations behind `Azure-AsyncOperation` that take a few
//! polls, and injected failures (429 with Retry-After, 412, 500). It records
//! every request so tests can assert their order and bodies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
}

#[derive(Default)]
struct State {
    resources: HashMap<String, (Value, u64)>,
    /// Operation id -> polls left before it succeeds.
    operations: HashMap<u64, u32>,
    next_operation: u64,
    faults: Vec<Fault>,
    log: Vec<Recorded>,
    /// Polls each new operation needs before it succeeds.
    polls_per_operation: u32,
}

pub struct ArmServer {
    pub base: String,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

fn etag_of(n: u64) -> String {
    format!("W/\"{n}\"")
}

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
            polls_per_operation: 2,
            ..Default::default()
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

    pub fn put_resource(&self, id: &str, body: Value) {
        let mut s = self.state.lock().unwrap();
        s.resources.insert(id.to_ascii_lowercase(), (body, 1));
    }

    pub fn resource(&self, id: &str) -> Value {
        let s = self.state.lock().unwrap();
        s.resources[&id.to_ascii_lowercase()].0.clone()
    }

    pub fn inject(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
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
    let target = parts.next().unwrap_or_default().to_string();
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
    let body: Option<Value> = (length > 0)
        .then(|| serde_json::from_slice(&buf[head_end..head_end + length]).ok())
        .flatten();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let (status, extra, reply) = answer(&state, &base, &method, &path, &headers, body.as_ref());
    {
        let mut s = state.lock().unwrap();
        s.log.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query,
            if_match: headers.get("if-match").cloned(),
            body,
            status,
            at: Instant::now(),
        });
    }
    let text = reply.to_string();
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

fn answer(
    state: &Mutex<State>,
    base: &str,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: Option<&Value>,
) -> Answer {
    let mut s = state.lock().unwrap();
    if path == "/metadata/identity/oauth2/token" {
        if headers.get("metadata").map(String::as_str) != Some("true") {
            return (400, vec![], json!({"error": "Metadata header required"}));
        }
        return (
            200,
            vec![],
            json!({"access_token": TOKEN, "expires_in": "3600"}),
        );
    }
    if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
        return (
            401,
            vec![],
            json!({"error": {"code": "AuthenticationFailed"}}),
        );
    }
    if let Some(i) = s
        .faults
        .iter()
        .position(|f| f.method == method && path.contains(&f.path_contains))
    {
        let f = s.faults.remove(i);
        let extra = f
            .retry_after_s
            .map(|r| vec![("Retry-After".to_string(), r.to_string())])
            .unwrap_or_default();
        return (
            f.status,
            extra,
            json!({"error": {"code": "Injected", "status": f.status}}),
        );
    }
    if let Some(op) = path.strip_prefix("/operations/") {
        let op: u64 = op.parse().unwrap_or(0);
        return match s.operations.get_mut(&op) {
            Some(0) => (200, vec![], json!({"status": "Succeeded"})),
            Some(left) => {
                *left -= 1;
                (200, vec![], json!({"status": "InProgress"}))
            }
            None => (404, vec![], json!({"error": {"code": "NotFound"}})),
        };
    }
    let key = path.to_ascii_lowercase();
    match method {
        "GET" => match s.resources.get(&key) {
            Some((v, etag)) => {
                let mut v = v.clone();
                v["etag"] = json!(etag_of(*etag));
                (200, vec![("ETag".into(), etag_of(*etag))], v)
            }
            None => (404, vec![], json!({"error": {"code": "NotFound"}})),
        },
        "PUT" => {
            let Some((_, etag)) = s.resources.get(&key).cloned() else {
                return (404, vec![], json!({"error": {"code": "NotFound"}}));
            };
            if headers.get("if-match") != Some(&etag_of(etag)) {
                return (
                    412,
                    vec![],
                    json!({"error": {"code": "PreconditionFailed"}}),
                );
            }
            let mut stored = body.cloned().unwrap_or(Value::Null);
            if let Some(o) = stored.as_object_mut() {
                o.remove("etag");
            }
            s.resources.insert(key, (stored.clone(), etag + 1));
            s.next_operation += 1;
            let op = s.next_operation;
            let polls = s.polls_per_operation;
            s.operations.insert(op, polls);
            stored["etag"] = json!(etag_of(etag + 1));
            (
                201,
                vec![(
                    "Azure-AsyncOperation".into(),
                    format!("{base}/operations/{op}"),
                )],
                stored,
            )
        }
        _ => (405, vec![], json!({"error": {"code": "MethodNotAllowed"}})),
    }
}
