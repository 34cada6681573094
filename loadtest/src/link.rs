//! A network link of its own for one client: a forward HTTP proxy that caps bandwidth in
//! each direction and adds a one-way delay, as a pod's share of a real link would. A
//! process is put behind it with the standard `HTTP_PROXY` variable, which the registry
//! clients honour (reqwest reads it), so the fleet bench can give every worker its own
//! link while the registries, NATS and the coordinator stay on the machine's loopback.
//!
//! Plain-HTTP targets only (absolute-form requests, as a client sends to an HTTP proxy);
//! `CONNECT` tunnels are refused.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct LinkOptions {
    /// Bytes per second in each direction, all connections together.
    pub rate: u64,
    /// One-way delay, added to each request on its way out and each answer on its way back.
    pub delay: Duration,
}

/// One direction's capacity: chunks take their turn on it, each for its length at the
/// rate, so whatever the connections, no more than `rate` bytes a second pass.
struct Pipe {
    rate: u64,
    free_at: Mutex<Instant>,
    /// Bytes that went through (the bench reports them).
    carried: std::sync::atomic::AtomicU64,
}

impl Pipe {
    fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            free_at: Mutex::new(Instant::now()),
            carried: Default::default(),
        }
    }

    async fn carry(&self, n: usize) {
        let until = {
            let mut free = self.free_at.lock().await;
            let start = (*free).max(Instant::now());
            *free = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
            *free
        };
        self.carried
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep_until(until).await;
    }
}

struct Shared {
    up: Pipe,
    down: Pipe,
    delay: Duration,
    client: reqwest::Client,
}

/// A running link; stops when dropped.
pub struct Link {
    /// `http://127.0.0.1:PORT`, for `HTTP_PROXY`.
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Bytes carried (client → upstream, upstream → client).
    pub fn carried(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.shared.up.carried.load(Relaxed),
            self.shared.down.carried.load(Relaxed),
        )
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn start(opts: LinkOptions) -> std::io::Result<Link> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(std::io::Error::other)?;
    let shared = Arc::new(Shared {
        up: Pipe::new(opts.rate),
        down: Pipe::new(opts.rate),
        delay: opts.delay,
        client,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(shared.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Link {
        url,
        shared,
        server,
    })
}

/// Headers of one hop, not forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "proxy-connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "host"
    )
}

fn copy_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in from {
        if !hop_by_hop(k) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// Chunks of `body`, each let through once the pipe carried it.
fn shaped<S, E>(body: S, shared: Arc<Shared>, up: bool) -> impl Stream<Item = Result<Bytes, E>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    body.then(move |chunk| {
        let shared = shared.clone();
        async move {
            if let Ok(c) = &chunk {
                let pipe = if up { &shared.up } else { &shared.down };
                pipe.carry(c.len()).await;
            }
            chunk
        }
    })
}

async fn forward(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if req.method() == Method::CONNECT {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported by this link\n",
        )
            .into_response();
    }
    let uri = req.uri().clone();
    if uri.scheme().is_none() || uri.authority().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "a proxy request names its target in absolute form\n",
        )
            .into_response();
    }
    tokio::time::sleep(shared.delay).await;
    let method = req.method().clone();
    let headers = copy_headers(req.headers());
    let body = shaped(req.into_body().into_data_stream(), shared.clone(), true);
    let sent = shared
        .client
        .request(method, uri.to_string())
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("link upstream: {e}\n")).into_response();
        }
    };
    tokio::time::sleep(shared.delay).await;
    let status = resp.status();
    let mut headers = copy_headers(resp.headers());
    if let Some(len) = resp.headers().get(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, len.clone());
    }
    let body = Body::from_stream(shaped(resp.bytes_stream(), shared, false));
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pipe_lets_through_no_more_than_its_rate_whatever_the_callers() {
        let pipe = Arc::new(Pipe::new(1_000_000));
        let start = Instant::now();
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let pipe = pipe.clone();
                tokio::spawn(async move {
                    for _ in 0..5 {
                        pipe.carry(100_000).await;
                    }
                })
            })
            .collect();
        for c in callers {
            c.await.unwrap();
        }
        // 2 MB at 1 MB/s, however they were interleaved.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1999), "{took:?}");
        assert!(took < Duration::from_millis(2100), "{took:?}");
        assert_eq!(
            pipe.carried.load(std::sync::atomic::Ordering::Relaxed),
            2_000_000
        );
    }
}
