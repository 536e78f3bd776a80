//! Reading the page's address: which room the URL names, and where the
//! WebSocket server is.

use natter_shared::RoomName;

/// The room named by the URL: `#/r/<room>` or `?room=<room>`, if valid.
pub fn room_from_url(hash: &str, search: &str) -> Option<RoomName> {
    let from_hash = hash.strip_prefix("#/r/").map(|r| r.trim_end_matches('/'));
    let from_query = search.trim_start_matches('?').split('&').find_map(|pair| pair.strip_prefix("room="));
    from_hash.or(from_query).and_then(|r| RoomName::parse(r).ok())
}

/// The fragment that names a room, for sharing: `#/r/lobby`.
pub fn room_hash(room: &RoomName) -> String {
    format!("#/r/{room}")
}

/// The WebSocket URL. `configured` is the `natter-server` meta tag's content,
/// if any: a `ws(s)://` URL is used as is, an `http(s)://` one is converted
/// and gets `/ws` if it has no path. Otherwise `/ws` on the page's own host,
/// `wss:` when the page is served over https.
pub fn ws_url(configured: Option<&str>, page_protocol: &str, page_host: &str) -> String {
    if let Some(server) = configured.map(str::trim).filter(|s| !s.is_empty()) {
        let converted = if let Some(rest) = server.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = server.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            server.to_owned()
        };
        // Not `split_once("://")`: a substring search brings core's two-way
        // searcher into the page (846 bytes gzipped) for this line alone.
        let after_scheme =
            converted.as_bytes().windows(3).position(|w| w == b"://").map_or("", |i| &converted[i + 3..]);
        return if after_scheme.contains('/') { converted } else { format!("{converted}/ws") };
    }
    let scheme = if page_protocol == "https:" { "wss" } else { "ws" };
    format!("{scheme}://{page_host}/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_come_from_the_hash_or_the_query() {
        assert_eq!(room_from_url("#/r/dev-team", ""), RoomName::parse("dev-team").ok());
        assert_eq!(room_from_url("", "?room=ops"), RoomName::parse("ops").ok());
        assert_eq!(room_from_url("", "?x=1&room=ops"), RoomName::parse("ops").ok());
        assert_eq!(room_from_url("#/r/a", "?room=b"), RoomName::parse("a").ok(), "the hash wins");
        assert_eq!(room_from_url("#/r/Not Valid", ""), None);
        assert_eq!(room_from_url("#top", ""), None);
        assert_eq!(room_hash(&RoomName::default()), "#/r/lobby");
    }

    #[test]
    fn the_socket_follows_the_page_unless_configured() {
        assert_eq!(ws_url(None, "http:", "127.0.0.1:8080"), "ws://127.0.0.1:8080/ws");
        assert_eq!(ws_url(None, "https:", "chat.example.com"), "wss://chat.example.com/ws");
        assert_eq!(ws_url(Some(""), "https:", "a.example"), "wss://a.example/ws");
        assert_eq!(ws_url(Some("https://api.example.com"), "http:", "x"), "wss://api.example.com/ws");
        assert_eq!(ws_url(Some("wss://api.example.com/chat/ws"), "http:", "x"), "wss://api.example.com/chat/ws");
        assert_eq!(ws_url(Some("http://10.0.0.5:8080"), "http:", "x"), "ws://10.0.0.5:8080/ws");
    }
}
