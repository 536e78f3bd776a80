//! The `/ws` endpoint: checks the handshake and the `Origin` ourselves, answers
//! 101, and hands the upgraded TCP stream to a session, which does its own
//! WebSocket framing (no per-connection buffers while idle, our 16 KiB
//! message limit) — neither of which warp's `ws()` filter allows.
//!
//! The request's `Host` was checked before it got here (`server.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{Instrument, debug, info_span, warn};

use super::http::{Body, text_response};
use crate::address::{self, AddressKey};
use crate::app::App;
use crate::config::names::HostMatch;
use crate::config::origin::{OriginPolicy, OriginRefused};
use crate::metrics::HandshakeRefusal;
use crate::session;

/// The WebSocket endpoint's path.
pub const WS_PATH: &str = "/ws";
/// The only WebSocket version there is (RFC 6455), sent back on a 426.
pub const WS_VERSION: &str = "13";
/// Bytes a `Sec-WebSocket-Key` is the base64 of (RFC 6455, 4.1).
pub const WS_KEY_BYTES: usize = 16;

/// Why a handshake was refused, with the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the WebSocket endpoint only accepts GET")]
    Method,
    #[error("a WebSocket handshake needs HTTP/1.1")]
    OldHttp,
    #[error("this endpoint speaks WebSocket; send an Upgrade: websocket request")]
    NotUpgrade,
    #[error("unsupported WebSocket version; this server speaks version 13")]
    Version,
    #[error("Sec-WebSocket-Key must be one header holding the base64 of 16 bytes")]
    BadKey,
    #[error("{0}")]
    Origin(#[from] OriginRefused),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotUpgrade | Self::Version => StatusCode::UPGRADE_REQUIRED,
            Self::OldHttp | Self::BadKey => StatusCode::BAD_REQUEST,
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

/// True for a `Sec-WebSocket-Key` that is the base64 of [`WS_KEY_BYTES`] bytes.
pub fn valid_key(key: &[u8]) -> bool {
    STANDARD.decode(key).is_ok_and(|k| k.len() == WS_KEY_BYTES)
}

/// Checks a handshake request whose `Host` named the server as `host`;
/// returns the `Sec-WebSocket-Accept` value.
pub fn check_handshake<B>(req: &Request<B>, origins: &OriginPolicy, host: &HostMatch) -> Result<String, Refusal> {
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err(Refusal::Method);
    }
    if req.version() != Version::HTTP_11 {
        return Err(Refusal::OldHttp);
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(Refusal::NotUpgrade);
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    if versions.next().map(HeaderValue::as_bytes) != Some(WS_VERSION.as_bytes()) || versions.next().is_some() {
        return Err(Refusal::Version);
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if valid_key(key.as_bytes()) => key,
        _ => return Err(Refusal::BadKey),
    };
    let origin = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("<invalid>"));
    origins.check(origin, host)?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// The plain-text answer to a refused handshake, with the headers its status calls for.
fn refusal_response(refusal: &Refusal) -> Response<Body> {
    let mut resp = text_response(refusal.status(), &refusal.to_string());
    let h = resp.headers_mut();
    match refusal.status() {
        StatusCode::METHOD_NOT_ALLOWED => {
            h.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        StatusCode::UPGRADE_REQUIRED => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static(WS_VERSION));
        }
        _ => {}
    }
    resp
}

/// The header a trusted reverse proxy names the client in.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// `429` for an address at its connection cap.
pub fn too_many_from_address() -> Response<Body> {
    let mut resp =
        text_response(StatusCode::TOO_MANY_REQUESTS, "too many connections from your address; try again shortly");
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(super::server::RETRY_AFTER_SECS));
    resp
}

