//! The accept loop: owns every connection (TCP_NODELAY, the connection cap,
//! shutdown tracking) and serves each with hyper, routing `/ws` to our own
//! upgrade and everything else to warp's filters.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;
use tracing::{debug, info, warn};

use super::http::{Body, from_warp, routes, text_response};
use super::upgrade::{self, WS_PATH};
use crate::app::App;
use crate::config::{Config, ConfigError};
use crate::store::sqlite::StoreError;

/// Connections over the cap that may be answered with 503 at once; beyond
/// that they are closed without an answer (policy: never queue them).
pub const MAX_CONCURRENT_REJECTIONS: usize = 256;
/// How long an over-the-cap connection may take to send its request.
pub const REJECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after an accept error such as "too many open files", so the loop
/// does not spin while the process is out of descriptors.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// `Retry-After` (seconds) on a 503 for the connection cap.
pub const RETRY_AFTER_SECS: &str = "5";

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// Connections the kernel holds for the accept loop (capped by
/// `net.core.somaxconn`). tokio's `bind` asks for 1,024; in a connect storm a
/// full queue drops SYNs, and a client whose SYN is dropped retries after a
/// whole second.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As std and tokio do: a restarted server can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs the whole server on `listener` until `shutdown` resolves, then stops
/// accepting, closes every WebSocket with 1012, and waits (bounded by the
/// configured shutdown timeout) for connections to finish.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    config.validate()?;
    let app = App::new(config)?;
    let http_routes = warp::service(routes(app.clone()));
    let permits = Arc::new(Semaphore::new(app.config.max_connections));
    let rejections = Arc::new(Semaphore::new(MAX_CONCURRENT_REJECTIONS));
    // Only now, with the history open, is the server really running: a
    // locked or damaged database is reported without a URL before it.
    if let Ok(addr) = listener.local_addr() {
        info!(bundle = %app.config.bundle_dir.display(), "serving the page");
        info!("Natter is running at http://{addr}/");
    }

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let conn = serve_connection(stream, peer, Arc::new(permit), app.clone(), http_routes.clone());
                app.tasks.spawn(conn);
            }
            Err(_) => match rejections.clone().try_acquire_owned() {
                Ok(slot) => {
                    debug!(%peer, "connection cap reached; answering 503");
                    app.tasks.spawn(reject_busy(stream, slot));
                }
                Err(_) => debug!(%peer, "connection cap reached; closing"),
            },
        }
    }

    info!("shutting down: closing connections");
    drop(listener);
    app.shutdown.cancel();
    app.tasks.close();
    if tokio::time::timeout(app.config.timing.shutdown_timeout, app.tasks.wait()).await.is_err() {
        warn!(remaining = app.tasks.len(), "shutdown timeout: some connections did not finish");
    }
    // Everything queued is stored before the process ends.
    if !app.writes.stop(app.config.timing.shutdown_timeout).await {
        warn!("shutdown timeout: the history writer did not finish");
    }
    info!("stopped");
    Ok(())
}

fn http1_builder(app: &App) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(app.config.timing.header_read_timeout);
    builder
}

/// Serves one connection until it ends or the server shuts down.
async fn serve_connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Arc<OwnedSemaphorePermit>,
    app: Arc<App>,
    http_routes: S,
) where
    S: Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let service_app = app.clone();
    let service_permit = permit.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let app = service_app.clone();
        let permit = service_permit.clone();
        let mut routes = http_routes.clone();
        async move {
            if req.uri().path() == WS_PATH {
                Ok::<_, Infallible>(upgrade::handle(req, app, peer, permit))
            } else {
                let resp = match routes.call(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
                Ok(from_warp(resp))
            }
        }
    });
    let conn = http1_builder(&app).serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = app.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(app.config.timing.shutdown_timeout, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "http connection ended with an error");
    }
    drop(permit);
}

/// Answers a connection over the cap with 503 and closes it.
async fn reject_busy(stream: TcpStream, slot: OwnedSemaphorePermit) {
    let service = service_fn(|_req: Request<Incoming>| async {
        let mut resp: Response<Body> =
            text_response(StatusCode::SERVICE_UNAVAILABLE, "Natter is at its connection limit; try again shortly");
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(resp)
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(REJECTION_TIMEOUT).keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REJECTION_TIMEOUT * 2, conn).await;
    drop(slot);
}
