//! Two-letter country and continent codes, and per-stream country rules.

use std::fmt;

/// An ISO 3166-1 alpha-2 country code (`AT`) or a continent code (`EU`):
/// two uppercase ASCII letters, stored inline so comparing them costs nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code([u8; 2]);

impl Code {
    /// Parses two ASCII letters, in either case.
    pub fn new(text: &str) -> Option<Code> {
        match text.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Code([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Always two ASCII letters, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a stream may be played (radio licensing). The redirector answers a
/// player the rule refuses with 451.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CountryRule {
    /// Everywhere.
    #[default]
    Anyone,
    /// Only in these countries; a player whose country is unknown is refused,
    /// since a licence cannot be checked for it.
    Only(Vec<Code>),
    /// Everywhere except these countries; a player whose country is unknown is let in.
    Except(Vec<Code>),
}

impl CountryRule {
    /// Whether a player from `country` may play the stream.
    pub fn permits(&self, country: Option<Code>) -> bool {
        match self {
            CountryRule::Anyone => true,
            CountryRule::Only(allowed) => country.is_some_and(|c| allowed.contains(&c)),
            CountryRule::Except(denied) => !country.is_some_and(|c| denied.contains(&c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(Code::new("at").map(|c| c.to_string()), Some("AT".into()));
        for bad in ["", "A", "AUT", "A1", "ÄT", "--"] {
            assert_eq!(Code::new(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn country_rules() {
        let at = Code::new("AT");
        let de = Code::new("DE");
        let only = CountryRule::Only(vec![Code::new("AT").unwrap()]);
        assert!(only.permits(at));
        assert!(!only.permits(de));
        assert!(!only.permits(None), "unknown country cannot be licensed");
        let except = CountryRule::Except(vec![Code::new("DE").unwrap()]);
        assert!(except.permits(at));
        assert!(!except.permits(de));
        assert!(except.permits(None));
        assert!(CountryRule::Anyone.permits(None));
    }
}