/// Answers a request to [`WS_PATH`]: 101 and a session, or the refusal.
/// `permit` is the connection's slot under the connection cap; the session
/// keeps it. `host` is what the request's `Host` named.
pub fn handle(
    mut req: Request<Incoming>,
    app: Arc<App>,
    peer: SocketAddr,
    permit: Arc<super::server::ConnPermit>,
    host: &HostMatch,
) -> Response<Body> {
    let accept = match check_handshake(&req, &app.config.origins, host) {
        Ok(accept) => accept,
        Err(refusal) => {
            debug!(%peer, %refusal, "websocket handshake refused");
            app.metrics.refused(match refusal {
                Refusal::Origin(_) => HandshakeRefusal::Origin,
                _ => HandshakeRefusal::BadRequest,
            });
            return refusal_response(&refusal);
        }
    };
    // Behind a trusted proxy, the per-address limits count the client it
    // forwarded (its own connections are not counted at accept).
    // Read byte by byte: a client's own non-ASCII header, which a proxy
    // appends the real address to, must not hide that address.
    let forwarded: Vec<String> = req
        .headers()
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let trusted = &app.config.trusted_proxies;
    let client = address::client_ip(peer.ip(), forwarded.iter().map(String::as_str), trusted);
    // A trusted proxy's connection is always counted here: under the client
    // it names, or under the proxy itself when it names none.
    let forwarded_slot = if !trusted.iter().any(|n| n.contains(peer.ip())) {
        None
    } else {
        match app.connections_per_address.try_take(AddressKey::of(client)) {
            Some(slot) => Some(slot),
            None => {
                debug!(%peer, %client, "connections per address at the cap");
                app.metrics.refused(HandshakeRefusal::AddressFull);
                return too_many_from_address();
            }
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let span = info_span!("ws", %peer);
    let tasks = app.tasks.clone();
    // A chain of futures rather than one async block around the session:
    // once upgraded, the task holds the session's future alone (an async
    // block would keep its own copies of what it moved into the session,
    // for the life of every idle connection).
    let connection = on_upgrade.then(move |upgraded| match upgraded {
        // Our own accept loop serves plain TCP streams, so the socket
        // comes back out of hyper for our own framing.
        Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let held = (permit, forwarded_slot);
                Either::Left(session::run(parts.io.into_inner(), parts.read_buf, app, peer, client, held))
            }
            Err(_) => {
                warn!("upgraded connection is not a TCP stream; closing it");
                Either::Right(std::future::ready(()))
            }
        },
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            Either::Right(std::future::ready(()))
        }
    });
    tasks.spawn(connection.instrument(span));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of RFC 6455's example handshake.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn host() -> HostMatch {
        HostMatch { authority: "127.0.0.1:8080".into(), public_origins: Vec::new() }
    }

    fn handshake() -> http::request::Builder {
        Request::get(WS_PATH)
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
    }

    fn check(req: http::request::Builder) -> Result<String, Refusal> {
        check_handshake(&req.body(()).expect("request"), &OriginPolicy::default(), &host())
    }

    #[test]
    fn a_valid_handshake_gets_the_rfc_accept_key() {
        assert_eq!(
            check(handshake().header(header::SEC_WEBSOCKET_KEY, KEY)),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())
        );
    }

    #[test]
    fn the_key_must_be_the_base64_of_16_bytes() {
        assert!(valid_key(KEY.as_bytes()));
        for bad in [
            "",
            "x",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZSE=",
            "dGhlIHNhbXBsZSBub25jZR==",
            "AAAAAAAAAAAAAAAAAAAAAA==AA",
            "dGhlIHNhbXBsZSBub25j ZQ==",
        ] {
            assert!(!valid_key(bad.as_bytes()), "{bad:?}");
            assert_eq!(check(handshake().header(header::SEC_WEBSOCKET_KEY, bad)), Err(Refusal::BadKey), "{bad:?}");
        }
        assert_eq!(check(handshake()), Err(Refusal::BadKey), "missing");
        let twice = handshake().header(header::SEC_WEBSOCKET_KEY, KEY).header(header::SEC_WEBSOCKET_KEY, KEY);
        assert_eq!(check(twice), Err(Refusal::BadKey), "twice");
    }

    #[test]
    fn http_1_0_and_other_versions_are_refused() {
        let old = handshake().version(Version::HTTP_10).header(header::SEC_WEBSOCKET_KEY, KEY);
        assert_eq!(check(old), Err(Refusal::OldHttp));
        let v8 = handshake().header(header::SEC_WEBSOCKET_KEY, KEY).header(header::SEC_WEBSOCKET_VERSION, "8");
        assert_eq!(check(v8), Err(Refusal::Version), "13 and 8 at once");
    }

    #[test]
    fn refusals_carry_the_headers_their_status_needs() {
        let resp = refusal_response(&Refusal::Method);
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers().get(header::ALLOW).expect("Allow"), "GET");
        for refusal in [Refusal::NotUpgrade, Refusal::Version] {
            let resp = refusal_response(&refusal);
            assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
            assert_eq!(resp.headers().get(header::SEC_WEBSOCKET_VERSION).expect("version"), "13");
            assert_eq!(resp.headers().get(header::UPGRADE).expect("Upgrade"), "websocket");
        }
        assert_eq!(refusal_response(&Refusal::BadKey).status(), StatusCode::BAD_REQUEST);
        assert_eq!(refusal_response(&Refusal::OldHttp).status(), StatusCode::BAD_REQUEST);
    }
}
