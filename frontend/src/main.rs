//! The Natter chat page. Placeholder until the Leptos app lands (issue 3):
//! it already depends on the shared protocol so the wasm32 build is checked.

fn main() {
    // Touch the protocol so the wasm32 build compiles it for the browser.
    let _version = natter_shared::PROTOCOL_VERSION;
}
