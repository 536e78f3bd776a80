//! Fieldless enums on the wire: each is its snake_case name as a JSON string.
//!
//! They are encoded and decoded here, through one string visitor for all of
//! them, rather than by serde's derive, which gives every enum its own
//! visitors (for strings, bytes and variant indexes) and costs the page's
//! bundle about a kilobyte each.

use serde::de::{Deserialize, Deserializer, Error};
use serde::ser::Serializer;

/// A fieldless enum whose wire form is its name.
pub trait WireName: Copy + Sized + 'static {
    /// What the enum is, for error messages: `"notice kind"`.
    const WHAT: &'static str;
    /// Every variant, in declaration order.
    const ALL: &'static [Self];
    /// The variant a name this version does not know decodes as; `None`
    /// makes an unknown name an error.
    const FALLBACK: Option<Self> = None;

    /// The variant's name on the wire.
    fn wire_name(self) -> &'static str;
}

/// Encodes `value` as its name.
pub fn serialize<S: Serializer, T: WireName>(value: T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.wire_name())
}

/// The variant named `name`, or [`WireName::FALLBACK`].
pub fn from_name<T: WireName>(name: &str) -> Option<T> {
    T::ALL.iter().copied().find(|v| v.wire_name() == name).or(T::FALLBACK)
}

/// Decodes a name into its variant, [`WireName::FALLBACK`] or an error.
pub fn deserialize<'de, D: Deserializer<'de>, T: WireName>(deserializer: D) -> Result<T, D::Error> {
    let name = String::deserialize(deserializer)?;
    from_name(&name).ok_or_else(|| D::Error::custom(format_args!("unknown {} `{name}`", T::WHAT)))
}

/// Implements `Serialize` and `Deserialize` for a [`WireName`] enum
/// (`Deserialize` alone with `decode_only`, for tags the code never sends).
macro_rules! serde_by_wire_name {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $crate::wire_name::serialize(*self, serializer)
            }
        }

        serde_by_wire_name!($t, decode_only);
    };
    ($t:ty, decode_only) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::wire_name::deserialize(deserializer)
            }
        }
    };
}

pub(crate) use serde_by_wire_name;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::NoticeKind;

    /// Checks that `all` lists each variant at its own discriminant, that
    /// names are distinct snake_case, and that each variant round-trips.
    pub(crate) fn round_trips<T>(all: &[T], discriminant: fn(T) -> usize)
    where
        T: WireName + std::fmt::Debug + PartialEq + serde::Serialize + for<'de> Deserialize<'de>,
    {
        let mut names = std::collections::HashSet::new();
        for (i, &v) in all.iter().enumerate() {
            assert_eq!(discriminant(v), i, "{v:?} is not at its place in ALL");
            let name = v.wire_name();
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
            assert!(names.insert(name), "{name} twice");
            let json = serde_json::to_string(&v).expect("serialize");
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<T>(&json).expect("deserialize"), v);
        }
    }

    #[test]
    fn notice_kinds_round_trip_and_unknown_ones_are_refused() {
        round_trips(NoticeKind::ALL, |k| k as usize);
        let err = serde_json::from_str::<NoticeKind>(r#""exploded""#).expect_err("unknown kind");
        assert!(err.to_string().contains("unknown notice kind `exploded`"), "{err}");
        assert!(serde_json::from_str::<NoticeKind>("3").is_err());
        assert_eq!(serde_json::from_str::<NoticeKind>(r#""timed\u005fout""#).expect("escaped"), NoticeKind::TimedOut);
    }
}
