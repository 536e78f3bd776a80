//! The `/ws` endpoint: checks the handshake and the `Origin` ourselves, answers
//! 101, and hands the upgraded connection to a session with *our* WebSocket
//! configuration (small read buffer, 16 KiB message limit), which warp's `ws()`
//! filter cannot set.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{Instrument, debug, info_span};

use crate::app::App;
use crate::config::WsConfig;
use crate::http::{Body, text_response};
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
    Origin(#[from] crate::origin::OriginRefused),
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

/// The tungstenite configuration for our sessions.
pub fn ws_config(ws: &WsConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer)
        .write_buffer_size(ws.write_buffer)
        .max_message_size(Some(ws.max_message_bytes))
        .max_frame_size(Some(ws.max_message_bytes))
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
    let config = ws_config(&app.config.ws);
    let span = info_span!("ws", %peer);
    let tasks = app.tasks.clone();
    tasks.spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                    session::run(ws, app, peer).await;
                }
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
            drop(permit);
        }
        .instrument(span),
    );
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}
