//! The OpenAPI 3.1 document of the client API, served at `GET /v1/openapi.json`.

/// The document (kept beside this file and checked against the router by tests).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");
