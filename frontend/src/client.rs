//! The socket client: the one place that owns the `WebSocket`. Components see
//! only its signals (`chat`, `status`, `phase`, `now`) and call its methods.
//!
//! It joins with `hello`, resumes with `last_seq` and the resume token after
//! any drop, reconnects with exponential backoff and full jitter (at once when
//! the tab becomes visible or the network comes back), keeps an outbox that
//! survives reloads, asks for older messages and a big room's members a page
//! at a time, and closes cleanly on `pagehide` so the room sees "left" at once.

use std::time::Duration;

use leptos::prelude::*;
use natter_shared::{
    ClientMsg, ErrorCode, Hello, MembersRequest, RoomName, ServerMsg, Typing, UserName, close,
    limits::{MEMBERS_PAGE_MAX, TYPING_REFRESH_MS},
};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::backoff;
use crate::chat_state::ChatState;
use crate::location;
use crate::name_key::name_key;
use crate::storage;

/// After this long without a keystroke, the client says it stopped typing.
pub const TYPING_IDLE: Duration = Duration::from_millis(4_000);
/// How often the clock signal ticks (countdowns, typing expiry).
pub const TICK: Duration = Duration::from_millis(1_000);
/// Most of the user's messages sent and not yet acknowledged; more are sent
/// as acks arrive (keeps a long outbox within the server's rate limit).
pub const OUTBOX_WINDOW: usize = 5;
/// Ping the server after this long without hearing from it.
pub const IDLE_PING_MS: f64 = 25_000.0;
/// A ping unanswered for this long means the connection is dead.
pub const PONG_WAIT_MS: f64 = 5_000.0;
/// A connection attempt still not open after this long is abandoned.
pub const CONNECT_TIMEOUT_MS: f64 = 10_000.0;
/// Events asked for per "load older messages".
pub const OLDER_PAGE: u32 = 50;
/// Wait before resending messages the server refused as `rate_limited`.
pub const RATE_LIMIT_RETRY: Duration = Duration::from_millis(1_500);

/// The connection as the user sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not connected and not trying (before joining, or after leaving).
    Idle,
    Connecting,
    Connected,
    /// Waiting to reconnect; the next attempt is at `at_ms` (page clock).
    Reconnecting {
        at_ms: f64,
    },
    /// Stopped for good, with the reason to show.
    Closed(String),
}

/// Which join field an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Name,
    Room,
    Form,
}

/// A reason the join view shows next to a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinProblem {
    pub field: Field,
    pub message: String,
}

/// Which view the page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Join(Option<JoinProblem>),
    Chat,
}

/// An open socket and the callbacks it calls (kept alive with it).
struct Socket {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Socket {
    /// Detaches the callbacks and closes the socket with `code`.
    fn shut(&self, code: u16, reason: &str) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close_with_code_and_reason(code, reason);
    }
}

#[derive(Default)]
struct Inner {
    url: String,
    socket: Option<Socket>,
    /// A socket retired from inside its own callback; dropped on the next
    /// connect, never while its callback runs.
    retired: Option<Socket>,
    /// This socket received its `welcome`.
    welcomed: bool,
    attempt: u32,
    retry: Option<TimeoutHandle>,
    typing_since: Option<f64>,
    typing_idle: Option<TimeoutHandle>,
    /// When the current socket was opened (connect attempt) and when it last
    /// received anything, and when a liveness `ping` went out unanswered.
    opened_at: f64,
    heard_at: f64,
    ping_sent: Option<f64>,
}

impl Inner {
    /// Takes the socket out, detaches its callbacks, closes it with `code`
    /// and parks it in `retired` (this may run inside one of its callbacks).
    fn retire_socket(&mut self, code: u16, reason: &str) {
        if let Some(socket) = self.socket.take() {
            socket.shut(code, reason);
            self.retired = Some(socket);
        }
    }
}

/// The chat client. `Copy`: every field is a reactive handle.
#[derive(Clone, Copy)]
pub struct Client {
    pub chat: RwSignal<ChatState>,
    pub status: RwSignal<Status>,
    pub phase: RwSignal<Phase>,
    /// Who and where we join: set by [`Client::join`].
    pub target: RwSignal<Option<(UserName, RoomName)>>,
    /// The page clock (ms since the epoch), ticking every second.
    pub now: RwSignal<f64>,
    inner: StoredValue<Inner, LocalStorage>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("status", &self.status.get_untracked()).finish_non_exhaustive()
    }
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// A fresh client message id: time plus randomness, unique per browser.
pub fn new_cid() -> String {
    let random = (js_sys::Math::random() * 1e12) as u64;
    format!("{:x}-{:x}", now_ms() as u64, random)
}

