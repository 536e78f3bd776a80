//! The accept loop: owns every connection (TCP_NODELAY, the connection cap,
//! shutdown tracking) and serves each with hyper: checks every request's
//! `Host` against the server's names (DNS rebinding), routes `/ws` to our own
//! upgrade and everything else to warp's filters, and puts the security
//! headers on every response.

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

use super::embedded;
use super::headers::SecurityHeaders;
use super::http::{Body, HEALTHZ_PATH, READYZ_PATH, from_warp, routes, text_response};
use super::upgrade::{self, WS_PATH};
use crate::address::{AddressKey, Slot};
use crate::app::App;
use crate::config::names::{HostMatch, HostPolicy, HostRefused};
use crate::config::{Config, ConfigError, HistoryKind};
use crate::metrics::HandshakeRefusal;
use crate::store::StartError;

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
    Storage(#[from] StartError),
    #[error("cannot read the listening address: {0}")]
    Listener(std::io::Error),
}

/// What the connections share at the network edge: which `Host` values
/// name this server, and the headers every response gets.
#[derive(Debug)]
struct Edge {
    hosts: HostPolicy,
    headers: SecurityHeaders,
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
    run_with(config, Listeners { main: listener, metrics: None }, shutdown).await
}

/// What a server listens on.
#[derive(Debug)]
pub struct Listeners {
    /// The page, `/ws`, `/healthz` and `/readyz`.
    pub main: TcpListener,
    /// `/metrics` (`--metrics-listen`), if served.
    pub metrics: Option<TcpListener>,
}

/// [`run`], also serving `/metrics` on its own listener when there is one.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let Listeners { main: listener, metrics } = listeners;
    config.validate()?;
    // The names as bound: a listener on port 0 has its real port by now.
    let addr = listener.local_addr().map_err(ServerError::Listener)?;
    let edge = Arc::new(Edge {
        hosts: HostPolicy::new(&config.names, addr),
        headers: match embedded_index(&config) {
            Some(html) => SecurityHeaders::for_page(html),
            None => SecurityHeaders::new(&config.bundle_dir),
        },
    });
    let app = App::new(config).await?;
    let http_routes = warp::service(routes(app.clone()));
    let permits = Arc::new(Semaphore::new(app.config.max_connections));
    let rejections = Arc::new(Semaphore::new(MAX_CONCURRENT_REJECTIONS));
    // Only now, with the history open, is the server really running: a
    // locked or damaged database is reported without a URL before it.
    if embedded_index(&app.config).is_some() {
        info!("serving the page built into this binary (--bundle-dir serves a directory instead)");
    } else {
        info!(bundle = %app.config.bundle_dir.display(), "serving the page");
        if !app.config.bundle_dir.join("index.html").exists() {
            warn!(bundle = %app.config.bundle_dir.display(), "no index.html there: / says how to build the page");
        }
    }
    info!(hosts = %edge.hosts, "answering requests that name one of these hosts");
    // Members saved at the last stop get their grace period to resume.
    let restored = app.hub.restore().await;
    if !restored.is_empty() {
        info!(members = restored.len(), "members of the last run may resume");
    }
    for (room, me) in restored {
        app.expire_after(room, me, 0, app.config.timing.restart_grace);
    }
    if let HistoryKind::Redis(redis) = &app.config.history {
        app.tasks.spawn(app.clone().reap_dead_instances(redis.instance_ttl));
    }
    if let Some(metrics) = metrics {
        app.tasks.spawn(super::metrics::serve(metrics, app.clone()));
    }
    info!("Natter is running at http://{addr}/");

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
        // One address may hold only its share of the connections. A trusted
        // proxy's are counted per forwarded client, at the upgrade instead.
        let trusted = app.config.trusted_proxies.iter().any(|n| n.contains(peer.ip()));
        let address = if trusted {
            Ok(None)
        } else {
            app.connections_per_address.try_take(AddressKey::of(peer.ip())).map(Some).ok_or(Busy::Address)
        };
        let permit = address.and_then(|address| match permits.clone().try_acquire_owned() {
            Ok(server) => Ok(ConnPermit { _server: server, _address: address }),
            Err(_) => Err(Busy::Server),
        });
        match permit {
            Ok(permit) => {
                let conn =
                    serve_connection(stream, peer, Arc::new(permit), app.clone(), edge.clone(), http_routes.clone());
                app.tasks.spawn(conn);
            }
            Err(busy) => {
                app.metrics.refused(match busy {
                    Busy::Server => HandshakeRefusal::ServerFull,
                    Busy::Address => HandshakeRefusal::AddressFull,
                });
                match rejections.clone().try_acquire_owned() {
                    Ok(slot) => {
                        debug!(%peer, ?busy, "connection cap reached; answering");
                        app.tasks.spawn(reject_busy(stream, slot, edge.clone(), busy));
                    }
                    Err(_) => debug!(%peer, ?busy, "connection cap reached; closing"),
                }
            }
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
    // Everyone still a member is saved, so their browsers resume after a restart.
    if !app.writes.stop(app.hub.saved_members(), app.config.timing.shutdown_timeout).await {
        warn!("shutdown timeout: the history writer did not finish");
    }
    info!("stopped");
    Ok(())
}

