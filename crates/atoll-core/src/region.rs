//! Region identifiers.

use crate::error::{AtollError, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// The name of a region (`us-east-1`). Cheap to clone. Ordered by name: the order breaks ties
/// between equal hybrid-logical-clock timestamps. Encoded as its name (a plain string); decoding
/// validates the name like [`RegionId::new`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(Arc<str>);

// Hand-written rather than `#[serde(transparent)]`: serde implements `Arc<str>` only with its `rc`
// feature, and this way decoding also validates the name. Same encoding as a transparent string.
impl Serialize for RegionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RegionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        RegionId::new(&name).map_err(serde::de::Error::custom)
    }
}

impl RegionId {
    /// Longest accepted region name.
    pub const MAX_LEN: usize = 63;

    /// Validates a region name: 1 to 63 characters of `[a-z0-9-]`, not starting or ending in `-`.
    pub fn new(name: &str) -> Result<Self> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if ok {
            Ok(Self(Arc::from(name)))
        } else {
            Err(AtollError::Config(format!(
                "invalid region name `{name}`: use 1-{} characters of a-z, 0-9 and '-', not starting or ending with '-'",
                Self::MAX_LEN
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(RegionId::new("us-east-1").is_ok());
        for bad in ["", "-a", "a-", "US-EAST", "a b", &"x".repeat(64)] {
            assert!(RegionId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn encodes_as_its_name_and_validates_on_decode() {
        let r = RegionId::new("eu-west-1").unwrap();
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert_eq!(bytes, postcard::to_allocvec("eu-west-1").unwrap());
        assert_eq!(postcard::from_bytes::<RegionId>(&bytes).unwrap(), r);
        let bad = postcard::to_allocvec("EU WEST").unwrap();
        assert!(postcard::from_bytes::<RegionId>(&bad).is_err());
    }
}
