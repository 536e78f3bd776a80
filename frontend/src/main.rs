//! Mounts the Natter app into the page's body.

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(natter_frontend::App);
}
