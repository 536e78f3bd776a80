//! Showing server timestamps in the reader's local time.

use natter_shared::Timestamp;

/// `HH:MM` in the browser's local time zone.
pub fn clock(ts: Timestamp) -> String {
    let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ts.0 as f64));
    format!("{:02}:{:02}", date.get_hours(), date.get_minutes())
}

/// An ISO 8601 UTC string for `<time datetime>`.
pub fn iso(ts: Timestamp) -> String {
    let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ts.0 as f64));
    date.to_iso_string().into()
}
