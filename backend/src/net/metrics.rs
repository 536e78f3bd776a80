//! The `/metrics` listener: its own address (`--metrics-listen`, off by
//! default), so the counters are never served on the public port by
//! accident. It answers `GET /metrics` with the OpenMetrics text and 404 to
//! anything else, one request per connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::http::{Body, text_response};
use super::server::ACCEPT_ERROR_BACKOFF;
use crate::app::App;

/// The one path this listener serves.
pub const METRICS_PATH: &str = "/metrics";
/// The exposition format's content type (Prometheus reads it).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapes served at once. A connection beyond them is closed at once
/// (policy: scrapers are few; a flood of them gets nothing).
pub const MAX_METRICS_CONNECTIONS: usize = 8;
/// How long one scrape connection may take, from accept to the answer written.
pub const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener` until the server shuts down.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    if let Ok(addr) = listener.local_addr() {
        info!("metrics at http://{addr}{METRICS_PATH}");
    }
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            () = app.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics connections at their cap; closing");
            continue;
        };
        let service_app = app.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            std::future::ready(Ok::<_, Infallible>(answer(&req, &service_app)))
        });
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(METRICS_CONNECTION_TIMEOUT).keep_alive(false);
        app.tasks.spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, conn).await.is_err() {
                debug!(%peer, "metrics connection timed out");
            }
            drop(slot);
        });
    }
}

/// The answer to one request on the metrics listener.
fn answer<B>(req: &Request<B>, app: &App) -> Response<Body> {
    if req.uri().path() != METRICS_PATH {
        return text_response(StatusCode::NOT_FOUND, "not found; the metrics are at /metrics");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let (rooms, members) = app.hub.counts();
    app.metrics.rooms.set(i64::try_from(rooms).unwrap_or(i64::MAX));
    app.metrics.members.set(i64::try_from(members).unwrap_or(i64::MAX));
    let body = if req.method() == Method::HEAD { String::new() } else { app.metrics.render() };
    let mut resp = Response::new(Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed());
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
