//! The node's HTTP listener (`metrics_listen` / `--metrics-listen`):
//! Prometheus metrics at `GET /metrics`, the live console at `GET /` and its
//! event stream at `GET /events` (see [`crate::console`]).
//!
//! Plain HTTP/1.1 on a TCP port of its own, and only on a loopback address
//! (the configuration refuses others): it has no TLS and no authentication,
//! and shows the cluster's layout. A scraper on the same host reads it, or a
//! proxy that terminates TLS forwards to it. Every limit is stated: request
//! heads of at most [`MAX_HEAD_BYTES`] (larger: `431`), no request bodies
//! (`413`), a request head within [`HEAD_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed at once). hyper
//! answers a malformed request with `400` and closes the connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use tstore_actors::observe::Observe;

/// Largest request head (request line and headers) accepted; hyper's floor.
pub const MAX_HEAD_BYTES: usize = 8192;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;
/// A connection must send a complete request head within this long.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// Console event streams open at once; more get `503`.
pub const MAX_EVENT_STREAMS: usize = 8;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves `listener` until the process ends.
pub async fn serve(listener: TcpListener, observe: Observe) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let streams = Arc::new(Semaphore::new(MAX_EVENT_STREAMS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "metrics listener: too many connections; closing this one");
            continue;
        };
        let (observe, streams) = (observe.clone(), streams.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (observe, streams) = (observe.clone(), streams.clone());
                async move { Ok::<_, Infallible>(answer(req, &observe, &streams).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics listener: connection ended");
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync())
        .expect("a static response")
}

async fn answer(
    req: Request<Incoming>,
    observe: &Observe,
    streams: &Arc<Semaphore>,
) -> Response<Body> {
    let has_body = req.headers().contains_key(TRANSFER_ENCODING)
        || req
            .headers()
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "requests to this listener carry no body\n",
        );
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let body = crate::metrics::encode(observe.gather().await);
            Response::builder()
                .header(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                .body(Full::new(Bytes::from(body)).boxed_unsync())
                .expect("a metrics response")
        }
        "/" => Response::builder()
            .header(CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(crate::console::PAGE.as_bytes())).boxed_unsync())
            .expect("the console page"),
        "/events" => {
            let Ok(permit) = streams.clone().try_acquire_owned() else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many console streams open on this node\n",
                );
            };
            let events = crate::console::events(observe.clone()).map(move |f| {
                let _held = &permit;
                f
            });
            Response::builder()
                .header(CONTENT_TYPE, "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed_unsync(http_body_util::StreamBody::new(
                    events,
                )))
                .expect("an event stream")
        }
        _ => text(StatusCode::NOT_FOUND, "not found; try / or /metrics\n"),
    }
}
