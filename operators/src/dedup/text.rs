//! Text normalisation before hashing, and the shingles of a normalised text.

use serde::{Deserialize, Serialize};

/// How text is normalised before it is hashed (`[dedup.normalize]`). Every step is on by
/// default except `digits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextNorm {
    /// Lower-case every letter (Unicode lower case).
    pub lowercase: bool,
    /// Replace punctuation and symbols with spaces.
    pub punctuation: bool,
    /// Collapse runs of whitespace to one space and trim both ends.
    pub whitespace: bool,
    /// Replace every decimal digit with `0`.
    pub digits: bool,
}

impl Default for TextNorm {
    fn default() -> Self {
        Self {
            lowercase: true,
            punctuation: true,
            whitespace: true,
            digits: false,
        }
    }
}

impl TextNorm {
    /// Leaves the text as it is.
    pub const NONE: TextNorm = TextNorm {
        lowercase: false,
        punctuation: false,
        whitespace: false,
        digits: false,
    };

    /// The normalised text.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut pending_space = false;
        for c in text.chars() {
            let c = if self.punctuation && !c.is_alphanumeric() && !c.is_whitespace() {
                ' '
            } else if self.digits && c.is_ascii_digit() {
                '0'
            } else {
                c
            };
            if self.whitespace && c.is_whitespace() {
                pending_space = !out.is_empty();
                continue;
            }
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            if self.lowercase {
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// What a shingle is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShingleUnit {
    /// Words: runs of non-whitespace.
    Words,
    /// Characters (Unicode scalar values).
    Chars,
}

/// The shingles of a normalised text: every window of `size` units, joined by one space for
/// words. A text shorter than one window is one shingle of all its units; an empty text has
/// none.
pub fn shingles(text: &str, unit: ShingleUnit, size: usize) -> Vec<String> {
    let size = size.max(1);
    match unit {
        ShingleUnit::Words => {
            let words: Vec<&str> = text.split_whitespace().collect();
            windows(&words, size).map(|w| w.join(" ")).collect()
        }
        ShingleUnit::Chars => {
            let chars: Vec<char> = text.chars().collect();
            windows(&chars, size).map(|w| w.iter().collect()).collect()
        }
    }
}

/// Every window of `size` items; the whole slice when it is shorter; nothing when empty.
pub fn windows<T>(items: &[T], size: usize) -> impl Iterator<Item = &[T]> {
    let short = !items.is_empty() && items.len() < size;
    let whole = short.then_some(items);
    let count = if items.len() >= size {
        items.len() + 1 - size
    } else {
        0
    };
    whole
        .into_iter()
        .chain((0..count).map(move |i| &items[i..i + size]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_punctuation_and_spaces() {
        let norm = TextNorm::default();
        assert_eq!(
            norm.apply("  Hello,   World!\n\tÉté 2024. "),
            "hello world été 2024"
        );
        let digits = TextNorm {
            digits: true,
            ..TextNorm::default()
        };
        assert_eq!(digits.apply("Call 555-1234"), "call 000 0000");
        assert_eq!(TextNorm::NONE.apply(" A,b "), " A,b ");
    }

    #[test]
    fn shingles_are_windows_or_the_whole_short_text() {
        assert_eq!(
            shingles("a b c d", ShingleUnit::Words, 3),
            vec!["a b c", "b c d"]
        );
        assert_eq!(shingles("a b", ShingleUnit::Words, 3), vec!["a b"]);
        assert!(shingles("", ShingleUnit::Words, 3).is_empty());
        assert_eq!(shingles("abcd", ShingleUnit::Chars, 3), vec!["abc", "bcd"]);
        assert_eq!(shingles("ab", ShingleUnit::Chars, 3), vec!["ab"]);
    }
}
