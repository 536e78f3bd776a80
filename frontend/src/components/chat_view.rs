//! The chat: header, messages, members, typing line and composer.

use leptos::prelude::*;

use crate::chat_state::ChatState;
use crate::client::{Client, Status};
use crate::components::composer::Composer;
use crate::components::header::ChatHeader;
use crate::components::members::{MembersPanel, more_text};
use crate::components::message_list::MessageList;
use crate::components::typing::TypingLine;

/// The chat view for a joined client.
#[component]
pub fn ChatView(client: Client) -> impl IntoView {
    let members_open = RwSignal::new(false);
    let lines = Memo::new(move |_| client.chat.with(|c| c.lines()));
    let members = Memo::new(move |_| client.chat.with(|c| c.members.clone()));
    let more_members = Signal::derive(move || client.chat.with(|c| c.members_left_out().map(more_text)));
    // Opening the list (a button on narrow screens) asks for the next page of a big room's members.
    Effect::new(move |_| {
        if members_open.get() {
            untrack(|| client.load_members());
        }
    });
    let room = Signal::derive(move || client.chat.with(|c| c.room.as_ref().map(|r| r.to_string()).unwrap_or_default()));
    let me = Signal::derive(move || client.chat.with(|c| c.me.as_ref().map(|m| m.name.to_string())));
    let typing = Signal::derive(move || {
        let now = client.now.get();
        client.chat.with(|c| c.typing_names(now))
    });
    let blocked = Signal::derive(move || match client.status.get() {
        Status::Closed(reason) => Some(reason),
        Status::Idle => Some("Not connected.".to_owned()),
        _ => None,
    });
    let offline = Signal::derive(move || !matches!(client.status.get(), Status::Connected));

    view! {
        <div class="chat">
            <ChatHeader
                room=room
                member_count=Signal::derive(move || client.chat.with(ChatState::member_count))
                status=client.status
                now=client.now
                members_open=members_open
                on_retry_now=Callback::new(move |()| client.retry_now())
                on_leave=Callback::new(move |()| client.leave())
            />
            <div class="chat-body">
                <MessageList
                    lines=Signal::derive(move || lines.get())
                    on_retry=Callback::new(move |cid: String| client.retry(&cid))
                    on_discard=Callback::new(move |cid: String| client.discard(&cid))
                    can_load_older=Signal::derive(move || client.chat.with(|c| c.can_load_older()))
                    on_load_older=Callback::new(move |()| client.load_older())
                />
                <MembersPanel
                    members=Signal::derive(move || members.get())
                    me=me
                    open=members_open
                    more=more_members
                    can_load_more=Signal::derive(move || client.chat.with(ChatState::can_load_members))
                    on_load_more=Callback::new(move |()| client.load_members())
                />
            </div>
            <TypingLine names=typing />
            <Composer
                blocked=blocked
                offline=offline
                on_send=Callback::new(move |text: String| client.send(&text))
                on_typing=Callback::new(move |has_text: bool| client.typing(has_text))
            />
        </div>
    }
}
