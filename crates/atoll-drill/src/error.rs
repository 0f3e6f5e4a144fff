//! Errors of the drill engine: like `atoll_core::AtollError`, each has a stable code
//! (`ATOLL-DRILL-...`), whether trying again may help, and a hint for the operator.

use thiserror::Error;

pub type Result<T, E = DrillError> = std::result::Result<T, E>;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrillError {
    /// A scenario file that does not parse or does not validate. `file:line: message`.
    #[error("{file}:{line}: {message}")]
    Scenario {
        file: String,
        line: usize,
        message: String,
    },
    /// A scenario that does not fit the cluster it is run against.
    #[error("{file}:{line}: {message} (cluster config {config})")]
    Mismatch {
        file: String,
        line: usize,
        config: String,
        message: String,
    },
    /// The cluster config could not be read.
    #[error("cluster config: {0}")]
    Config(String),
    /// The demo discovery file is missing, unreadable or of another version.
    #[error("demo discovery: {0}")]
    Discovery(String),
    /// A control API (router admin, link control, region admin, demo control) refused a request
    /// or could not be reached.
    #[error("{what}: {message}")]
    Control {
        what: String,
        message: String,
        retryable: bool,
    },
    /// A configured shell command failed.
    #[error("command `{command}` failed: {message}")]
    Command { command: String, message: String },
    /// The outcome store could not be read or written.
    #[error("outcome store {path}: {message}")]
    Store { path: String, message: String },
    /// Reading back the acknowledged writes after the drill failed.
    #[error("read-back: {0}")]
    ReadBack(String),
    /// Writing a report failed.
    #[error("report {path}: {message}")]
    Report { path: String, message: String },
}

impl DrillError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            DrillError::Scenario { .. } => "ATOLL-DRILL-SCENARIO",
            DrillError::Mismatch { .. } => "ATOLL-DRILL-SCENARIO-MISMATCH",
            DrillError::Config(_) => "ATOLL-DRILL-CONFIG",
            DrillError::Discovery(_) => "ATOLL-DRILL-DISCOVERY",
            DrillError::Control { .. } => "ATOLL-DRILL-CONTROL",
            DrillError::Command { .. } => "ATOLL-DRILL-COMMAND",
            DrillError::Store { .. } => "ATOLL-DRILL-STORE",
            DrillError::ReadBack(_) => "ATOLL-DRILL-READBACK",
            DrillError::Report { .. } => "ATOLL-DRILL-REPORT",
        }
    }

    /// Whether running the same thing again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            DrillError::Control { retryable, .. } => *retryable,
            DrillError::ReadBack(_) | DrillError::Command { .. } => true,
            _ => false,
        }
    }

    /// What the operator can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            DrillError::Scenario { .. } => {
                "fix the scenario at the line named; docs/drills.md lists every step and its fields"
            }
            DrillError::Mismatch { .. } => {
                "the scenario names a region, keyspace or step the cluster does not have: pick another scenario or adapt it"
            }
            DrillError::Config(_) => "check the file with `atoll config check`",
            DrillError::Discovery(_) => {
                "start `atoll demo --port-base N` first and pass the same --port-base, or use --config"
            }
            DrillError::Control { .. } => {
                "check that the router admin API, the link control API and the regions are up and that ATOLL_ADMIN_TOKEN is right"
            }
            DrillError::Command { .. } => "run the configured command by hand to see why it fails",
            DrillError::Store { .. } => "check the state directory's permissions (--state-dir)",
            DrillError::ReadBack(_) => {
                "some region did not answer the read-back: the data check is incomplete; run the drill again once the cluster is healthy"
            }
            DrillError::Report { .. } => "check the report path",
        }
    }

    pub(crate) fn control(
        what: impl Into<String>,
        message: impl Into<String>,
        retryable: bool,
    ) -> Self {
        DrillError::Control {
            what: what.into(),
            message: message.into(),
            retryable,
        }
    }
}