/// The embedded page's `index.html`, when the server serves the page built
/// into the binary.
fn embedded_index(config: &Config) -> Option<&'static str> {
    let index = embedded::index().filter(|_| config.embedded_page)?;
    std::str::from_utf8(index.body).ok()
}

fn http1_builder(app: &App) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(app.config.timing.header_read_timeout);
    builder
}

/// The one `Host` of a request (the header; an absolute request target
/// must name the same), as sent.
fn request_host<B>(req: &Request<B>) -> Result<&str, HostRefused> {
    let mut values = req.headers().get_all(header::HOST).iter();
    let host = match (values.next(), values.next()) {
        (None, _) => return Err(HostRefused::Missing),
        (Some(_), Some(_)) => return Err(HostRefused::Several),
        (Some(host), None) => host.to_str().map_err(|_| HostRefused::Malformed)?,
    };
    match req.uri().authority() {
        Some(target) if !target.as_str().eq_ignore_ascii_case(host) => Err(HostRefused::Several),
        _ => Ok(host),
    }
}

/// The answer to a request whose `Host` is refused: 421 for a name that is
/// not the server's (the DNS-rebinding case), 400 for a missing or malformed one.
fn host_refusal(refused: &HostRefused) -> Response<Body> {
    let status = match refused {
        HostRefused::Foreign => StatusCode::MISDIRECTED_REQUEST,
        HostRefused::Missing | HostRefused::Several | HostRefused::Malformed => StatusCode::BAD_REQUEST,
    };
    text_response(status, &refused.to_string())
}

/// Answers one request: the `Host` check, then `/ws` or warp's routes.
/// `/healthz` and `/readyz` answer any `Host`: probes (a load balancer's, Kubernetes')
/// address the server by an IP of their own, and "ok" tells a rebinding
/// page nothing; its counts (`--healthz-detail`) go only to the server's names.
async fn serve_request<S>(
    mut req: Request<Incoming>,
    app: Arc<App>,
    edge: &Edge,
    peer: SocketAddr,
    permit: Arc<ConnPermit>,
    mut routes: S,
) -> Response<Body>
where
    S: Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible>,
{
    let host = request_host(&req).and_then(|host| edge.hosts.check(host));
    let ws = req.uri().path() == WS_PATH;
    let probe = matches!(req.uri().path(), HEALTHZ_PATH | READYZ_PATH);
    let mut resp = match &host {
        Ok(host) if ws => upgrade::handle(req, app, peer, permit, host),
        Err(HostRefused::Foreign) if !probe => {
            debug!(%peer, host = ?request_host(&req).unwrap_or_default(), "request for another host refused");
            if ws {
                app.metrics.refused(HandshakeRefusal::Host);
            }
            host_refusal(&HostRefused::Foreign)
        }
        Err(refused @ (HostRefused::Missing | HostRefused::Several | HostRefused::Malformed)) => {
            debug!(%peer, %refused, "request refused");
            if ws {
                app.metrics.refused(HandshakeRefusal::Host);
            }
            host_refusal(refused)
        }
        Ok(_) | Err(HostRefused::Foreign) => {
            if let Ok(host) = &host {
                req.extensions_mut().insert::<HostMatch>(host.clone());
            }
            match routes.call(req).await {
                Ok(resp) => from_warp(resp),
                Err(never) => match never {},
            }
        }
    };
    let ws_host = host.as_ref().ok().map(|h| h.authority.as_str());
    edge.headers.apply(resp.headers_mut(), ws_host);
    resp
}

/// Serves one connection until it ends or the server shuts down.
async fn serve_connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Arc<ConnPermit>,
    app: Arc<App>,
    edge: Arc<Edge>,
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
        let edge = edge.clone();
        let routes = http_routes.clone();
        async move { Ok::<_, Infallible>(serve_request(req, app, &edge, peer, permit, routes).await) }
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

/// A connection's place under the caps: the server's, and its address's
/// (none for a trusted proxy). Held until the connection, or the WebSocket
/// session it became, ends.
#[derive(Debug)]
pub struct ConnPermit {
    _server: OwnedSemaphorePermit,
    _address: Option<Slot>,
}

/// Which cap a connection is over.
#[derive(Debug, Clone, Copy)]
enum Busy {
    /// The server's (`--max-connections`): 503.
    Server,
    /// Its address's (`--max-connections-per-ip`): 429.
    Address,
}

/// Answers a connection over a cap with 503 or 429 and closes it.
async fn reject_busy(stream: TcpStream, slot: OwnedSemaphorePermit, edge: Arc<Edge>, busy: Busy) {
    let service = service_fn(move |_req: Request<Incoming>| {
        let mut resp: Response<Body> = match busy {
            Busy::Server => {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "Natter is at its connection limit; try again shortly")
            }
            Busy::Address => upgrade::too_many_from_address(),
        };
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        edge.headers.apply(resp.headers_mut(), None);
        std::future::ready(Ok::<_, Infallible>(resp))
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(REJECTION_TIMEOUT).keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REJECTION_TIMEOUT * 2, conn).await;
    drop(slot);
}
