//! The composer: a text box with a live character counter, Enter to send,
//! Shift+Enter for a new line, and a visible reason when it cannot send.

use leptos::html::Textarea;
use leptos::prelude::*;
use natter_shared::limits::MESSAGE_MAX_CHARS;

/// Why the current text cannot be sent, if it cannot.
pub fn text_problem(text: &str) -> Option<String> {
    let count = text.chars().count();
    if count > MESSAGE_MAX_CHARS { Some(format!("{} characters too long", count - MESSAGE_MAX_CHARS)) } else { None }
}

/// The message box.
#[component]
pub fn Composer(
    /// Set when sending is impossible (e.g. the connection was closed for good).
    #[prop(into)]
    blocked: Signal<Option<String>>,
    /// True while not connected: messages are queued and sent on reconnect.
    #[prop(into)]
    offline: Signal<bool>,
    /// Sends a message; returns why it was refused, if it was.
    on_send: Callback<String, Result<(), String>>,
    /// Called on every edit with whether there is text.
    on_typing: Callback<bool>,
) -> impl IntoView {
    let text = RwSignal::new(String::new());
    let refused = RwSignal::new(None::<String>);
    let input = NodeRef::<Textarea>::new();
    let count = move || text.with(|t| t.chars().count());
    let problem = move || blocked.get().or_else(|| refused.get()).or_else(|| text.with(|t| text_problem(t)));
    let cannot_send =
        move || blocked.with(Option::is_some) || text.with(|t| t.trim().is_empty() || text_problem(t).is_some());

    let send = move || {
        if cannot_send() {
            return;
        }
        match on_send.run(text.get_untracked()) {
            Ok(()) => {
                text.set(String::new());
                refused.set(None);
            }
            Err(reason) => refused.set(Some(reason)),
        }
        if let Some(el) = input.get_untracked() {
            let _ = el.focus();
        }
    };
    let on_keydown = move |ev: leptos::ev::KeyboardEvent| {
        if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
            ev.prevent_default();
            send();
        }
    };
    // Text children are `String`s, empty for none: every other child type (`Option<String>`,
    // `usize`) brings its own render code into the page (see docs/BENCHMARKS.md).
    let on_input = move |ev: leptos::ev::Event| {
        let value = event_target_value(&ev);
        let has_text = !value.trim().is_empty();
        text.set(value);
        refused.set(None);
        on_typing.run(has_text);
    };

    view! {
        <form class="composer" on:submit=move |ev| { ev.prevent_default(); send(); }>
            <label for="composer-text" class="visually-hidden">"Message"</label>
            <textarea
                id="composer-text"
                node_ref=input
                rows="2"
                placeholder="Write a message — Enter to send, Shift+Enter for a new line"
                prop:value=move || text.get()
                on:input=on_input
                on:keydown=on_keydown
                disabled=move || blocked.with(Option::is_some)
                aria-describedby="composer-count composer-problem"
            ></textarea>
            <div class="composer-side">
                <span id="composer-count" class="counter" class:over=move || { count() > MESSAGE_MAX_CHARS }>
                    {move || count().to_string()} " / " {MESSAGE_MAX_CHARS.to_string()}
                </span>
                <button type="submit" disabled=cannot_send>"Send"</button>
            </div>
            <p id="composer-problem" class="composer-problem" role="status">
                {move || problem().or_else(|| offline.get().then(|| "Offline: messages are sent when the connection is back.".to_owned())).unwrap_or_default()}
            </p>
        </form>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_says_by_how_much() {
        assert_eq!(text_problem("hi"), None);
        assert_eq!(text_problem(&"é".repeat(MESSAGE_MAX_CHARS)), None);
        assert_eq!(text_problem(&"é".repeat(MESSAGE_MAX_CHARS + 3)), Some("3 characters too long".into()));
    }
}
