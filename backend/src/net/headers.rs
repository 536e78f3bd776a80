//! The headers every response carries: `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer`, and a `Content-Security-Policy` that lets
//! the page run only its own script and wasm and talk only to its own server.
//!
//! trunk puts the page's loader (`import init from '/natter-frontend-….js'`)
//! into `index.html` as an inline module script, so the policy names that
//! script by its SHA-256. The hashes are taken from the `index.html` being
//! served, read again whenever the file changes, so a rebuilt page keeps
//! working; a page without inline scripts gets no hash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

/// `X-Content-Type-Options` on every response.
pub const NOSNIFF: &str = "nosniff";
/// `Referrer-Policy` on every response: room names in URLs stay private.
pub const NO_REFERRER: &str = "no-referrer";

/// The CSP source for an inline script or style: `'sha256-<base64>'` of its
/// text, with line breaks normalized as the HTML parser does.
pub fn hash_source(text: &str) -> String {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    format!("'sha256-{}'", STANDARD.encode(Sha256::digest(normalized.as_bytes())))
}

/// The policy for a page with these inline script hashes, talking to
/// `ws_host` (the request's `Host`, already checked to be one of the
/// server's names). `'self'` covers `ws:`/`wss:` of the page's own host only
/// in browsers that follow CSP Level 3, so that host is also named for both
/// schemes (when it can be written as a CSP host: not an IPv6 literal).
pub fn content_security_policy(script_hashes: &[String], ws_host: Option<&str>) -> String {
    let mut script = String::from("'self' 'wasm-unsafe-eval'");
    for hash in script_hashes {
        script.push(' ');
        script.push_str(hash);
    }
    let mut connect = String::from("'self'");
    if let Some(host) = ws_host.filter(|h| is_csp_host(h)) {
        connect.push_str(&format!(" ws://{host} wss://{host}"));
    }
    format!(
        "default-src 'none'; script-src {script}; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// True for `name[:port]` that CSP's host-source grammar accepts (letters,
/// digits, `-` and `.`), so a `Host` can never add a directive.
fn is_csp_host(authority: &str) -> bool {
    let (name, port) = authority.split_once(':').unwrap_or((authority, "1"));
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
}

/// The text of every `<script>` without a `src` in `html`, in order.
pub fn inline_scripts(html: &str) -> Vec<&str> {
    // ASCII lowercasing keeps byte offsets, so positions in `lower` are positions in `html`.
    let lower = html.to_ascii_lowercase();
    let mut scripts = Vec::new();
    let mut at = 0;
    while let Some(found) = lower[at..].find("<script") {
        let name_end = at + found + "<script".len();
        let Some(tag_end) = open_tag_end(&lower, name_end) else { break };
        at = tag_end;
        if !lower[name_end..].starts_with(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/') {
            continue; // `<scripts>` or the like
        }
        let content_start = tag_end + 1;
        let content_end = lower[content_start..].find("</script").map_or(html.len(), |i| content_start + i);
        if !has_attribute(&lower[name_end..tag_end], "src") {
            scripts.push(&html[content_start..content_end]);
        }
        at = content_end;
    }
    scripts
}

/// The index of the `>` that ends the tag whose attributes start at `from`
/// (a `>` inside a quoted value does not count).
fn open_tag_end(lower: &str, from: usize) -> Option<usize> {
    let mut quote = None;
    for (i, b) in lower.bytes().enumerate().skip(from) {
        match (quote, b) {
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return Some(i),
            (None, _) => {}
        }
    }
    None
}

/// True when the attribute list `attrs` (lowercase) has an attribute `name`.
fn has_attribute(attrs: &str, name: &str) -> bool {
    let bytes = attrs.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !matches!(bytes[i], b'=' | b'/') {
            i += 1;
        }
        if &attrs[start..i] == name {
            return true;
        }
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            match bytes.get(i) {
                Some(&q) if q == b'"' || q == b'\'' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != q {
                        i += 1;
                    }
                    i += 1;
                }
                _ => {
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                        i += 1;
                    }
                }
            }
        }
    }
    false
}

/// The hashes of the page's inline scripts, as of the `index.html` last read.
#[derive(Debug, Default)]
struct PageScripts {
    /// Modification time and length of the file they were read from (`None`: no file).
    stamp: Option<(SystemTime, u64)>,
    hashes: Arc<[String]>,
}

/// Sets the security headers on responses; knows the page's inline scripts.
#[derive(Debug)]
pub struct SecurityHeaders {
    /// The page's file, read again when it changes; `None` for a page
    /// built into the binary, whose hashes never change.
    index: Option<PathBuf>,
    page: Mutex<PageScripts>,
}

impl SecurityHeaders {
    /// Reads `index.html` of `bundle_dir` (if there is one) for its inline scripts.
    pub fn new(bundle_dir: &Path) -> Self {
        let headers = Self { index: Some(bundle_dir.join("index.html")), page: Mutex::new(PageScripts::default()) };
        headers.page_hashes();
        headers
    }

    /// For a page whose `index.html` is `html` for good (the embedded page).
    pub fn for_page(html: &str) -> Self {
        let hashes = inline_scripts(html).into_iter().map(hash_source).collect();
        Self { index: None, page: Mutex::new(PageScripts { stamp: None, hashes }) }
    }

    /// The page's script hashes, read again if `index.html` changed since
    /// (one `stat` per page response; the file is read only when it changed).
    fn page_hashes(&self) -> Arc<[String]> {
        let Some(index) = &self.index else {
            return self.cached_hashes();
        };
        let stamp = std::fs::metadata(index).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut page = self.page.lock().unwrap_or_else(|p| p.into_inner());
        if page.stamp != stamp {
            let html = stamp.and_then(|_| std::fs::read_to_string(index).ok()).unwrap_or_default();
            page.hashes = inline_scripts(&html).into_iter().map(hash_source).collect();
            page.stamp = stamp;
        }
        page.hashes.clone()
    }

