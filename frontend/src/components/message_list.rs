//! The message list: a polite live log, kept at the bottom only when the
//! reader is there, with a "N new messages" button otherwise.

use leptos::either::EitherOf6;
use leptos::html::Ol;
use leptos::prelude::*;
use natter_shared::{Member, NoticeKind};

use crate::chat_state::{Entry, Line, Pending, SendStatus};
use crate::follow::Follow;
use crate::time::{clock, iso};

/// What a system notice says happened.
pub fn notice_verb(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::Joined => "joined",
        NoticeKind::Left => "left",
        NoticeKind::TimedOut => "timed out",
    }
}

/// The class of a notice or presence line of `kind`.
fn notice_class(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::Joined => "notice notice-joined",
        NoticeKind::Left => "notice notice-left",
        NoticeKind::TimedOut => "notice notice-timed-out",
    }
}

/// A presence line: "Ada joined", "Ada and Bo left", "Ada, Bo and 12 others
/// joined", "3 people timed out". Each name is bidi-isolated, as in the
/// typing line.
pub fn presence_sentence(kind: NoticeKind, who: &[Member], more: u32) -> String {
    let mut s = String::new();
    // Where " and " goes instead of ", ": before the last name, or after it when others follow.
    let and_at = if more == 0 { who.len().saturating_sub(1) } else { who.len() };
    for (i, m) in who.iter().enumerate() {
        if i > 0 {
            s.push_str(if i == and_at { " and " } else { ", " });
        }
        s.push('\u{2068}');
        s.push_str(m.name.as_str());
        s.push('\u{2069}');
    }
    if more > 0 {
        if !who.is_empty() {
            s.push_str(" and ");
        }
        s.push_str(&more.to_string());
        s.push_str(match (who.is_empty(), more) {
            (false, 1) => " other",
            (false, _) => " others",
            (true, 1) => " person",
            (true, _) => " people",
        });
    }
    s.push(' ');
    s.push_str(notice_verb(kind));
    s
}

/// A key that changes when a line's rendering must change.
fn render_key(line: &Line) -> String {
    match line {
        Line::Pending(Pending { status, .. }) => match status {
            SendStatus::Waiting => format!("{}:waiting", line.key()),
            SendStatus::Sending => format!("{}:sending", line.key()),
            SendStatus::Failed(reason) => format!("{}:failed:{reason}", line.key()),
        },
        _ => line.key(),
    }
}

/// The list of lines.
#[component]
pub fn MessageList(
    #[prop(into)] lines: Signal<Vec<Line>>,
    on_retry: Callback<String>,
    on_discard: Callback<String>,
    /// Whether older messages may exist on the server.
    #[prop(into, default = Signal::from(false))]
    can_load_older: Signal<bool>,
    /// Asks for a page of older messages.
    #[prop(default = Callback::new(|()| {}))]
    on_load_older: Callback<()>,
) -> impl IntoView {
    let list = NodeRef::<Ol>::new();
    let follow = RwSignal::new(Follow::default());
    let scroll_to_bottom = move || {
        if let Some(el) = list.get_untracked() {
            el.set_scroll_top(el.scroll_height());
        }
    };
    // New lines at the bottom: follow them if the reader is there, else
    // count them. Older lines loaded above are neither followed nor counted.
    Effect::new(move |previous: Option<(usize, Option<String>)>| {
        let (count, last) = lines.with(|l| (l.len(), l.last().map(render_key)));
        let added = match &previous {
            None => count,
            Some((before, before_last)) => {
                let at =
                    before_last.as_ref().and_then(|key| lines.with(|l| l.iter().rposition(|x| render_key(x) == *key)));
                match at {
                    Some(at) => count - at - 1,
                    None => count.saturating_sub(*before),
                }
            }
        };
        if added > 0 {
            let mut scroll = false;
            follow.update(|f| scroll = f.arrived(u32::try_from(added).unwrap_or(u32::MAX)));
            if scroll || previous.is_none() {
                request_animation_frame(scroll_to_bottom);
            }
        }
        (count, last)
    });
    let on_scroll = move |_| {
        if let Some(el) = list.get_untracked() {
            let gap = f64::from(el.scroll_height() - el.scroll_top() - el.client_height());
            follow.update(|f| f.scrolled(gap));
        }
    };
    let jump = move |_| {
        follow.update(Follow::jumped);
        scroll_to_bottom();
    };
    let unseen = move || follow.with(|f| f.unseen);
    // Memos, as `<Show>` kept: each part is built when it appears, not at every change.
    let older = Memo::new(move |_| can_load_older.get());
    let any_unseen = Memo::new(move |_| unseen() > 0);

    view! {
        <div class="messages-wrap">
            <ol class="messages" role="log" aria-live="polite" aria-label="Messages" tabindex="0" node_ref=list on:scroll=on_scroll>
                {move || {
                    older.get().then(|| view! {
                        <li class="load-older">
                            <button type="button" on:click=move |_| on_load_older.run(())>"Load older messages"</button>
                        </li>
                    })
                }}
                <For
                    each=move || lines.get()
                    key=render_key
                    children=move |line| view! { <LineView line=line on_retry=on_retry on_discard=on_discard /> }
                />
            </ol>
            {move || {
                any_unseen.get().then(|| view! {
                    <button type="button" class="new-messages" on:click=jump>
                        {move || match unseen() {
                            1 => "1 new message ↓".to_owned(),
                            n => format!("{n} new messages ↓"),
                        }}
                    </button>
                })
            }}
        </div>
    }
}

