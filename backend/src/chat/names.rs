//! When two names are the same person to the eye: the keys a room compares
//! names by. Server only, so the page's wasm carries no normalization or
//! confusable tables (the page checks only what `UserName::parse` checks).

use natter_shared::UserName;
use unicode_normalization::UnicodeNormalization;
use unicode_security::skeleton;

/// The key a room holds a member under: no two members of a room share one,
/// and a resume finds its member by it. The name is lower-cased, reduced to
/// its confusable skeleton (UTS #39: decomposed, so `José` and `Jose\u{301}`
/// agree, and each character mapped to the prototype of the characters that
/// look like it, so Cyrillic `а` is Latin `a`), lower-cased again (some
/// prototypes are capitals: `0` becomes `O`) and composed (NFC, shorter).
///
/// Not the key that deduplicates resent messages: that stays
/// [`UserName::key`], which stored history is keyed by.
pub fn member_key(name: &UserName) -> String {
    fold(&name.as_str().to_lowercase())
}

/// What a name looks like as written: the same as [`member_key`] but without
/// lower-casing first, which would hide that a capital `I` looks like `l`
/// (`paypaI` and `paypal`), as its lower case `i` does not. A room also
/// refuses a name whose glyph key a member has.
pub fn glyph_key(name: &UserName) -> String {
    fold(name.as_str())
}

/// The skeleton of `text`, lower-cased and composed.
fn fold(text: &str) -> String {
    skeleton(text).collect::<String>().to_lowercase().nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> UserName {
        UserName::parse(s).expect("valid name")
    }

    /// Whether a room would take `a` and `b` for the same person.
    fn same(a: &str, b: &str) -> bool {
        let (a, b) = (name(a), name(b));
        member_key(&a) == member_key(&b) || glyph_key(&a) == glyph_key(&b)
    }

    #[test]
    fn composed_and_decomposed_forms_are_one_name() {
        assert_eq!(member_key(&name("José")), member_key(&name("Jose\u{301}")));
        assert_eq!(member_key(&name("JOSÉ")), member_key(&name("jose\u{301}")));
        assert_eq!(member_key(&name("Ångström")), member_key(&name("A\u{30A}ngstro\u{308}m")));
    }

    #[test]
    fn case_never_tells_names_apart() {
        for (a, b) in [("Ada", "ADA"), ("Ada", "aDa"), ("Mary", "mary"), ("IVAN", "ivan"), ("ÉMILE", "émile")] {
            assert_eq!(member_key(&name(a)), member_key(&name(b)), "{a} / {b}");
        }
    }

    #[test]
    fn letters_of_other_scripts_that_look_latin_are_the_same_name() {
        // Cyrillic А (U+0410), and Cyrillic а, о, р, е in "pаypаl" and "роре".
        assert_eq!(member_key(&name("Ada")), member_key(&name("\u{410}da")));
        assert_eq!(member_key(&name("paypal")), member_key(&name("p\u{430}yp\u{430}l")));
        assert_eq!(member_key(&name("pope")), member_key(&name("\u{440}\u{43E}\u{440}\u{435}")));
        // Digits that pass for letters, and fullwidth forms.
        assert!(same("B0b", "Bob"));
        assert!(same("Ada", "Ａｄａ"));
        assert!(same("rn", "m"));
    }

    #[test]
    fn a_capital_i_passes_for_a_small_l() {
        // Lower-cased first, `paypaI` is `paypai`: only the glyph key sees it.
        assert_ne!(member_key(&name("paypaI")), member_key(&name("paypal")));
        assert_eq!(glyph_key(&name("paypaI")), glyph_key(&name("paypal")));
        assert!(same("paypaI", "PayPal"));
        assert!(same("AI", "Al"));
    }

    #[test]
    fn different_names_stay_different() {
        for (a, b) in
            [("Ada", "Bob"), ("Ada", "Ana"), ("Kai", "Kal"), ("Ирина", "Ирена"), ("李小龍", "李小虎"), ("Zoë", "Zoe")]
        {
            assert!(!same(a, b), "{a} / {b}");
        }
    }

    /// Whatever UTS #39 ignores (its default-ignorable table, Unicode's latest
    /// in `unicode-security`) the shared rules already refuse in a name.
    #[test]
    fn every_character_the_skeleton_ignores_is_refused_in_a_name() {
        for c in (0..=0x10_FFFFu32).filter_map(char::from_u32) {
            let alone = c.to_string();
            if skeleton(&alone).next().is_none() {
                assert!(UserName::parse(&format!("a{c}b")).is_err(), "U+{:04X} is ignorable", c as u32);
            }
        }
    }
}
