//! Plain HTTP: the built page (static files with the right caching and an SPA
//! fallback), `/healthz` (alive), `/readyz` (storage takes writes), and a helpful
//! page when the page has not been built.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use tracing::warn;
use warp::filters::BoxedFilter;
use warp::{Filter, Rejection, Reply};

use super::embedded;
use super::headers::hash_source;
use crate::app::App;
use crate::config::names::HostMatch;

/// Every response body the server sends.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The health check's path (alive).
pub const HEALTHZ_PATH: &str = "/healthz";
/// The readiness check's path (storage takes writes, the server accepts).
pub const READYZ_PATH: &str = "/readyz";
/// How long `/readyz` waits for the history writer to show it can write.
pub const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a readiness answer is reused: a flood of `/readyz` requests
/// costs the writer at most about one probe per this interval.
pub const READY_CACHE: Duration = Duration::from_secs(1);

/// `Cache-Control` for files whose name carries a content hash.
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` for everything else: always revalidate.
pub const CACHE_REVALIDATE: &str = "no-cache";

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never: Infallible| match never {}).boxed()
}

/// A plain-text response.
pub fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp =
        Response::new(Full::new(Bytes::from(format!("{text}\n"))).map_err(|never: Infallible| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Converts warp's response into ours.
pub fn from_warp(resp: warp::reply::Response) -> Response<Body> {
    resp.map(|body| body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed())
}

/// True for a file name trunk gave a content hash (`app-0123456789abcdef_bg.wasm`):
/// its content never changes, so browsers may cache it for good.
pub fn is_hashed_asset(name: &str) -> bool {
    name.match_indices('-').any(|(i, _)| {
        let rest = &name[i + 1..];
        rest.len() > 16
            && rest[..16].bytes().all(|b| b.is_ascii_hexdigit())
            && matches!(rest.as_bytes()[16], b'.' | b'_')
    })
}

/// The `Cache-Control` value for a file of the bundle.
pub fn cache_policy(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if is_hashed_asset(name) { CACHE_IMMUTABLE } else { CACHE_REVALIDATE }
}

/// True for paths the page routes itself (no file extension in the last segment).
pub fn is_app_route(path: &str) -> bool {
    !path.rsplit('/').next().unwrap_or_default().contains('.')
}

/// The "not built" page's style (its policy allows exactly this inline style).
const NO_BUNDLE_STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}
code{background:#8882;padding:.1em .3em;border-radius:4px}";

/// The page served while the bundle directory has no `index.html`. It names
/// no server path: anyone can load it (the log says which directory it is).
const NO_BUNDLE_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Natter — page not built</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>STYLE</style></head>
<body><h1>Natter is running, but the chat page has not been built</h1>
<p>The server is up (the WebSocket endpoint is <code>/ws</code>), but it found no
<code>index.html</code> in its bundle directory (<code>--bundle-dir</code>).</p>
<p>From the repository, <code>cargo xtask run</code> builds the page and starts the server.
To build only the page: <code>trunk build --release</code>.</p></body></html>
"#;

/// The "not built" page's own `Content-Security-Policy`: nothing but its style.
fn no_bundle_policy() -> String {
    format!(
        "default-src 'none'; style-src {}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_source(NO_BUNDLE_STYLE)
    )
}

fn with_headers(reply: impl Reply, cache: &'static str) -> warp::reply::Response {
    let mut resp = reply.into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

/// What `/readyz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Ready,
    /// Not ready, and the part that is not (`shutting_down`, `storage`);
    /// the details go to the log, not to whoever asked.
    NotReady(&'static str),
}

/// Whether the server takes new chats now: it is not shutting down, and its
/// history store can start a write within [`READY_PROBE_TIMEOUT`].
async fn readiness(app: &App) -> Readiness {
    if app.shutdown.is_cancelled() {
        return Readiness::NotReady("shutting_down");
    }
    match app.writes.probe(READY_PROBE_TIMEOUT).await {
        Ok(()) => Readiness::Ready,
        Err(e) => {
            warn!(error = %e, "not ready: the history store cannot write");
            Readiness::NotReady("storage")
        }
    }
}

