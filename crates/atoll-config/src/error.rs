//! [`ConfigError`]: what is wrong with a config file, where (file, line, column) and which key.

use atoll_core::AtollError;
use std::ops::Range;
use std::path::PathBuf;
use thiserror::Error;

/// Why a config file was rejected. The `Display` text is the whole message: it names the file,
/// the line and column (when the problem has a place in the file), the key, and the problem.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{file}:{line}:{column}: TOML syntax error: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The TOML is well formed but a key is unknown, missing, of the wrong type or has a value
    /// atoll does not accept. `key` is a path such as `keyspaces[1].max_siblings` (indexes count
    /// from 0 in the order of the file).
    #[error("{}", invalid_message(file, *line, *column, key, message))]
    Invalid {
        file: String,
        /// 1-based line, if the problem has a place in the file.
        line: Option<usize>,
        /// 1-based column (in characters), if the problem has a place in the file.
        column: Option<usize>,
        key: String,
        message: String,
    },
}

fn invalid_message(
    file: &str,
    line: Option<usize>,
    column: Option<usize>,
    key: &str,
    message: &str,
) -> String {
    let place = match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_string(),
    };
    if key.is_empty() {
        format!("{place}: {message}")
    } else {
        format!("{place}: `{key}`: {message}")
    }
}

impl ConfigError {
    /// Stable machine-readable code, the same as [`AtollError::Config`]'s.
    pub fn code(&self) -> &'static str {
        "ATOLL-CONFIG"
    }

    /// A config error never goes away by retrying: the file has to change.
    pub fn retryable(&self) -> bool {
        false
    }

    /// What the operator should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Read { .. } => {
                "check the path and the file's permissions; pass the config with --config FILE"
            }
            Self::Syntax { .. } => {
                "fix the TOML syntax at the line shown; examples/single-region.toml is a commented example"
            }
            Self::Invalid { .. } => {
                "fix the key named in the message; `atoll config check FILE` validates a config and explains what it understood"
            }
        }
    }

    /// The file (or source name) the error is about.
    pub fn file(&self) -> String {
        match self {
            Self::Read { path, .. } => path.display().to_string(),
            Self::Syntax { file, .. } | Self::Invalid { file, .. } => file.clone(),
        }
    }

    /// The 1-based line of the problem, if it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } => None,
            Self::Syntax { line, .. } => Some(*line),
            Self::Invalid { line, .. } => *line,
        }
    }

    /// The key path of the problem (`keyspaces[1].max_siblings`), if it has one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } if !key.is_empty() => Some(key),
            _ => None,
        }
    }

    /// Builds an [`ConfigError::Invalid`] located at byte range `span` of `text`.
    pub(crate) fn invalid_at(
        text: &str,
        file: &str,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = match span {
            Some(span) => {
                let (l, c) = line_column(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Self::Invalid {
            file: file.to_string(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Converts a TOML or serde error into a located error that names the key.
    pub(crate) fn from_toml(err: toml::de::Error, text: &str, file: &str) -> Self {
        let message = err.message().trim().to_string();
        let span = err.span();
        if let Err(syntax) = toml::de::DeTable::parse(text) {
            // Not TOML at all: report the parser's own position and message.
            let span = syntax.span().or(span).unwrap_or(0..0);
            let (line, column) = line_column(text, span.start);
            let message = syntax.message().trim().replace('\n', "; ");
            return Self::Syntax {
                file: file.to_string(),
                line,
                column,
                message,
            };
        }
        let mut key = span
            .as_ref()
            .map(|s| key_path_at(text, s.start))
            .unwrap_or_default();
        // "missing field `api`" is reported on the table that lacks it: name the missing key.
        if let Some(field) = backticked_after(&message, "missing field ") {
            key = join_key(&key, field);
        }
        let message = message
            .replace("unknown variant", "unknown value")
            .replace("expected i64", "expected an integer")
            .replace("expected f64", "expected a number")
            .replace('\n', "; ");
        Self::invalid_at(text, file, span, key, message)
    }
}

impl From<ConfigError> for AtollError {
    fn from(err: ConfigError) -> Self {
        AtollError::Config(err.to_string())
    }
}

fn backticked_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(field, _)| field)
}

pub(crate) fn join_key(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The dotted key path (`keyspaces[1].max_siblings`) of the most specific key, value or table
/// header of the TOML document `text` whose span contains byte `offset`. Empty if none does (or
/// the text is not TOML). Table spans cover only their header, so every level is searched.
pub(crate) fn key_path_at(text: &str, offset: usize) -> String {
    let Ok(root) = toml::de::DeTable::parse(text) else {
        return String::new();
    };
    let mut spans = Vec::new();
    collect_table(root.get_ref(), "", &mut spans);
    spans
        .into_iter()
        .filter(|(_, s)| s.contains(&offset) || (s.is_empty() && s.start == offset))
        .min_by_key(|(path, s)| (s.len(), usize::MAX - path.len()))
        .map(|(path, _)| path)
        .unwrap_or_default()
}

fn collect_table(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    out: &mut Vec<(String, Range<usize>)>,
) {
    for (key, value) in table {
        let path = join_key(prefix, key.get_ref());
        out.push((path.clone(), key.span()));
        out.push((path.clone(), value.span()));
        collect_value(value.get_ref(), &path, out);
    }
}

fn collect_value(value: &toml::de::DeValue<'_>, path: &str, out: &mut Vec<(String, Range<usize>)>) {
    match value {
        toml::de::DeValue::Table(t) => collect_table(t, path, out),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                out.push((path.clone(), item.span()));
                collect_value(item.get_ref(), &path, out);
            }
        }
        _ => {}
    }
}