impl Client {
    /// A client for the server at `url` (see [`server_url`]); not connected yet.
    pub fn new(url: String) -> Self {
        let client = Self {
            chat: RwSignal::new(ChatState::default()),
            status: RwSignal::new(Status::Idle),
            phase: RwSignal::new(Phase::Join(None)),
            target: RwSignal::new(None),
            now: RwSignal::new(now_ms()),
            inner: StoredValue::new_local(Inner { url, ..Inner::default() }),
        };
        let ticker = set_interval_with_handle(
            move || {
                client.now.set(now_ms());
                if client.chat.with_untracked(ChatState::has_typing) {
                    client.chat.update(|c| c.expire_typing(now_ms()));
                }
                client.watchdog();
            },
            TICK,
        );
        if let Ok(handle) = ticker {
            on_cleanup(move || handle.clear());
        }
        // The outbox survives reloads: save it whenever it changes.
        let outbox = Memo::new(move |_| client.chat.with(|c| c.pending().to_vec()));
        Effect::new(move |_| {
            let pending = outbox.get();
            if let Some((name, room)) = client.target.get_untracked() {
                storage::save_outbox(room.as_str(), &name_key(&name), &pending);
            }
        });
        client
    }

    /// Joins `room` as `name`: loads this name's saved outbox and connects.
    pub fn join(self, name: UserName, room: RoomName) {
        let outbox = storage::load_outbox(room.as_str(), &name_key(&name));
        self.chat.set(ChatState::with_outbox(outbox));
        self.target.set(Some((name, room)));
        if self.phase.get_untracked() != Phase::Chat {
            self.phase.set(Phase::Join(None));
        }
        self.inner.update_value(|i| i.attempt = 0);
        self.connect();
    }

    /// Leaves the room on purpose: others see "left" at once.
    pub fn leave(self) {
        self.shut(close::NORMAL, "left");
        storage::set_active(None);
        self.target.set(None);
        self.status.set(Status::Idle);
        self.phase.set(Phase::Join(None));
    }

    /// Connects now, cancelling a scheduled retry.
    pub fn retry_now(self) {
        if matches!(self.status.get_untracked(), Status::Reconnecting { .. }) {
            self.connect();
        }
    }

    /// Queues a message and sends it when connected. Returns the refusal
    /// reason if the text breaks the protocol's rules.
    pub fn send(self, text: &str) -> Result<(), String> {
        let mut result = Ok(());
        self.chat.update(|c| result = c.queue(new_cid(), text).map_err(|e| e.to_string()));
        result?;
        self.stop_typing();
        self.flush();
        Ok(())
    }

    /// Sends a failed message again.
    pub fn retry(self, cid: &str) {
        self.chat.update(|c| c.retry(cid));
        self.flush();
    }

    /// Asks the server for a page of older messages.
    pub fn load_older(self) {
        let mut before = None;
        self.chat.update(|c| before = c.begin_older());
        if let Some(before) = before {
            let request = natter_shared::HistoryRequest { before, limit: OLDER_PAGE };
            if !self.send_msg(&ClientMsg::History(request)) {
                // Not connected: let the button be pressed again later.
                self.chat.update(ChatState::older_request_failed);
            }
        }
    }

    /// Asks the server for the next page of a big room's members, unless
    /// the list is complete or a page is on its way.
    pub fn load_members(self) {
        if !self.chat.with_untracked(ChatState::can_load_members) {
            return;
        }
        let mut after = None;
        self.chat.update(|c| after = c.begin_members());
        if let Some(after) = after {
            let request = MembersRequest { after, limit: MEMBERS_PAGE_MAX };
            if !self.send_msg(&ClientMsg::Members(request)) {
                // Not connected: let it be asked for again later.
                self.chat.update(ChatState::members_request_failed);
            }
        }
    }

    /// Gives up on a failed message.
    pub fn discard(self, cid: &str) {
        self.chat.update(|c| c.discard(cid));
    }

