//! The chat header: room, member count, connection status, and actions.

use leptos::prelude::*;

use crate::client::Status;

/// The status as a short sentence.
pub fn status_text(status: &Status, now_ms: f64) -> String {
    match status {
        Status::Idle => "Not connected".to_owned(),
        Status::Connecting => "Connecting…".to_owned(),
        Status::Connected => "Connected".to_owned(),
        Status::Reconnecting { at_ms } => {
            let secs = ((at_ms - now_ms) / 1000.0).ceil().max(0.0) as u64;
            if secs == 0 { "Reconnecting…".to_owned() } else { format!("Reconnecting in {secs} s") }
        }
        Status::Closed(reason) => format!("Disconnected: {reason}"),
    }
}

/// Header of the chat view.
#[component]
pub fn ChatHeader(
    #[prop(into)] room: Signal<String>,
    #[prop(into)] member_count: Signal<usize>,
    #[prop(into)] status: Signal<Status>,
    #[prop(into)] now: Signal<f64>,
    members_open: RwSignal<bool>,
    on_retry_now: Callback<()>,
    on_leave: Callback<()>,
) -> impl IntoView {
    // A memo, as `<Show>` kept one: the button is built when reconnecting starts, not at every tick.
    let reconnecting = Memo::new(move |_| matches!(status.get(), Status::Reconnecting { .. }));
    let state_class = move || match status.get() {
        Status::Connected => "status status-ok",
        Status::Connecting | Status::Reconnecting { .. } => "status status-wait",
        Status::Idle | Status::Closed(_) => "status status-down",
    };
    let count = move || match member_count.get() {
        1 => "1 member".to_owned(),
        n => format!("{n} members"),
    };
    view! {
        <header class="chat-header">
            <h1 class="room-name">"#" {move || room.get()}</h1>
            <span class="member-count">{count}</span>
            <span class=state_class role="status">
                {move || status_text(&status.get(), now.get())}
            </span>
            {move || {
                reconnecting.get().then(|| view! {
                    <button type="button" class="retry-now" on:click=move |_| on_retry_now.run(())>
                        "Retry now"
                    </button>
                })
            }}
            <span class="spacer"></span>
            <button
                type="button"
                class="members-toggle"
                aria-controls="members"
                aria-expanded=move || members_open.get().to_string()
                on:click=move |_| members_open.update(|o| *o = !*o)
            >
                "Members"
            </button>
            <button type="button" class="leave" on:click=move |_| on_leave.run(())>
                "Leave"
            </button>
        </header>
    }
}