/// One line of the list. Its six kinds are one `EitherOf6`, not six
/// `into_any()` views: each of those brings its own erased build, rebuild and
/// mount functions into the page (3.1 KB of the gzipped bundle).
#[component]
fn LineView(line: Line, on_retry: Callback<String>, on_discard: Callback<String>) -> impl IntoView {
    match line {
        Line::Event(Entry::Message { ts, name, color, text, mine, .. }, _) => EitherOf6::A(view! {
            <li class="msg" class:mine=mine>
                <span class="meta">
                    <span class="name" style:color=color.0>{name.to_string()}</span>
                    <time datetime=iso(ts)>{clock(ts)}</time>
                    {mine.then(|| view! { <span class="state state-sent">"sent"</span> })}
                </span>
                <span class="text">{text}</span>
            </li>
        }),
        Line::Event(Entry::Notice { ts, kind, name, color, .. }, _) => EitherOf6::B(view! {
            <li class=notice_class(kind)>
                <span class="notice-text">
                    <span class="name" style:color=color.0>{name.to_string()}</span>
                    " "
                    {notice_verb(kind)}
                </span>
                <time datetime=iso(ts)>{clock(ts)}</time>
            </li>
        }),
        Line::Event(Entry::Presence { ts, kind, who, more, .. }, _) => EitherOf6::C(view! {
            <li class=notice_class(kind)>
                <span class="notice-text presence">{presence_sentence(kind, &who, more)}</span>
                <time datetime=iso(ts)>{clock(ts)}</time>
            </li>
        }),
        Line::Restarted(_) => EitherOf6::D(view! {
            <li class="notice divider">"The server restarted. Messages above are kept on this page only."</li>
        }),
        Line::Gap { missed, .. } => EitherOf6::E(view! {
            <li class="notice gap">
                {match missed {
                    1 => "1 earlier message is not available".to_owned(),
                    n => format!("{n} earlier messages are not available"),
                }}
            </li>
        }),
        Line::Pending(Pending { cid, text, status, .. }) => {
            let (class, state) = match &status {
                SendStatus::Waiting => ("msg mine pending", "waiting to send".to_owned()),
                SendStatus::Sending => ("msg mine pending", "sending…".to_owned()),
                SendStatus::Failed(reason) => ("msg mine failed", format!("not sent: {reason}")),
            };
            let failed = matches!(status, SendStatus::Failed(_));
            let (retry_cid, discard_cid) = (cid.clone(), cid);
            EitherOf6::F(view! {
                <li class=class>
                    <span class="meta">
                        <span class="name">"You"</span>
                        <span class="state">{state}</span>
                        {failed.then(|| view! {
                            <button type="button" class="retry" on:click=move |_| on_retry.run(retry_cid.clone())>"Retry"</button>
                            <button type="button" class="discard" on:click=move |_| on_discard.run(discard_cid.clone())>"Discard"</button>
                        })}
                    </span>
                    <span class="text">{text}</span>
                </li>
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sentence of a system notice, as `LineView` puts it together.
    fn notice_text(kind: NoticeKind, name: &str) -> String {
        format!("{name} {}", notice_verb(kind))
    }

    fn members(names: &[&str]) -> Vec<Member> {
        let member = |n: &&str| Member {
            name: natter_shared::UserName::parse(n).expect("valid"),
            color: natter_shared::Color("#123456".into()),
        };
        names.iter().map(member).collect()
    }

    /// The sentence without its bidi isolates, to read the words.
    fn presence_words(kind: NoticeKind, names: &[&str], more: u32) -> String {
        presence_sentence(kind, &members(names), more).replace(['\u{2068}', '\u{2069}'], "")
    }

    #[test]
    fn presence_lines_name_the_first_and_count_the_rest() {
        use NoticeKind::*;
        assert_eq!(presence_words(Joined, &["Ada"], 0), "Ada joined");
        assert_eq!(presence_words(Joined, &["Ada", "Bo"], 0), "Ada and Bo joined");
        assert_eq!(presence_words(Left, &["Ada", "Bo", "Cy"], 0), "Ada, Bo and Cy left");
        assert_eq!(presence_words(Joined, &["Ada", "Bo"], 12), "Ada, Bo and 12 others joined");
        assert_eq!(presence_words(TimedOut, &["Di"], 1), "Di and 1 other timed out");
        assert_eq!(presence_words(Left, &[], 1), "1 person left");
        assert_eq!(presence_words(Joined, &[], 30), "30 people joined");
        // Each name is isolated, so a right-to-left name cannot swap places with the next.
        assert_eq!(
            presence_sentence(Left, &members(&["Ada", "Bo"]), 0),
            "\u{2068}Ada\u{2069} and \u{2068}Bo\u{2069} left"
        );
    }

    #[test]
    fn notices_read_like_the_tutorial() {
        assert_eq!(notice_text(NoticeKind::Joined, "Ada"), "Ada joined");
        assert_eq!(notice_text(NoticeKind::Left, "Ada"), "Ada left");
        assert_eq!(notice_text(NoticeKind::TimedOut, "Ada"), "Ada timed out");
    }
}
