//! Helpers for the browser tests: a fresh container to mount into, DOM
//! queries, events, and waiting on the page's own clock.

#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{Element, HtmlElement};

/// How long a test waits for something to appear.
pub const WAIT: Duration = Duration::from_secs(10);

/// A new empty `<section>` in the body.
pub fn container() -> HtmlElement {
    let document = web_sys::window().and_then(|w| w.document()).expect("a document");
    let section = document.create_element("section").expect("create section");
    document.body().expect("a body").append_child(&section).expect("append");
    section.unchecked_into()
}

pub fn find(root: &Element, css: &str) -> Option<Element> {
    root.query_selector(css).expect("valid selector")
}

pub fn get(root: &Element, css: &str) -> Element {
    find(root, css).unwrap_or_else(|| panic!("no {css} in {}", root.inner_html()))
}

pub fn text(root: &Element, css: &str) -> String {
    get(root, css).text_content().unwrap_or_default()
}

pub fn count(root: &Element, css: &str) -> u32 {
    root.query_selector_all(css).expect("valid selector").length()
}

/// Sets a field's value and fires `input`, as typing does.
pub fn type_into(root: &Element, css: &str, value: &str) {
    let el = get(root, css);
    js_sys::Reflect::set(&el, &"value".into(), &value.into()).expect("set value");
    let init = web_sys::EventInit::new();
    init.set_bubbles(true);
    let event = web_sys::Event::new_with_event_init_dict("input", &init).expect("event");
    el.dispatch_event(&event).expect("dispatch");
}

/// Presses a key on an element.
pub fn key(root: &Element, css: &str, key: &str, shift: bool) -> bool {
    let init = web_sys::KeyboardEventInit::new();
    init.set_key(key);
    init.set_shift_key(shift);
    init.set_bubbles(true);
    init.set_cancelable(true);
    let event = web_sys::KeyboardEvent::new_with_keyboard_event_init_dict("keydown", &init).expect("event");
    get(root, css).dispatch_event(&event).expect("dispatch")
}

pub fn click(root: &Element, css: &str) {
    get(root, css).unchecked_into::<HtmlElement>().click();
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(callback: &js_sys::Function, ms: i32);
}

/// Waits `ms` milliseconds of real time.
pub async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| set_timeout(&resolve, ms));
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// Polls `check` until it is true; panics with `what` after [`WAIT`].
pub async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = js_sys::Date::now() + WAIT.as_millis() as f64;
    while !check() {
        assert!(js_sys::Date::now() < deadline, "timed out waiting for {what}");
        sleep(20).await;
    }
}
