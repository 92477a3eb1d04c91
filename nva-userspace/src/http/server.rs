//! The HTTP/1 server of the agent and of the failover daemon: axum routes
//! on hyper, behind an accept loop that bounds what clients can hold.
//!
//! Load balancers and the failover daemon probe `/health` every 100 ms with
//! timeouts of tens of milliseconds, so no client may starve them: at most
//! [`Limits::connections`] connections are served at once (more wait in the
//! listen backlog), a request head must arrive whole within
//! [`Limits::header_time`] and fit in [`Limits::header_bytes`] (hyper answers
//! 431 otherwise), and every connection is closed after one response and at
//! the latest after [`Limits::connection_time`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Bounds on what clients may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once. Probes open one connection each; the
    /// bound keeps a flood of idle sockets to a few MiB of buffers.
    pub connections: usize,
    /// Time for a client to send its whole request head (slowloris), and
    /// for an idle connection to start one.
    pub header_time: Duration,
    /// Bytes of request head: hyper's read buffer (at least 8 KiB).
    pub header_bytes: usize,
    /// Lifetime of a connection, response included (a client that reads the
    /// response slowly).
    pub connection_time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // Each connection costs a task, a file descriptor and at most
            // `header_bytes` of buffer: 512 × 16 KiB = 8 MiB at worst, and
            // half the usual 1024 descriptors (the rest for maps, links).
            connections: 512,
            // The previous hand-written servers allowed 2 s as well; real
            // clients send their head in one segment.
            header_time: Duration::from_secs(2),
            header_bytes: 16 * 1024,
            // /metrics with 131k rules is ~10 MB: 30 s is 350 KB/s.
            connection_time: Duration::from_secs(30),
        }
    }
}

/// A plain response with a content type.
pub fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The endpoints are read-only: anything but GET is refused before routing,
/// whatever the path (so HEAD is refused too, as before).
async fn only_get(request: Request<Body>, next: axum::middleware::Next) -> Response {
    if request.method() == Method::GET {
        return next.run(request).await;
    }
    let mut response = reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        "only GET\n".into(),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    response
}

/// Serves `router` on `listener` until the task is dropped. Accept errors
/// (out of file descriptors) are logged and retried, never fatal: the
/// health endpoint must outlive a burst.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits) {
    let service = TowerToHyperService::new(router.layer(axum::middleware::from_fn(only_get)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_time)
        .max_buf_size(limits.header_bytes)
        // One request per connection, as the hand-written servers did: a
        // connection cannot idle between requests, and the lifetime bound
        // below bounds the whole exchange.
        .keep_alive(false);
    let permits = Arc::new(Semaphore::new(limits.connections));
    loop {
        // A permit before accepting: over the limit, clients wait in the
        // kernel's backlog until a connection ends (header_time at most for
        // the idle ones) instead of costing memory here.
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let connection = http.serve_connection(TokioIo::new(stream), service.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(limits.connection_time, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection"),
                Err(_) => tracing::debug!(%peer, "HTTP connection outlived its limit; closed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route(
                "/health",
                axum::routing::get(|| async { reply(StatusCode::OK, "text/plain", "ok\n".into()) }),
            )
            .fallback(|| async {
                reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into())
            });
        tokio::spawn(serve(listener, router, limits));
        addr
    }

    /// Sends `request` and reads until the server closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn methods_paths_and_closing() {
        let addr = start(Limits::default()).await;
        let ok = exchange(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("content-type: text/plain\r\n"), "{ok}");
        assert!(
            ok.ends_with("\r\n\r\nok\n"),
            "one response, then closed: {ok}"
        );
        for method in ["POST", "HEAD", "DELETE"] {
            let r = exchange(
                addr,
                format!("{method} /health HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await;
            assert!(r.starts_with("HTTP/1.1 405 "), "{method}: {r}");
            assert!(r.contains("allow: GET\r\n"), "{r}");
        }
        let r = exchange(addr, b"PUT /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "method first: {r}");
        assert!(r.ends_with("only GET\n"), "{r}");
        let r = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    }

    #[tokio::test]
    async fn oversized_heads_are_refused() {
        let addr = start(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut request = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
        request.resize(request.len() + 1024 * 1024, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        // The server stops reading at its limit: the write may fail.
        let _ = s.write_all(&request).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431 "),
            "431 or closed: {text}"
        );
    }

    #[tokio::test]
    async fn slow_and_idle_clients_are_cut_off() {
        let limits = Limits {
            header_time: Duration::from_millis(300),
            ..Limits::default()
        };
        let addr = start(limits).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        let started = std::time::Instant::now();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
        }
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
            .await
            .expect("the idle connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        let n = tokio::time::timeout(Duration::from_secs(2), slow.read(&mut buf))
            .await
            .expect("the slow connection is closed");
        assert!(
            !matches!(n, Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200")),
            "no answer to a head that took too long"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn over_the_connection_limit_clients_wait_their_turn() {
        let limits = Limits {
            connections: 4,
            header_time: Duration::from_millis(500),
            ..Limits::default()
        };
        let addr = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // All slots are held: the fifth is answered once the idle ones are
        // cut off, not before and not never.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let r = exchange(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