    /// The user typed: tells the room (at most every few seconds), and that
    /// typing stopped after a pause.
    pub fn typing(self, has_text: bool) {
        if !has_text {
            return self.stop_typing();
        }
        let now = now_ms();
        let refresh =
            self.inner.with_value(|i| i.typing_since.is_none_or(|since| now - since >= TYPING_REFRESH_MS as f64));
        if refresh && self.send_msg(&ClientMsg::Typing(Typing { active: true })) {
            self.inner.update_value(|i| i.typing_since = Some(now));
        }
        let idle = set_timeout_with_handle(move || self.stop_typing(), TYPING_IDLE).ok();
        self.inner.update_value(|i| {
            if let Some(old) = std::mem::replace(&mut i.typing_idle, idle) {
                old.clear();
            }
        });
    }

    fn stop_typing(self) {
        let was = self.inner.try_update_value(|i| {
            if let Some(t) = i.typing_idle.take() {
                t.clear();
            }
            i.typing_since.take().is_some()
        });
        if was == Some(true) {
            self.send_msg(&ClientMsg::Typing(Typing { active: false }));
        }
    }

    /// The page became hidden or visible.
    pub fn visibility_changed(self, hidden: bool) {
        self.chat.update(|c| c.set_hidden(hidden));
        if !hidden {
            self.check_now();
        }
    }

    /// The browser is online again.
    pub fn online(self) {
        self.check_now();
    }

    /// Reconnects at once if waiting to, or checks that an open connection
    /// still works (after a sleep or a network change it may be dead).
    fn check_now(self) {
        match self.status.get_untracked() {
            Status::Reconnecting { .. } => self.retry_now(),
            Status::Connected => self.ping(),
            _ => {}
        }
    }

    fn ping(self) {
        if self.inner.with_value(|i| i.ping_sent.is_none()) && self.send_msg(&ClientMsg::Ping) {
            self.inner.update_value(|i| i.ping_sent = Some(now_ms()));
        }
    }

    /// Runs every tick: pings an idle connection, and gives up on one that
    /// does not answer or does not open, reconnecting (and resuming) at once.
    fn watchdog(self) {
        let now = now_ms();
        let (opened_at, heard_at, ping_sent) = self.inner.with_value(|i| (i.opened_at, i.heard_at, i.ping_sent));
        match self.status.get_untracked() {
            Status::Connecting if now - opened_at > CONNECT_TIMEOUT_MS => self.abandon(),
            Status::Connected => match ping_sent {
                Some(sent) if now - sent > PONG_WAIT_MS => self.abandon(),
                None if now - heard_at > IDLE_PING_MS => self.ping(),
                _ => {}
            },
            _ => {}
        }
    }

    /// Drops a connection believed dead and connects again at once. The close
    /// code tells the server this is not a leave, so nobody sees one.
    fn abandon(self) {
        web_sys::console::info_1(&"natter: connection not answering; reconnecting".into());
        self.inner.update_value(|i| {
            i.retire_socket(close::CLIENT_RECONNECTING, "reconnecting");
            i.typing_since = None;
        });
        self.chat.update(|c| c.disconnected());
        self.connect();
    }

    /// The page is going away (closed, reloaded or put in the back/forward cache).
    pub fn page_hidden(self) {
        // Scripts may only close with 1000 or 3000–4999: a normal close.
        self.shut(close::NORMAL, "page closed");
    }

    /// The page came back from the back/forward cache.
    pub fn page_shown(self) {
        if self.target.get_untracked().is_some() && self.inner.with_value(|i| i.socket.is_none()) {
            self.inner.update_value(|i| i.attempt = 0);
            self.connect();
        }
    }

    /// Closes the socket on purpose (no reconnect).
    fn shut(self, code: u16, reason: &str) {
        self.stop_typing();
        self.inner.update_value(|i| {
            if let Some(t) = i.retry.take() {
                t.clear();
            }
            i.retire_socket(code, reason);
        });
        self.chat.update(|c| c.disconnected());
    }

