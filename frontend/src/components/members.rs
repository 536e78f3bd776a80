//! Who is in the room. A side panel on wide screens; collapsible on narrow ones.
//! A big room lists its members a page at a time: "and N more" with a button
//! for the next page.

use leptos::prelude::*;
use natter_shared::Member;

use crate::name_key::name_key;

/// What the panel says under an incomplete list: "and 12 more", or nothing
/// when the count does not tell how many (the button still offers them).
pub fn more_text(left_out: u32) -> String {
    if left_out == 0 { String::new() } else { format!("and {left_out} more") }
}

/// The members list.
#[component]
pub fn MembersPanel(
    #[prop(into)] members: Signal<Vec<Member>>,
    #[prop(into)] me: Signal<Option<String>>,
    open: RwSignal<bool>,
    /// "and N more" while the list is incomplete, else `None`.
    #[prop(into)]
    more: Signal<Option<String>>,
    /// Whether the next page can be asked for now (none is under way).
    #[prop(into)]
    can_load_more: Signal<bool>,
    /// Asks for the next page of members.
    on_load_more: Callback<()>,
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
            <Show when=move || more.with(Option::is_some)>
                <p class="members-more">
                    <span>{move || more.get()}</span>
                    <button type="button" disabled=move || !can_load_more.get() on:click=move |_| on_load_more.run(())>
                        "Load more"
                    </button>
                </p>
            </Show>
        </aside>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_says_how_many_when_it_knows() {
        assert_eq!(more_text(1), "and 1 more");
        assert_eq!(more_text(1234), "and 1234 more");
        assert_eq!(more_text(0), "");
    }
}
