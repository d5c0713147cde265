//! What lint reports: findings with a level, per file.

use serde::Serialize;

/// How bad a finding is: an error fails `rollguard lint`, a warning does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub file: String,
    /// `spec.metrics[0].errorRate.requests`; prefixed with `#N:` (the document, from 1) in a
    /// file of several documents.
    pub path: String,
    pub severity: Level,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        if self.path.is_empty() {
            write!(f, "{}: {severity}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}: {severity}: {}",
                self.file, self.path, self.message
            )
        }
    }
}

/// What one file holds and what is wrong with it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FileReport {
    pub file: String,
    pub templates: usize,
    pub rollouts: usize,
    pub findings: Vec<Finding>,
}

/// A finding before it is given its file: (path, level, message).
pub type Raw = (String, Level, String);

pub fn error(path: impl Into<String>, message: impl Into<String>) -> Raw {
    (path.into(), Level::Error, message.into())
}

pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Raw {
    (path.into(), Level::Warning, message.into())
}
