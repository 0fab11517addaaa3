//! The one error type that crosses layers, and what it is: its `Kind`.
//!
//! Each layer keeps its own error enum (config, profiles, templates, store, provider, SSH) and
//! converts into this type where it is defined (`impl From<StoreError> for Error` lives in
//! `store`), so this module names none of them. The kind says what happened to the request (bad
//! input, refused by policy, a failure at run time, interrupted by a signal); the exit code, the
//! verdict of an audit row and the error a remote caller sees are all derived from it, never the
//! other way round. `main` prints `error: …` with one `caused by: …` line per cause.

use std::error::Error as StdError;
use std::fmt;

use serde::{Deserialize, Serialize};

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

/// Why a command (a launch, above all) was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signal {
    Interrupt,
    Terminate,
    Hangup,
}

impl Signal {
    pub fn describe(self) -> &'static str {
        match self {
            Signal::Interrupt => "interrupted",
            Signal::Terminate => "terminated by a signal",
            Signal::Hangup => "stopped: the terminal hung up",
        }
    }

    /// The shell's exit status for death by this signal: 128 + its number.
    pub fn exit_code(self) -> u8 {
        let n = match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Hangup => libc::SIGHUP,
        };
        (128 + n) as u8
    }
}

/// What an error means for the request that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The request itself is wrong (a typo, a hostile name, a count out of range): nothing was
    /// created. Exit code 2.
    BadInput,
    /// The request is well formed, but the policy does not allow it (a quota, a budget, another
    /// user's cluster): nothing was created. Exit code 2.
    Refused,
    /// Something failed at run time (the cloud, SSH, the disk). Exit code 1.
    Failed,
    /// A signal stopped it (a launch rolls back first). Exit code 128 + the signal.
    Interrupted(Signal),
}

impl Kind {
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::BadInput | Kind::Refused => exit::BAD_INPUT,
            Kind::Failed => exit::FAILURE,
            Kind::Interrupted(s) => s.exit_code(),
        }
    }

    /// The decision an audit row records for a request that ended with this kind.
    pub fn verdict(self) -> &'static str {
        match self {
            Kind::BadInput | Kind::Refused => "refused",
            Kind::Failed => "failed",
            Kind::Interrupted(_) => "interrupted",
        }
    }
}

/// An error with its kind. Its text and causes are those of what it wraps: a layer's error
/// keeps its own message and `source()` chain.
pub struct Error {
    kind: Kind,
    inner: Inner,
}

enum Inner {
    Message {
        message: String,
        source: Option<BoxError>,
    },
    /// A layer's error, shown as itself (its Display and its causes).
    Wrapped(BoxError),
    /// Already told the user (by a program whose stderr is theirs): only the exit code is left.
    Said,
}

impl Error {
    /// An error of `kind` with its own message.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            inner: Inner::Message {
                message: message.into(),
                source: None,
            },
        }
    }

    /// A layer's error, as an error of `kind`: the same text, the same causes.
    pub fn wrap(kind: Kind, err: impl Into<BoxError>) -> Self {
        Self {
            kind,
            inner: Inner::Wrapped(err.into()),
        }
    }

    /// A failure whose message the user has already seen (the setuid wrapper's own refusal,
    /// on the terminal they share): nothing more is printed.
    pub fn already_said(kind: Kind) -> Self {
        Self {
            kind,
            inner: Inner::Said,
        }
    }

    /// Whether there is nothing left to print.
    pub fn is_said(&self) -> bool {
        matches!(self.inner, Inner::Said)
    }

    /// A failure at run time.
    pub fn runtime(message: impl Into<String>) -> Self {
        Self::new(Kind::Failed, message)
    }

    /// Bad input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::BadInput, message)
    }

    /// Refused by the policy (or by who the caller is).
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(Kind::Refused, message)
    }

    /// A launch stopped by `signal`.
    pub fn interrupted(signal: Signal) -> Self {
        Self::interrupted_with(signal, format!("launch {}", signal.describe()))
    }

    pub fn interrupted_with(signal: Signal, message: impl Into<String>) -> Self {
        Self::new(Kind::Interrupted(signal), message)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The signal that stopped the request, if one did.
    pub fn signal(&self) -> Option<Signal> {
        match self.kind {
            Kind::Interrupted(s) => Some(s),
            _ => None,
        }
    }

    /// Attaches a cause to an error with a message of its own (a wrapped error keeps its own
    /// causes).
    pub fn with_source(self, source: impl Into<BoxError>) -> Self {
        match self.inner {
            Inner::Message { message, .. } => Self {
                kind: self.kind,
                inner: Inner::Message {
                    message,
                    source: Some(source.into()),
                },
            },
            inner @ (Inner::Wrapped(_) | Inner::Said) => Self {
                kind: self.kind,
                inner,
            },
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
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
            cur = match e.downcast_ref::<Error>() {
                // Look inside a wrapped error too: it is `self`'s text, not a cause.
                Some(Error {
                    inner: Inner::Wrapped(w),
                    ..
                }) => Some(w.as_ref()),
                _ => e.source(),
            };
        }
        false
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Message { message, .. } => f.write_str(message),
            Inner::Wrapped(e) => fmt::Display::fmt(e, f),
            Inner::Said => f.write_str("(said above)"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {})", self.kind, one_line(self))
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.inner {
            Inner::Message { source, .. } => source.as_deref().map(|s| s as _),
            Inner::Wrapped(e) => e.source(),
            Inner::Said => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(Kind::Failed, e.to_string()).with_source(e)
    }
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Self {
        Error::wrap(Kind::BadInput, e)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_wrapped_error_keeps_its_text_and_causes_and_the_kind_decides_the_exit_code() {
        let e = Error::wrap(Kind::Failed, Outer(std::io::Error::other("disk on fire")));
        assert_eq!(render(&e), "error: outer\n  caused by: disk on fire");
        assert_eq!(e.exit_code(), exit::FAILURE);
        assert_eq!(Error::invalid("x").exit_code(), exit::BAD_INPUT);
        assert_eq!(Error::refused("x").exit_code(), exit::BAD_INPUT);
        assert_eq!(Error::refused("x").kind().verdict(), "refused");
        assert_eq!(Error::runtime("x").kind().verdict(), "failed");
        let i = Error::interrupted(Signal::Terminate);
        assert_eq!(i.exit_code(), 143);
        assert_eq!(i.to_string(), "launch terminated by a signal");
        assert_eq!(i.signal(), Some(Signal::Terminate));
    }

    #[test]
    fn a_message_takes_a_source_and_a_broken_pipe_is_seen_through_wrappers() {
        let e = Error::runtime("cannot write").with_source(std::io::Error::other("why"));
        assert_eq!(one_line(&e), "cannot write: why");
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(Error::from(pipe).is_broken_pipe());
        let wrapped = Error::wrap(
            Kind::Failed,
            Outer(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        );
        assert!(wrapped.is_broken_pipe());
        assert!(!Error::runtime("x").is_broken_pipe());
    }

    #[test]
    fn kinds_round_trip_on_the_wire() {
        for k in [
            Kind::BadInput,
            Kind::Refused,
            Kind::Failed,
            Kind::Interrupted(Signal::Hangup),
        ] {
            let text = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<Kind>(&text).unwrap(), k, "{text}");
        }
        assert_eq!(
            serde_json::to_string(&Kind::Refused).unwrap(),
            r#""refused""#
        );
    }
}
