//! A name's case-insensitive key, as the server computes it.
//!
//! The server compares names by [`UserName::key`] (Unicode lowercase). In the
//! browser the page asks JavaScript's `toLowerCase`, which applies the same
//! Unicode mapping, instead of carrying Rust's case tables (~8 KB of the
//! gzipped bundle). Natively (the unit tests) it is `UserName::key` itself;
//! a browser test checks both agree on names that need more than ASCII.
//!
//! Limit: the two agree as far as the browser's Unicode version and Rust's
//! agree. A character whose case pair is newer than the browser's tables
//! would key differently; for such a name the page could miss an outbox an
//! older page version saved, or not recognise its own messages. The server
//! stays the judge of which names are the same.

use natter_shared::UserName;

/// The key that is equal for two names the server treats as the same.
pub fn name_key(name: &UserName) -> String {
    #[cfg(target_arch = "wasm32")]
    {
        text_key(name.as_str())
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        name.key()
    }
}

/// The same key for a name held as plain text (a `members` cursor).
pub fn text_key(name: &str) -> String {
    #[cfg(target_arch = "wasm32")]
    {
        String::from(js_sys::JsString::from(name).to_lower_case())
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        name.to_lowercase()
    }
}
