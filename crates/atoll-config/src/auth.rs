//! Client authentication: `[auth] tokens_file` in `atoll.toml` names a tokens file, which lists
//! the bearer tokens a region's client API accepts and what each grants.
//!
//! ```toml
//! [[tokens]]
//! name = "checkout"            # who holds it: shown in refusals and `atoll config check`
//! sha256 = "9f86d08..."        # hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`)
//! read = ["carts", "sessions"] # keyspaces it may read ("*": every keyspace)
//! write = ["carts"]            # keyspaces it may write
//! ```
//!
//! Only hashes are stored: the file holds no secret. A presented token is hashed and compared
//! with every entry in constant time. Keys are strict like the config's: unknown keys, malformed
//! or duplicate hashes, duplicate names and keyspaces the config does not declare are errors
//! naming the file, the line and the key. Without `[auth]` the client API is open, and
//! [`crate::Config::warnings`] says so.

use crate::Config;
use crate::error::ConfigError;
use crate::raw::Ctx;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use toml::Spanned;

/// `[auth]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// The tokens file, resolved against the config file's directory; `None`: the client API is
    /// open.
    pub tokens_file: Option<std::path::PathBuf>,
}

/// A right a token may grant on a keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
}

impl Right {
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
        }
    }
}

/// The keyspaces a token may read or write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keyspaces {
    /// `"*"`: every keyspace.
    All,
    Some(BTreeSet<String>),
}

impl Keyspaces {
    fn contains(&self, keyspace: &str) -> bool {
        match self {
            Keyspaces::All => true,
            Keyspaces::Some(set) => set.contains(keyspace),
        }
    }

    /// As written in the file, for `atoll config check`.
    pub fn describe(&self) -> String {
        match self {
            Keyspaces::All => "*".to_string(),
            Keyspaces::Some(set) if set.is_empty() => "-".to_string(),
            Keyspaces::Some(set) => set.iter().cloned().collect::<Vec<_>>().join(", "),
        }
    }
}

/// One token of the tokens file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Who holds it.
    pub name: String,
    sha256: [u8; 32],
    pub read: Keyspaces,
    pub write: Keyspaces,
}

impl Grant {
    /// Whether this token may do `right` on `keyspace`.
    pub fn allows(&self, right: Right, keyspace: &str) -> bool {
        match right {
            Right::Read => self.read.contains(keyspace),
            Right::Write => self.write.contains(keyspace),
        }
    }
}

/// The tokens a region accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    grants: Vec<Grant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    #[serde(default)]
    tokens: Vec<Spanned<RawToken>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Spanned<String>,
    sha256: Spanned<String>,
    #[serde(default)]
    read: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    write: Option<Spanned<Vec<String>>>,
}

/// The SHA-256 of `token`.
pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The lowercase hex SHA-256 of `token`, as the tokens file wants it.
pub fn sha256_hex(token: &str) -> String {
    sha256(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Whether `a` equals `b`, in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Tokens {
    /// Reads and validates the tokens file at `path` against `config`'s keyspaces.
    pub fn load(path: &Path, config: &Config) -> Result<Tokens, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), config)
    }

    /// Reads the tokens file `config` names, if it names one.
    pub fn load_for(config: &Config) -> Result<Option<Tokens>, ConfigError> {
        match &config.auth.tokens_file {
            Some(path) => Self::load(path, config).map(Some),
            None => Ok(None),
        }
    }

    /// Parses and validates the text of a tokens file. `source` names it in messages.
    pub fn parse(text: &str, source: &str, config: &Config) -> Result<Tokens, ConfigError> {
        let raw: RawTokens =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(e, text, source))?;
        let cx = Ctx::new(text, source);
        if raw.tokens.is_empty() {
            return Err(cx.err_nowhere(
                "tokens",
                "no token is declared: add [[tokens]] tables (name, sha256, read, write), or remove [auth] from the config to leave the client API open",
            ));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut hashes: HashMap<[u8; 32], usize> = HashMap::new();
        let mut grants = Vec::with_capacity(raw.tokens.len());
        for (i, t) in raw.tokens.iter().enumerate() {
            let t = t.get_ref();
            let key = |field: &str| format!("tokens[{i}].{field}");
            let name = t.name.get_ref();
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
            if !name_ok {
                return Err(cx.err(
                    t.name.span(),
                    key("name"),
                    format!("invalid token name `{name}`: use 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.' and '@'"),
                ));
            }
            if names.insert(name, i).is_some() {
                return Err(cx.err(
                    t.name.span(),
                    key("name"),
                    format!("duplicate token name `{name}`"),
                ));
            }
            let hex = t.sha256.get_ref().to_ascii_lowercase();
            let Some(hash) = parse_hex(&hex) else {
                return Err(cx.err(
                    t.sha256.span(),
                    key("sha256"),
                    "not a SHA-256 in hex (64 characters of 0-9 and a-f): store the hash of the token, never the token (`printf %s \"$TOKEN\" | sha256sum`)",
                ));
            };
            if let Some(first) = hashes.insert(hash, i) {
                return Err(cx.err(
                    t.sha256.span(),
                    key("sha256"),
                    format!("the same token as tokens[{first}]: every token must be different"),
                ));
            }
            let keyspaces = |list: &Option<Spanned<Vec<String>>>, field: &str| {
                let Some(list) = list else {
                    return Ok(Keyspaces::Some(BTreeSet::new()));
                };
                if list.get_ref().iter().any(|k| k == "*") {
                    return Ok(Keyspaces::All);
                }
                let mut set = BTreeSet::new();
                for k in list.get_ref() {
                    if config.keyspace(k).is_none() {
                        return Err(cx.err(
                            list.span(),
                            key(field),
                            format!(
                                "unknown keyspace `{k}` (the config declares: {}; \"*\" grants every keyspace)",
                                config
                                    .keyspaces
                                    .iter()
                                    .map(|k| k.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                    set.insert(k.clone());
                }
                Ok(Keyspaces::Some(set))
            };
            grants.push(Grant {
                name: name.clone(),
                sha256: hash,
                read: keyspaces(&t.read, "read")?,
                write: keyspaces(&t.write, "write")?,
            });
        }
        Ok(Tokens { grants })
    }

    /// The grant of a presented token, if it is one of the file's. Every entry is compared, in
    /// constant time, whatever matches.
    pub fn authenticate(&self, presented: &str) -> Option<&Grant> {
        let hash = sha256(presented);
        let mut found = None;
        for g in &self.grants {
            if constant_time_eq(&g.sha256, &hash) {
                found = Some(g);
            }
        }
        found
    }

    /// Every token, in file order.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }
}