/// All plain-HTTP routes.
pub fn routes(app: Arc<App>) -> BoxedFilter<(warp::reply::Response,)> {
    let dir = app.config.bundle_dir.clone();
    let index = dir.join("index.html");
    let get_or_head = warp::get().or(warp::head()).unify().boxed();

    let health_app = app.clone();
    let healthz = warp::path!("healthz").and(get_or_head.clone()).and(warp::ext::optional::<HostMatch>()).map(
        move |host: Option<HostMatch>| {
            // Counts only with --healthz-detail, and only for a Host naming this server.
            let body = if health_app.config.healthz_detail && host.is_some() {
                serde_json::json!({
                    "status": "ok",
                    "sessions": health_app.session_count(),
                    "rooms": health_app.hub.room_count(),
                })
            } else {
                serde_json::json!({ "status": "ok" })
            };
            with_headers(warp::reply::json(&body), CACHE_REVALIDATE)
        },
    );

    let ready_app = app.clone();
    let last_ready: Arc<Mutex<Option<(Instant, Readiness)>>> = Arc::default();
    let readyz = warp::path!("readyz").and(get_or_head.clone()).and_then(move || {
        let (app, last) = (ready_app.clone(), last_ready.clone());
        async move {
            let cached = last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .filter(|(at, _)| at.elapsed() < READY_CACHE)
                .map(|(_, readiness)| readiness);
            let readiness = match cached {
                Some(readiness) => readiness,
                None => {
                    let readiness = readiness(&app).await;
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), readiness));
                    readiness
                }
            };
            let (status, body) = match readiness {
                Readiness::Ready => (StatusCode::OK, serde_json::json!({ "status": "ready" })),
                Readiness::NotReady(reason) => {
                    (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "status": "not_ready", "reason": reason }))
                }
            };
            let reply = warp::reply::with_status(warp::reply::json(&body), status);
            Ok::<_, Rejection>(with_headers(reply, CACHE_REVALIDATE))
        }
    });

    if app.config.embedded_page && embedded::page().is_some() {
        let page = get_or_head
            .clone()
            .and(warp::method())
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and_then(|method: Method, path: warp::path::FullPath, headers: http::HeaderMap| async move {
                let path = path.as_str();
                let file = embedded::find(path).or_else(|| if is_app_route(path) { embedded::index() } else { None });
                match file {
                    Some(file) => Ok(embedded::respond(file, &headers, method == Method::HEAD).map(Into::into)),
                    None => Err(warp::reject::not_found()),
                }
            });
        return healthz.or(readyz).unify().or(page).unify().recover(recover).unify().boxed();
    }

    let files = get_or_head.clone().and(warp::fs::dir(dir.clone())).map(|file: warp::fs::File| {
        let cache = cache_policy(file.path());
        with_headers(file, cache)
    });

    let spa = get_or_head
        .clone()
        .and(warp::path::full())
        .and_then(|path: warp::path::FullPath| async move {
            if is_app_route(path.as_str()) { Ok(()) } else { Err(warp::reject::not_found()) }
        })
        .untuple_one()
        .and(warp::fs::file(index.clone()))
        .map(|file: warp::fs::File| with_headers(file, CACHE_REVALIDATE));

    let page = NO_BUNDLE_PAGE.replace("STYLE", NO_BUNDLE_STYLE);
    let policy = HeaderValue::from_str(&no_bundle_policy()).ok();
    let no_bundle = get_or_head.and(warp::path::full()).and_then(move |path: warp::path::FullPath| {
        let page = page.clone();
        let index = index.clone();
        let policy = policy.clone();
        async move {
            if is_app_route(path.as_str()) && !index.exists() {
                let reply = warp::reply::with_status(warp::reply::html(page), StatusCode::SERVICE_UNAVAILABLE);
                let mut resp = with_headers(reply, CACHE_REVALIDATE);
                if let Some(policy) = policy {
                    resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, policy);
                }
                Ok(resp)
            } else {
                Err(warp::reject::not_found())
            }
        }
    });

    healthz.or(readyz).unify().or(files).unify().or(spa).unify().or(no_bundle).unify().recover(recover).unify().boxed()
}

async fn recover(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, text) = if err.is_not_found() {
        (StatusCode::NOT_FOUND, "not found")
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else {
        (StatusCode::BAD_REQUEST, "bad request")
    };
    let reply = warp::reply::with_status(format!("{text}\n"), status);
    let mut resp = with_headers(reply, CACHE_REVALIDATE);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_hashed_names_are_immutable() {
        for hashed in [
            "natter-frontend-0123456789abcdef_bg.wasm",
            "natter-frontend-0123456789abcdef.js",
            "style-89abcdef01234567.css",
        ] {
            assert!(is_hashed_asset(hashed), "{hashed}");
            assert_eq!(cache_policy(Path::new(hashed)), CACHE_IMMUTABLE);
        }
        for plain in ["index.html", "favicon.ico", "natter-frontend.js", "a-0123.css", "x-0123456789abcdeg.js"] {
            assert!(!is_hashed_asset(plain), "{plain}");
            assert_eq!(cache_policy(Path::new(plain)), CACHE_REVALIDATE);
        }
    }

    #[test]
    fn app_routes_have_no_extension() {
        assert!(is_app_route("/"));
        assert!(is_app_route("/r/lobby"));
        assert!(!is_app_route("/missing.js"));
        assert!(!is_app_route("/assets/app.wasm"));
    }

    #[test]
    fn the_not_built_page_allows_exactly_its_own_style() {
        let page = NO_BUNDLE_PAGE.replace("STYLE", NO_BUNDLE_STYLE);
        let style = &page[page.find("<style>").expect("style") + 7..page.find("</style>").expect("end")];
        assert!(no_bundle_policy().contains(&hash_source(style)), "{}", no_bundle_policy());
        assert!(no_bundle_policy().starts_with("default-src 'none'; "));
    }
}
