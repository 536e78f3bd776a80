//! AFL++ target: the WebSocket frame decoder (see `natter_fuzz::decoder`).

fn main() {
    afl::fuzz!(|data: &[u8]| natter_fuzz::decoder::check(data));
}
