//! Shared by the drill crate's tests (and, through `#[path]`, its `testkit_drill` example).

pub mod kit;
