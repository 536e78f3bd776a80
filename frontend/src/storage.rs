//! What the page remembers in the browser. `localStorage` (shared by the
//! browser's tabs): the last name and room, and each outbox. `sessionStorage`
//! (this tab only, survives a reload): whether this tab was in a chat, so a
//! reload rejoins at once. Resume tokens are never stored: they live in the
//! page's memory, so a duplicated tab cannot take this tab's session.

use web_sys::Storage;

use crate::chat_state::Pending;

const NAME: &str = "natter.name";
const ROOM: &str = "natter.room";
const ACTIVE: &str = "natter.active";

fn local() -> Option<Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

fn session() -> Option<Storage> {
    web_sys::window()?.session_storage().ok().flatten()
}

fn get(store: Option<Storage>, key: &str) -> Option<String> {
    store?.get_item(key).ok().flatten()
}

fn set(store: Option<Storage>, key: &str, value: &str) {
    if let Some(store) = store {
        // Full or disabled storage only costs the memory across reloads.
        if store.set_item(key, value).is_err() {
            web_sys::console::warn_1(&format!("natter: could not save {key}").into());
        }
    }
}

fn remove(store: Option<Storage>, key: &str) {
    if let Some(store) = store {
        let _ = store.remove_item(key);
    }
}

/// The name and room used last time.
pub fn last_join() -> (Option<String>, Option<String>) {
    (get(local(), NAME), get(local(), ROOM))
}

/// Remembers the name and room for next time.
pub fn remember_join(name: &str, room: &str) {
    set(local(), NAME, name);
    set(local(), ROOM, room);
}

fn outbox_key(room: &str, name_key: &str) -> String {
    format!("natter.outbox.{room}.{name_key}")
}

/// The unacknowledged messages saved for this room and name.
pub fn load_outbox(room: &str, name_key: &str) -> Vec<Pending> {
    get(local(), &outbox_key(room, name_key)).and_then(|json| serde_json::from_str(&json).ok()).unwrap_or_default()
}

/// Saves the outbox (removes the key when it is empty).
pub fn save_outbox(room: &str, name_key: &str, pending: &[Pending]) {
    let key = outbox_key(room, name_key);
    if pending.is_empty() {
        remove(local(), &key);
    } else if let Ok(json) = serde_json::to_string(pending) {
        set(local(), &key, &json);
    }
}

/// The chat this tab was in (name, room), to rejoin after a reload.
pub fn active() -> Option<(String, String)> {
    let value = get(session(), ACTIVE)?;
    let (room, name) = value.split_once('\n')?;
    Some((name.to_owned(), room.to_owned()))
}

/// Marks this tab as being in a chat, or (with `None`) not.
pub fn set_active(chat: Option<(&str, &str)>) {
    match chat {
        Some((name, room)) => set(session(), ACTIVE, &format!("{room}\n{name}")),
        None => remove(session(), ACTIVE),
    }
}
