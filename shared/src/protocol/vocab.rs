//! The wire's words as types: the slot a model version serves in, its load state, and the
//! sampling of prediction batches.
//!
//! On the wire each is the same string it always was (`"primary"`, `"ready"`, `"1/10"`), so
//! bodies from older agents decode as before; a string this build does not know is a decode
//! error that names it ([`UnknownWord`]), never a panic and never a silent default.

use serde::{Deserialize, Serialize};

/// A wire string that is not one of the words its field takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{found}` is not a {what} (expected {expected})")]
pub struct UnknownWord {
    pub what: &'static str,
    pub found: String,
    pub expected: &'static str,
}

thread_local! {
    static LAST_UNKNOWN: std::cell::RefCell<Option<UnknownWord>> = const { std::cell::RefCell::new(None) };
}

/// The deserializer's error for `word`, which is also kept for [`take_unknown`]: postcard's
/// errors carry no message, and the decoder must still name the word it refused.
fn remember<E: serde::de::Error>(word: UnknownWord) -> E {
    let e = E::custom(&word);
    LAST_UNKNOWN.with(|last| *last.borrow_mut() = Some(word));
    e
}

/// The unknown word the last failed decode on this thread refused, if that was why (and
/// forgets it).
pub fn take_unknown() -> Option<UnknownWord> {
    LAST_UNKNOWN.with(|last| last.borrow_mut().take())
}

/// Serializes as its string, deserializes from it (naming an unknown one).
macro_rules! wire_words {
    ($ty:ident, $what:literal, $expected:literal, $($variant:ident => $text:literal),+ $(,)?) => {
        impl $ty {
            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<$ty, UnknownWord> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    other => Err(UnknownWord {
                        what: $what,
                        found: other.chars().take(64).collect(),
                        expected: $expected,
                    }),
                }
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                text.parse().map_err(remember)
            }
        }
    };
}

/// Where a model version serves on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// Answers every request (but a canary's share).
    Primary,
    /// Answers its share of the requests beside the primary.
    Canary,
    /// Loaded and validated, answering nothing (blue-green's next primary).
    Standby,
    /// Runs on copies of the primary's requests; its answers are compared, never returned.
    Shadow,
}

wire_words!(Slot, "slot", "primary, canary, standby or shadow", Primary => "primary", Canary => "canary", Standby => "standby", Shadow => "shadow");

/// How far a model version has come on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoadState {
    Loading,
    Ready,
    Failed,
}

wire_words!(LoadState, "load state", "loading, ready or failed", Loading => "loading", Ready => "ready", Failed => "failed");

/// Which served predictions travel in batches (`sample_predictions` per model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Sampling {
    #[default]
    All,
    None,
    /// One in every N (by prediction id).
    OneIn(u64),
}

impl Sampling {
    pub fn keeps(self, id: u64) -> bool {
        match self {
            Sampling::All => true,
            Sampling::None => false,
            Sampling::OneIn(n) => id.is_multiple_of(n),
        }
    }
}

impl std::fmt::Display for Sampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sampling::All => f.write_str("all"),
            Sampling::None => f.write_str("none"),
            Sampling::OneIn(n) => write!(f, "1/{n}"),
        }
    }
}

impl std::str::FromStr for Sampling {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Sampling, UnknownWord> {
        match s {
            "all" => Ok(Sampling::All),
            "none" => Ok(Sampling::None),
            other => other
                .strip_prefix("1/")
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n >= 1)
                .map(|n| if n == 1 { Sampling::All } else { Sampling::OneIn(n) })
                .ok_or_else(|| UnknownWord {
                    what: "sampling",
                    found: s.chars().take(64).collect(),
                    expected: "`all`, `none` or `1/N` with N ≥ 1",
                }),
        }
    }
}

impl Serialize for Sampling {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sampling {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sampling, D::Error> {
        std::borrow::Cow::<'de, str>::deserialize(d)?.parse().map_err(remember)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_the_strings_they_always_were_on_the_wire() {
        // postcard writes an enum of this kind exactly as it wrote the String it replaces.
        for (slot, text) in [(Slot::Primary, "primary"), (Slot::Shadow, "shadow")] {
            assert_eq!(postcard::to_allocvec(&slot).unwrap(), postcard::to_allocvec(text).unwrap());
            assert_eq!(postcard::from_bytes::<Slot>(&postcard::to_allocvec(text).unwrap()).unwrap(), slot);
        }
        let ready = postcard::to_allocvec("ready").unwrap();
        assert_eq!(postcard::from_bytes::<LoadState>(&ready).unwrap(), LoadState::Ready);
        let tenth = postcard::to_allocvec("1/10").unwrap();
        assert_eq!(postcard::from_bytes::<Sampling>(&tenth).unwrap(), Sampling::OneIn(10));
        assert_eq!(serde_json::to_string(&Slot::Canary).unwrap(), "\"canary\"");
    }

    #[test]
    fn an_unknown_word_is_an_error_that_names_it() {
        let bytes = postcard::to_allocvec("sideways").unwrap();
        let e = postcard::from_bytes::<Slot>(&bytes).unwrap_err();
        assert!(matches!(e, postcard::Error::SerdeDeCustom), "{e}");
        let e = "sideways".parse::<Slot>().unwrap_err();
        assert_eq!(e.to_string(), "`sideways` is not a slot (expected primary, canary, standby or shadow)");
        let _ = take_unknown();
        assert!(postcard::from_bytes::<LoadState>(&bytes).is_err());
        assert_eq!(take_unknown().map(|w| w.what), Some("load state"));
        assert_eq!(take_unknown(), None, "taken once");
        let e = serde_json::from_str::<LoadState>("\"sleeping\"").unwrap_err();
        assert!(e.to_string().contains("`sleeping` is not a load state"), "{e}");
        assert!("1/0".parse::<Sampling>().is_err());
        assert_eq!("1/1".parse::<Sampling>().unwrap(), Sampling::All);
    }
}
