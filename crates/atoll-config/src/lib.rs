//! atoll.toml config (being written).
