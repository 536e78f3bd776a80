//! AFL++ target: the client-message parser and validators (see `natter_fuzz::client_msg`).

fn main() {
    afl::fuzz!(|data: &[u8]| natter_fuzz::client_msg::check(data));
}
