//! The one error type the commands return, and the mapping to exit codes.
//!
//! Each layer has its own error enum (config, profiles, templates, store, provider, SSH); this
//! type wraps them, so `main` can print `error: …` with one `caused by: …` line per cause and pick
//! the exit code: 2 for bad input or a refusal by policy, 1 for a failure at run time.

use std::error::Error as StdError;

pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Exit codes, documented in `--help`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    /// Stopped by SIGINT (^C): 128 + 2, the shell's convention.
    pub const INTERRUPTED: u8 = 130;
}

pub use crate::core::model::InputError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Profile(#[from] crate::config::profile::ProfileError),
    #[error(transparent)]
    Template(#[from] crate::templates::TemplateError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Provider(#[from] crate::cluster::provider::ProviderError),
    #[error(transparent)]
    Ssh(#[from] crate::cluster::ssh::SshError),
    /// The runner of the privileged path refused or failed; `exit` is the code it chose.
    #[error("{message}")]
    Remote { message: String, exit: u8 },
    /// A signal stopped the command (a launch rolls back first).
    #[error("{message}")]
    Interrupted {
        signal: crate::cluster::interrupt::Signal,
        message: String,
    },
    #[error("{message}")]
    Runtime {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    pub fn runtime(message: impl Into<String>) -> Self {
        Error::Runtime {
            message: message.into(),
            source: None,
        }
    }

    /// A launch stopped by `signal`.
    pub fn interrupted(signal: crate::cluster::interrupt::Signal) -> Self {
        Error::Interrupted {
            signal,
            message: format!("launch {}", signal.describe()),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Input(InputError::Invalid(message.into()))
    }

    /// Attaches a cause to a runtime error (other kinds keep their own causes).
    pub fn with_source(self, source: impl Into<BoxError>) -> Self {
        match self {
            Error::Runtime { message, .. } => Error::Runtime {
                message,
                source: Some(source.into()),
            },
            other => other,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) | Error::Config(_) | Error::Profile(_) | Error::Template(_) => {
                exit::BAD_INPUT
            }
            Error::Provider(e) if e.is_bad_input() => exit::BAD_INPUT,
            Error::Interrupted { signal, .. } => signal.exit_code(),
            Error::Remote { exit, .. } => *exit,
            _ => exit::FAILURE,
        }
    }

    /// Whether this error is only a closed stdout (`stratus list | head`), which is not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let message = e.to_string();
        Error::Runtime {
            message,
            source: Some(Box::new(e)),
        }
    }
}

/// Formats an error as `error: …` and one `caused by: …` line per distinct cause.
pub fn render(err: &(dyn StdError + 'static)) -> String {
    let mut out = format!("error: {err}");
    let mut last = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        // Wrappers often repeat their cause's text; say each thing once.
        if !last.contains(&msg) {
            out.push_str(&format!("\n  caused by: {msg}"));
        }
        last = msg;
        cur = e.source();
    }
    out
}

/// An error as one line without the `error: ` prefix, its causes joined with `: ` (for
/// warnings and for the failure reason stored with a cluster).
pub fn one_line(err: &(dyn StdError + 'static)) -> String {
    render(err)
        .trim_start_matches("error: ")
        .replace("\n  caused by: ", ": ")
}
