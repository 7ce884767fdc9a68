//! Configuration errors that point at the file, line and field at fault.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a fleet configuration was refused.
///
/// Every variant names the file; [`ConfigError::Invalid`] also names the line,
/// column and field, so an operator can jump straight to the mistake.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read the fleet config: {source}", file.display())]
    Read {
        /// The file that was asked for.
        file: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but its content is wrong.
    #[error("{location}: {field}: {message}")]
    Invalid {
        /// Where the mistake is.
        location: Location,
        /// The dotted path of the field at fault, e.g. `server[1].url`.
        field: String,
        /// What is wrong and, where it helps, what would be right.
        message: String,
    },
}

/// A position in a configuration file, shown as `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column number, counted in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

impl ConfigError {
    /// The line the error points at, if it points into the file.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { location, .. } => Some(location.line),
        }
    }

    /// The field path the error names, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { field, .. } => Some(field),
        }
    }
}

/// The text of one configuration file, able to turn byte spans into errors.
pub(crate) struct Source<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    /// An error at byte `span` of the file, about `field`.
    pub(crate) fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            location: self.location(span.start),
            field: field.into(),
            message: message.into(),
        }
    }

    /// The line and column of byte `offset`.
    pub(crate) fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Location {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let source = Source {
            file: Path::new("f.toml"),
            text: "a = 1\nbé = 2\n",
        };
        assert_eq!(source.location(0).to_string(), "f.toml:1:1");
        assert_eq!(source.location(6).to_string(), "f.toml:2:1");
        // Columns count characters, not bytes: 'é' is two bytes.
        assert_eq!(source.location(10).to_string(), "f.toml:2:4");
        assert_eq!(source.location(999).line, 3);
    }
}
