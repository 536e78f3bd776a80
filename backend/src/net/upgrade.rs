//! The `/ws` endpoint: checks the handshake and the `Origin` ourselves, answers
//! 101, and hands the upgraded TCP stream to a session, which does its own
//! WebSocket framing (no per-connection buffers while idle, our 16 KiB
//! message limit) — neither of which warp's `ws()` filter allows.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{Instrument, debug, info_span, warn};

use super::http::{Body, text_response};
use crate::app::App;
use crate::config::origin::OriginRefused;
use crate::session;

/// The WebSocket endpoint's path.
pub const WS_PATH: &str = "/ws";

/// Why a handshake was refused, with the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the WebSocket endpoint only accepts GET")]
    Method,
    #[error("this endpoint speaks WebSocket; send an Upgrade: websocket request")]
    NotUpgrade,
    #[error("unsupported WebSocket version; this server speaks version 13")]
    Version,
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
    #[error("{0}")]
    Origin(#[from] OriginRefused),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotUpgrade | Self::Version => StatusCode::UPGRADE_REQUIRED,
            Self::MissingKey => StatusCode::BAD_REQUEST,
            Self::Origin(_) => StatusCode::FORBIDDEN,
        }
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks a handshake request; returns the `Sec-WebSocket-Accept` value.
pub fn check_handshake<B>(req: &Request<B>, app: &App) -> Result<String, Refusal> {
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err(Refusal::Method);
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(Refusal::NotUpgrade);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(Refusal::Version);
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or(Refusal::MissingKey)?;
    let origin = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("<invalid>"));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    app.config.origins.check(origin, host)?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// Answers a request to [`WS_PATH`]: 101 and a session, or the refusal.
/// `permit` is the connection's slot under the connection cap; the session keeps it.
pub fn handle(
    mut req: Request<Incoming>,
    app: Arc<App>,
    peer: SocketAddr,
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<Body> {
    let accept = match check_handshake(&req, &app) {
        Ok(accept) => accept,
        Err(refusal) => {
            debug!(%peer, %refusal, "websocket handshake refused");
            let mut resp = text_response(refusal.status(), &refusal.to_string());
            match refusal {
                Refusal::NotUpgrade => {
                    resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                }
                Refusal::Version => {
                    resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                }
                _ => {}
            }
            return resp;
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let span = info_span!("ws", %peer);
    let tasks = app.tasks.clone();
    tasks.spawn(
        async move {
            match on_upgrade.await {
                // Our own accept loop serves plain TCP streams, so the
                // socket comes back out of hyper for our own framing.
                Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                    Ok(parts) => session::run(parts.io.into_inner(), parts.read_buf, app, peer).await,
                    Err(_) => warn!("upgraded connection is not a TCP stream; closing it"),
                },
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
            drop(permit);
        }
        .instrument(span),
    );
    let mut resp = Response::new(super::http::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}
