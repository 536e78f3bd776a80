//! The join view: name and room, checked with the protocol's own rules, with
//! errors shown next to their field.

use leptos::prelude::*;
use natter_shared::limits::{NAME_MAX_CHARS, ROOM_MAX_CHARS};
use natter_shared::{RoomName, UserName};

use crate::client::{Field, JoinProblem};

/// Name and room form. `problem` is the server's refusal, if any.
#[component]
pub fn JoinForm(
    initial_name: String,
    initial_room: String,
    #[prop(into)] problem: Signal<Option<JoinProblem>>,
    /// True while a join is under way.
    #[prop(into)]
    busy: Signal<bool>,
    /// The connection state while joining ("Connecting…"), if any.
    #[prop(into)]
    note: Signal<Option<String>>,
    on_join: Callback<(UserName, RoomName)>,
) -> impl IntoView {
    let name = RwSignal::new(initial_name);
    let room = RwSignal::new(initial_room);
    let local = RwSignal::new(None::<JoinProblem>);
    // The latest problem wins: a local one when the user submits, the server's when it answers.
    Effect::new(move |_| {
        if problem.with(Option::is_some) {
            local.set(None);
        }
    });
    let shown =
        move |field: Field| local.get().or_else(|| problem.get()).filter(|p| p.field == field).map(|p| p.message);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let checked = UserName::parse(&name.get_untracked())
            .map_err(|e| JoinProblem { field: Field::Name, message: e.to_string() })
            .and_then(|n| {
                RoomName::parse(room.get_untracked().trim())
                    .map(|r| (n, r))
                    .map_err(|e| JoinProblem { field: Field::Room, message: e.to_string() })
            });
        match checked {
            Ok(joined) => {
                local.set(None);
                on_join.run(joined);
            }
            Err(problem) => local.set(Some(problem)),
        }
    };
    let name_error = move || shown(Field::Name);
    let room_error = move || shown(Field::Room);
    let form_error = move || shown(Field::Form);
    // Text children are `String`s, empty for none: every other child type (`Option<String>`,
    // `usize`) brings its own render code into the page (see docs/BENCHMARKS.md).

    view! {
        <form class="join" on:submit=submit novalidate>
            <h1>"Natter"</h1>
            <p class="lede">"Pick a name and a room to start chatting."</p>
            <label for="join-name">"Your name"</label>
            <input
                id="join-name"
                name="name"
                autocomplete="nickname"
                maxlength=NAME_MAX_CHARS * 2
                prop:value=move || name.get()
                on:input=move |ev| name.set(event_target_value(&ev))
                aria-invalid=move || name_error().is_some().to_string()
                aria-describedby="join-name-error"
                autofocus
            />
            <p id="join-name-error" class="field-error" role="alert">{move || name_error().unwrap_or_default()}</p>
            <label for="join-room">"Room"</label>
            <input
                id="join-room"
                name="room"
                autocomplete="off"
                maxlength=ROOM_MAX_CHARS
                prop:value=move || room.get()
                on:input=move |ev| room.set(event_target_value(&ev))
                aria-invalid=move || room_error().is_some().to_string()
                aria-describedby="join-room-error join-room-hint"
            />
            <p id="join-room-hint" class="hint">"Lowercase letters, digits and dashes."</p>
            <p id="join-room-error" class="field-error" role="alert">{move || room_error().unwrap_or_default()}</p>
            <p class="field-error" role="alert">{move || form_error().unwrap_or_default()}</p>
            <p class="join-status" role="status">{move || note.get().unwrap_or_default()}</p>
            <button type="submit" disabled=move || busy.get() && problem.with(Option::is_none)>
                "Join"
            </button>
        </form>
    }
}