    fn connect(self) {
        let Some((name, room)) = self.target.get_untracked() else {
            return;
        };
        let url = self.inner.with_value(|i| i.url.clone());
        self.inner.update_value(|i| {
            if let Some(t) = i.retry.take() {
                t.clear();
            }
            i.retire_socket(close::NORMAL, "reconnecting");
            // No callback of an old socket runs now: drop them.
            i.retired = None;
            i.welcomed = false;
        });
        let ws = match WebSocket::new(&url) {
            Ok(ws) => ws,
            Err(e) => {
                let reason = e.as_string().unwrap_or_else(|| format!("cannot open {url}"));
                self.status.set(Status::Closed(reason));
                return;
            }
        };
        self.status.set(Status::Connecting);
        self.inner.update_value(|i| {
            i.opened_at = now_ms();
            i.heard_at = now_ms();
            i.ping_sent = None;
        });
        let on_open = Closure::<dyn FnMut()>::new(move || self.opened(&name, &room));
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            if let Some(text) = e.data().as_string() {
                self.received(&text);
            }
        });
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| self.closed(e.code(), &e.reason()));
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let socket = Socket { ws, _on_open: on_open, _on_message: on_message, _on_close: on_close };
        self.inner.update_value(|i| i.socket = Some(socket));
    }

    fn opened(self, name: &UserName, room: &RoomName) {
        // Resume only with a history in memory; a fresh page gets the recent one.
        let last_seq = self.chat.with_untracked(|c| c.me.as_ref().and(c.last_seq));
        // The token lives only in this page's memory: a reload is a new page
        // (its pagehide already said "left"), and a duplicated tab must not
        // take this tab's session.
        let token = self.chat.with_untracked(|c| c.resume_token.as_ref().map(|t| t.as_str().to_owned()));
        let hello = Hello {
            last_seq,
            resume_token: token,
            history_id: self.chat.with_untracked(|c| c.history_id.clone()),
            ..Hello::new(name.as_str(), room.as_str())
        };
        self.send_msg(&ClientMsg::Hello(hello));
    }

    fn received(self, text: &str) {
        self.inner.update_value(|i| {
            i.heard_at = now_ms();
            i.ping_sent = None;
        });
        let msg = match ServerMsg::from_json(text) {
            Ok(msg) => msg,
            Err(e) => {
                web_sys::console::error_1(&format!("natter: unreadable server message: {e}").into());
                return;
            }
        };
        let welcomed = self.inner.with_value(|i| i.welcomed);
        match msg {
            ServerMsg::Welcome(w) => {
                let (room, name) = (w.room.clone(), w.you.name.clone());
                self.chat.update(|c| c.apply(ServerMsg::Welcome(w), now_ms()));
                self.inner.update_value(|i| {
                    i.welcomed = true;
                    i.attempt = 0;
                });
                storage::remember_join(name.as_str(), room.as_str());
                storage::set_active(Some((name.as_str(), room.as_str())));
                if let Some(window) = web_sys::window() {
                    let _ = window.location().set_hash(&location::room_hash(&room)[1..]);
                }
                self.status.set(Status::Connected);
                self.phase.set(Phase::Join(None)); // clears a stale problem
                self.phase.set(Phase::Chat);
                self.flush();
            }
            ServerMsg::Error(e) if e.cid.is_none() && !welcomed => self.join_refused(e.code, e.message),
            ServerMsg::Error(e)
                if matches!(e.code, ErrorCode::RateLimited | ErrorCode::StorageUnavailable) && e.cid.is_some() =>
            {
                self.chat.update(|c| c.apply(ServerMsg::Error(e), now_ms()));
                let _ = set_timeout_with_handle(move || self.flush(), RATE_LIMIT_RETRY);
            }
            ServerMsg::Ack(ack) => {
                self.chat.update(|c| c.apply(ServerMsg::Ack(ack), now_ms()));
                // One fewer in flight: send the next of the outbox.
                self.flush();
            }
            other => self.chat.update(|c| c.apply(other, now_ms())),
        }
    }

    fn join_refused(self, code: ErrorCode, message: String) {
        let field = match code {
            ErrorCode::NameTaken | ErrorCode::InvalidName | ErrorCode::NameTooLong => Field::Name,
            ErrorCode::InvalidRoom | ErrorCode::TooManyRooms | ErrorCode::RoomFull => Field::Room,
            ErrorCode::RateLimited | ErrorCode::Internal => {
                // Transient: try the join again after a pause.
                self.retire_and_reconnect();
                return;
            }
            _ => Field::Form,
        };
        self.shut(close::NORMAL, "join refused");
        storage::set_active(None);
        self.status.set(Status::Idle);
        self.phase.set(Phase::Join(Some(JoinProblem { field, message })));
    }

    fn closed(self, code: u16, reason: &str) {
        self.inner.update_value(|i| {
            i.retire_socket(close::NORMAL, "");
            i.typing_since = None;
        });
        self.chat.update(|c| c.disconnected());
        match code {
            close::REPLACED => {
                self.status.set(Status::Closed("This chat is open in another tab or window.".into()));
            }
            _ => {
                if !reason.is_empty() {
                    web_sys::console::info_1(&format!("natter: connection closed ({code}: {reason})").into());
                }
                self.schedule_reconnect();
            }
        }
    }

    fn retire_and_reconnect(self) {
        self.inner.update_value(|i| i.retire_socket(close::NORMAL, ""));
        self.chat.update(|c| c.disconnected());
        self.schedule_reconnect();
    }

    fn schedule_reconnect(self) {
        let attempt = self.inner.with_value(|i| i.attempt);
        let delay = backoff::delay_ms(attempt, js_sys::Math::random());
        let handle = set_timeout_with_handle(move || self.connect(), Duration::from_millis(delay as u64)).ok();
        self.inner.update_value(|i| {
            i.attempt = i.attempt.saturating_add(1);
            if let Some(old) = std::mem::replace(&mut i.retry, handle) {
                old.clear();
            }
        });
        self.status.set(Status::Reconnecting { at_ms: now_ms() + delay });
    }

    /// Sends every waiting message, if joined.
    fn flush(self) {
        let ready = self
            .inner
            .with_value(|i| i.welcomed && i.socket.as_ref().is_some_and(|s| s.ws.ready_state() == WebSocket::OPEN));
        if !ready {
            return;
        }
        let mut outgoing = Vec::new();
        self.chat.update(|c| outgoing = c.take_outgoing(OUTBOX_WINDOW));
        for say in outgoing {
            self.send_msg(&ClientMsg::Say(say));
        }
    }

    fn send_msg(self, msg: &ClientMsg) -> bool {
        let Ok(json) = serde_json::to_string(msg) else {
            return false;
        };
        self.inner.with_value(|i| {
            i.socket
                .as_ref()
                .filter(|s| s.ws.ready_state() == WebSocket::OPEN)
                .is_some_and(|s| s.ws.send_with_str(&json).is_ok())
        })
    }

    /// Installs the page-lifecycle listeners (visibility, network, pagehide).
    pub fn watch_page(self) {
        let Some(window) = web_sys::window() else {
            return;
        };
        let document = window.document();
        let on_visibility = Closure::<dyn FnMut()>::new(move || {
            let hidden = web_sys::window().and_then(|w| w.document()).is_some_and(|d| d.hidden());
            self.visibility_changed(hidden);
        });
        if let Some(document) = &document {
            let _ =
                document.add_event_listener_with_callback("visibilitychange", on_visibility.as_ref().unchecked_ref());
            self.chat.update(|c| c.set_hidden(document.hidden()));
        }
        let on_online = Closure::<dyn FnMut()>::new(move || self.online());
        let on_pagehide = Closure::<dyn FnMut()>::new(move || self.page_hidden());
        let on_pageshow = Closure::<dyn FnMut()>::new(move || self.page_shown());
        let _ = window.add_event_listener_with_callback("online", on_online.as_ref().unchecked_ref());
        let _ = window.add_event_listener_with_callback("pagehide", on_pagehide.as_ref().unchecked_ref());
        let _ = window.add_event_listener_with_callback("pageshow", on_pageshow.as_ref().unchecked_ref());
        // These live as long as the page.
        on_visibility.forget();
        on_online.forget();
        on_pagehide.forget();
        on_pageshow.forget();
    }
}

/// The WebSocket URL for this page: the `<meta name="natter-server">` content
/// if the deployment set one, else `/ws` on the page's own host.
pub fn server_url() -> String {
    let window = web_sys::window();
    let configured = window
        .as_ref()
        .and_then(|w| w.document())
        .and_then(|d| d.query_selector("meta[name=natter-server]").ok().flatten())
        .and_then(|m| m.get_attribute("content"));
    let (protocol, host) = window
        .map(|w| w.location())
        .map(|l| (l.protocol().unwrap_or_default(), l.host().unwrap_or_default()))
        .unwrap_or_default();
    location::ws_url(configured.as_deref(), &protocol, &host)
}
