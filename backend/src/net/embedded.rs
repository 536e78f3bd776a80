//! The chat page built into the binary (see `backend/build.rs`): served
//! from memory, brotli or gzip as the browser accepts (each made once, at
//! build time), with an `ETag` and the same caching as files on disk
//! (hashed assets for good, the page revalidated). `--bundle-dir` serves a
//! directory instead.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::http::{CACHE_IMMUTABLE, CACHE_REVALIDATE, is_hashed_asset};

/// One file of the embedded page.
#[derive(Debug)]
pub struct EmbeddedFile {
    /// Its path in the bundle, without a leading `/` (`index.html`).
    pub path: &'static str,
    pub body: &'static [u8],
    pub gzip: &'static [u8],
    pub brotli: &'static [u8],
    /// A quoted content hash.
    pub etag: &'static str,
}

/// What `build.rs` embedded: empty when the page was not built.
static PAGE: &[EmbeddedFile] = include!(concat!(env!("OUT_DIR"), "/page.rs"));

/// The embedded page's files, if this binary has one.
pub fn page() -> Option<&'static [EmbeddedFile]> {
    (!PAGE.is_empty()).then_some(PAGE)
}

/// The embedded file at `path` (as requested, with its leading `/`).
pub fn find(path: &str) -> Option<&'static EmbeddedFile> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = if path.is_empty() { "index.html" } else { path };
    PAGE.iter().find(|f| f.path == path)
}

/// The embedded `index.html`.
pub fn index() -> Option<&'static EmbeddedFile> {
    find("index.html")
}

/// A content encoding the server has the file in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Brotli,
    Gzip,
    Identity,
}

/// The best encoding `accept` (an `Accept-Encoding` value) allows: brotli,
/// then gzip, else none. A coding with `q=0` is refused; `*` stands for any.
pub fn negotiate(accept: Option<&str>) -> Encoding {
    let mut brotli = None;
    let mut gzip = None;
    let mut any = None;
    for item in accept.unwrap_or_default().split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let allowed = q > 0.0;
        match coding.as_str() {
            "br" => brotli = Some(allowed),
            "gzip" | "x-gzip" => gzip = Some(allowed),
            "*" => any = Some(allowed),
            _ => {}
        }
    }
    if brotli.or(any) == Some(true) {
        Encoding::Brotli
    } else if gzip.or(any) == Some(true) {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

/// The `Content-Type` of a bundle file, by its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// The response to a GET (or HEAD, `head`) of `file` with the request's `headers`.
pub fn respond(file: &'static EmbeddedFile, headers: &HeaderMap, head: bool) -> Response<Bytes> {
    let cache = if is_hashed_asset(file.path) { CACHE_IMMUTABLE } else { CACHE_REVALIDATE };
    let not_modified =
        headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
            |tag| {
                let tag = tag.trim();
                tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == file.etag
            },
        );
    let encoding = negotiate(headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()));
    let (body, coding) = match encoding {
        Encoding::Brotli => (file.brotli, Some("br")),
        Encoding::Gzip => (file.gzip, Some("gzip")),
        Encoding::Identity => (file.body, None),
    };
    let mut resp =
        if not_modified || head { Response::new(Bytes::new()) } else { Response::new(Bytes::from_static(body)) };
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(file.path)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::ETAG, HeaderValue::from_static(file.etag));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(coding) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    if head && !not_modified {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    static FILE: EmbeddedFile = EmbeddedFile {
        path: "natter-frontend-0123456789abcdef_bg.wasm",
        body: b"raw bytes",
        gzip: b"gz",
        brotli: b"br",
        etag: "\"00000000000000aa\"",
    };
    static PAGE_FILE: EmbeddedFile =
        EmbeddedFile { path: "index.html", body: b"<html>", gzip: b"gz", brotli: b"br", etag: "\"1\"" };

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn brotli_then_gzip_then_none_as_the_browser_accepts() {
        assert_eq!(negotiate(Some("gzip, deflate, br, zstd")), Encoding::Brotli);
        assert_eq!(negotiate(Some("gzip, deflate")), Encoding::Gzip);
        assert_eq!(negotiate(Some("br;q=0, gzip;q=0.5")), Encoding::Gzip);
        assert_eq!(negotiate(Some("br;q=0, gzip;q=0")), Encoding::Identity);
        assert_eq!(negotiate(Some("*")), Encoding::Brotli);
        assert_eq!(negotiate(Some("identity")), Encoding::Identity);
        assert_eq!(negotiate(None), Encoding::Identity);
        assert_eq!(negotiate(Some("BR")), Encoding::Brotli);
    }

    #[test]
    fn a_hashed_asset_is_cached_for_good_in_the_encoding_asked_for() {
        let resp = respond(&FILE, &headers(&[("accept-encoding", "gzip, br")]), false);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.body().as_ref(), b"br");
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/wasm");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], CACHE_IMMUTABLE);
        assert_eq!(resp.headers()[header::VARY], "accept-encoding");
        assert_eq!(resp.headers()[header::ETAG], FILE.etag);
        let plain = respond(&FILE, &HeaderMap::new(), false);
        assert_eq!(plain.body().as_ref(), b"raw bytes");
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    }

    #[test]
    fn the_page_is_revalidated_and_a_matching_etag_gets_304_without_a_body() {
        let resp = respond(&PAGE_FILE, &HeaderMap::new(), false);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], CACHE_REVALIDATE);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let again = respond(&PAGE_FILE, &headers(&[("if-none-match", "\"0\", W/\"1\"")]), false);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(again.body().is_empty());
        let other = respond(&PAGE_FILE, &headers(&[("if-none-match", "\"2\"")]), false);
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn head_has_the_length_and_no_body() {
        let resp = respond(&FILE, &headers(&[("accept-encoding", "gzip")]), true);
        assert!(resp.body().is_empty());
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "2");
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
    }

    #[test]
    fn paths_find_their_files_and_the_root_is_the_page() {
        if page().is_some() {
            assert_eq!(find("/").map(|f| f.path), Some("index.html"));
            assert!(find("/nothing-here.js").is_none());
        } else {
            assert!(find("/").is_none());
        }
        assert_eq!(content_type("a/b.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
