//! "<name> is typing…"

use leptos::prelude::*;

/// The sentence for who is typing, or empty. Each name is bidi-isolated
/// (between U+2068 FIRST STRONG ISOLATE and U+2069 POP DIRECTIONAL ISOLATE,
/// the plain-text `<bdi>`), so two right-to-left names cannot swap places
/// around the comma, nor one reorder the words after it.
pub fn typing_sentence(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("\u{2068}{one}\u{2069} is typing…"),
        [a, b] => format!("\u{2068}{a}\u{2069} and \u{2068}{b}\u{2069} are typing…"),
        [a, b, rest @ ..] => format!("\u{2068}{a}\u{2069}, \u{2068}{b}\u{2069} and {} more are typing…", rest.len()),
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
        assert_eq!(typing_sentence(&["Ada".into()]), "\u{2068}Ada\u{2069} is typing…");
        assert_eq!(
            typing_sentence(&["Ada".into(), "Bob".into()]),
            "\u{2068}Ada\u{2069} and \u{2068}Bob\u{2069} are typing…"
        );
        let four: Vec<String> = ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect();
        assert_eq!(typing_sentence(&four), "\u{2068}A\u{2069}, \u{2068}B\u{2069} and 2 more are typing…");
    }
}
