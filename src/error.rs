//! The typed error of the library. Every variant names the input it came from and,
//! where one exists, the line, so that a message read at 3 a.m. says what to fix.

use std::path::PathBuf;

/// What can go wrong while reading inputs or building a scan.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file could not be opened or read. The I/O error is the source, not part
    /// of this text: the command prints the chain, and said it twice.
    #[error("cannot read {path} (check the path and that this user may read it)")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `log_format` definition could not be compiled.
    #[error("log format {name:?}: {message}")]
    LogFormat { name: String, message: String },
    /// A command-line value is out of range or malformed.
    #[error("{option}: {message}")]
    Option { option: &'static str, message: String },
    /// Writing the result failed.
    #[error("writing output")]
    Output(#[source] std::io::Error),
    /// A review bundle could not be written (nothing of it was left in its place).
    #[error("review bundle {path}: {message}")]
    Bundle { path: PathBuf, message: String },
}

impl Error {
    /// Builds an [`Error::Option`] with a formatted message.
    pub fn option(option: &'static str, message: impl Into<String>) -> Self {
        Error::Option { option, message: message.into() }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
