//! Name colours. Every palette entry has a contrast ratio of at least 4.5:1
//! (WCAG AA for normal text) against both pure white and pure black, so a
//! name stays readable in light and dark themes. A name's colour depends only
//! on its case-insensitive key, so it is the same in every room and after
//! every restart.

use serde::{Deserialize, Serialize};

use crate::ids::UserName;

/// The palette, as `#rrggbb`. Appending is safe; reordering would change
/// everyone's colour.
pub const PALETTE: [&str; 12] = [
    "#e12b2b", "#ad6319", "#797911", "#4b8413", "#138813", "#13874d", "#138383", "#1e77d0", "#6565e9", "#9a4de6",
    "#cb1dcb", "#dd207e",
];

/// A CSS colour (`#rrggbb`) assigned by the server to a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Color(pub String);

impl Color {
    /// The CSS colour text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Accepts exactly `#rrggbb` (hex digits of either case), the form the
    /// server assigns; anything else is refused, so a colour from outside
    /// (an imported history) can never be more than a colour.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() == 7 && raw.starts_with('#') && raw.bytes().skip(1).all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self(raw.to_owned()))
    }
}

/// FNV-1a over the name's key: stable across processes and platforms
/// (unlike `std`'s hasher, which may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The colour for a name: the same for every spelling of the same key.
pub fn color_for(name: &UserName) -> Color {
    // The palette has 12 entries, so the cast cannot truncate.
    let index = (fnv1a(name.key().as_bytes()) % PALETTE.len() as u64) as usize;
    Color(PALETTE[index].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(hex: &str) -> f64 {
        let v = f64::from(u8::from_str_radix(hex, 16).expect("hex")) / 255.0;
        if v <= 0.04045 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) }
    }

    /// WCAG 2 relative luminance of `#rrggbb`.
    fn luminance(color: &str) -> f64 {
        let (r, g, b) = (&color[1..3], &color[3..5], &color[5..7]);
        0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
    }

    fn contrast(a: f64, b: f64) -> f64 {
        let (hi, lo) = if a > b { (a, b) } else { (b, a) };
        (hi + 0.05) / (lo + 0.05)
    }

    #[test]
    fn every_colour_is_readable_on_white_and_on_black() {
        for c in PALETTE {
            let l = luminance(c);
            assert!(contrast(l, 1.0) >= 4.5, "{c} on white: {:.2}", contrast(l, 1.0));
            assert!(contrast(l, 0.0) >= 4.5, "{c} on black: {:.2}", contrast(l, 0.0));
        }
    }

    #[test]
    fn colours_are_stable_and_case_insensitive() {
        let ada = UserName::parse("Ada").expect("valid");
        let ada_upper = UserName::parse("ADA").expect("valid");
        assert_eq!(color_for(&ada), color_for(&ada_upper));
        // Pinned: changing the hash or the palette order would recolour everyone.
        assert_eq!(color_for(&ada).as_str(), PALETTE[(fnv1a(b"ada") % 12) as usize]);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn only_hex_colours_parse() {
        for ok in PALETTE.iter().copied().chain(["#000000", "#FFFFFF", "#1E77d0"]) {
            assert_eq!(Color::parse(ok).map(|c| c.0), Some(ok.to_owned()), "{ok}");
        }
        for bad in ["", "red", "#12345", "#1234567", "1e77d0", "#gggggg", "#1e77d0;", "#1e77d0 ", "＃1e77d0", "#1é77d"]
        {
            assert_eq!(Color::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_spread_over_the_palette() {
        let mut used = std::collections::HashSet::new();
        for i in 0..200 {
            let name = UserName::parse(&format!("user{i}")).expect("valid");
            used.insert(color_for(&name));
        }
        assert_eq!(used.len(), PALETTE.len());
    }
}
