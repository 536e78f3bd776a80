//! Who is in the room. A side panel on wide screens; collapsible on narrow ones.

use leptos::prelude::*;
use natter_shared::Member;

use crate::name_key::name_key;

/// The members list.
#[component]
pub fn MembersPanel(
    #[prop(into)] members: Signal<Vec<Member>>,
    #[prop(into)] me: Signal<Option<String>>,
    open: RwSignal<bool>,
) -> impl IntoView {
    view! {
        <aside id="members" class="members" class:open=move || open.get() aria-label="Members">
            <h2>"Members"</h2>
            <ul>
                <For
                    each=move || members.get()
                    key=|m| name_key(&m.name)
                    children=move |m| {
                        let is_me = me.with(|me| me.as_deref() == Some(m.name.as_str()));
                        view! {
                            <li style:color=m.color.0.clone() class="member">
                                {m.name.to_string()}
                                {is_me.then_some(" (you)")}
                            </li>
                        }
                    }
                />
            </ul>
        </aside>
    }
}