    fn cached_hashes(&self) -> Arc<[String]> {
        self.page.lock().unwrap_or_else(|p| p.into_inner()).hashes.clone()
    }

    /// Sets the headers on a response to a request whose `Host` was
    /// `ws_host` (`None` when it was not one of the server's names). A
    /// response that brings its own policy (the "not built" page) keeps it.
    pub fn apply(&self, headers: &mut HeaderMap, ws_host: Option<&str>) {
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static(NOSNIFF));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static(NO_REFERRER));
        if headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            return;
        }
        let is_page = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"));
        let hashes = if is_page { self.page_hashes() } else { self.cached_hashes() };
        if let Ok(value) = HeaderValue::from_str(&content_security_policy(&hashes, ws_host)) {
            headers.insert(header::CONTENT_SECURITY_POLICY, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What trunk 0.21.14 writes into `dist/index.html` for our page (names shortened).
    const TRUNK_PAGE: &str = r#"<!DOCTYPE html><html lang="en"><head>
    <link rel="stylesheet" href="/style-0123456789abcdef.css" integrity="sha384-x"/>
<link rel="modulepreload" href="/natter-frontend-0123456789abcdef.js" crossorigin="anonymous" integrity="sha384-y"><link rel="preload" href="/natter-frontend-0123456789abcdef_bg.wasm" crossorigin="anonymous" integrity="sha384-z" as="fetch" type="application/wasm"></head>
  <body>
<script type="module">
import init, * as bindings from '/natter-frontend-0123456789abcdef.js';
const wasm = await init({ module_or_path: '/natter-frontend-0123456789abcdef_bg.wasm' });


window.wasmBindings = bindings;


dispatchEvent(new CustomEvent("TrunkApplicationStarted", {detail: {wasm}}));

</script></body></html>"#;

    #[test]
    fn the_trunk_loader_is_found_and_external_scripts_are_not() {
        let scripts = inline_scripts(TRUNK_PAGE);
        assert_eq!(scripts.len(), 1);
        assert!(scripts[0].starts_with("\nimport init, * as bindings from '/natter-frontend-0123456789abcdef.js';"));
        assert!(scripts[0].ends_with("{detail: {wasm}}));\n\n"));

        let page = r#"<SCRIPT SRC="/a.js"></SCRIPT><script data-x='a > b' src=/b.js></script>
            <script type=module data-src="x">one()</script><scripts>no</scripts><script>two()</Script>"#;
        assert_eq!(inline_scripts(page), ["one()", "two()"]);
        assert!(inline_scripts("<html><body><p>no scripts</p></body></html>").is_empty());
        assert_eq!(inline_scripts("<script>unterminated"), ["unterminated"]);
    }

    #[test]
    fn hashes_are_the_browsers_sha256_of_the_text() {
        // echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(hash_source("alert(1)"), "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='");
        assert_eq!(hash_source("a\r\nb\rc"), hash_source("a\nb\nc"), "line breaks as the parser sees them");
    }

    #[test]
    fn the_policy_allows_own_script_wasm_and_socket_only() {
        let csp = content_security_policy(&["'sha256-abc='".to_owned()], Some("127.0.0.1:8080"));
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        assert!(csp.contains("script-src 'self' 'wasm-unsafe-eval' 'sha256-abc=';"), "{csp}");
        assert!(csp.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");

        let bare = content_security_policy(&[], None);
        assert!(bare.contains("script-src 'self' 'wasm-unsafe-eval';"), "no inline script, no hash: {bare}");
        assert!(bare.contains("connect-src 'self';"), "{bare}");
        for odd in ["[::1]:8080", "a;b", "a b", "x:", "x:80;script-src *"] {
            let csp = content_security_policy(&[], Some(odd));
            assert!(csp.contains("connect-src 'self';"), "{odd}: {csp}");
        }
    }

    #[test]
    fn every_response_gets_the_headers_and_a_page_its_hashes() {
        /// Removes the test's directory, also when an assertion fails.
        struct Scratch(PathBuf);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let scratch = Scratch(std::env::temp_dir().join(format!("natter-headers-{}", std::process::id())));
        let dir = &scratch.0;
        std::fs::create_dir_all(dir).expect("create");
        let security = SecurityHeaders::new(dir);
        let mut plain = HeaderMap::new();
        security.apply(&mut plain, None);
        assert_eq!(plain.get(header::X_CONTENT_TYPE_OPTIONS).expect("set"), NOSNIFF);
        assert_eq!(plain.get(header::REFERRER_POLICY).expect("set"), NO_REFERRER);
        assert!(!plain.get(header::CONTENT_SECURITY_POLICY).expect("set").to_str().expect("ascii").contains("sha256"));

        // A page built while the server runs is picked up.
        std::fs::write(dir.join("index.html"), "<script>go()</script>").expect("write");
        let mut page = HeaderMap::new();
        page.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        security.apply(&mut page, Some("localhost:8080"));
        let csp = page.get(header::CONTENT_SECURITY_POLICY).expect("set").to_str().expect("ascii").to_owned();
        assert!(csp.contains(&hash_source("go()")), "{csp}");

        let mut own = HeaderMap::new();
        own.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'"));
        security.apply(&mut own, None);
        assert_eq!(own.get(header::CONTENT_SECURITY_POLICY).expect("kept"), "default-src 'none'");
    }
}
