//! "<name> is typing…"

use leptos::prelude::*;

/// The sentence for who is typing, or empty.
pub fn typing_sentence(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("{one} is typing…"),
        [a, b] => format!("{a} and {b} are typing…"),
        [a, b, rest @ ..] => format!("{a}, {b} and {} more are typing…", rest.len()),
    }
}

/// The typing line under the messages.
#[component]
pub fn TypingLine(#[prop(into)] names: Signal<Vec<String>>) -> impl IntoView {
    view! { <p class="typing" aria-live="polite">{move || names.with(|n| typing_sentence(n))}</p> }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences() {
        assert_eq!(typing_sentence(&[]), "");
        assert_eq!(typing_sentence(&["Ada".into()]), "Ada is typing…");
        assert_eq!(typing_sentence(&["Ada".into(), "Bob".into()]), "Ada and Bob are typing…");
        let four: Vec<String> = ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect();
        assert_eq!(typing_sentence(&four), "A, B and 2 more are typing…");
    }
}
