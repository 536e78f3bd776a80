//! The Natter chat page. Placeholder until the Leptos app lands (issue 3):
//! it says so in the page, and already builds with trunk and wasm-bindgen.

use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console)]
    fn log(text: &str);
}

fn main() {
    log(&format!(
        "Natter page placeholder (protocol v{})",
        natter_shared::PROTOCOL_VERSION
    ));
}
