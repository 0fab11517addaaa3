//! A secret (an AWS secret access key, a private SSH key as EC2 hands it over) that never
//! prints: its `Debug` is `<redacted>` and it has no `Display`, so no log line, error message or
//! `{:?}` of a struct that holds one can show it. It crosses the wire as a plain string (the
//! one place it must appear: the answer to its owner's own client), and is exposed by name
//! where it is written into its owner's file.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the places that write it into its owner's file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_but_crosses_the_wire_whole() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Holder {
            id: String,
            secret: Secret,
        }
        let h = Holder {
            id: "AKIA1".into(),
            secret: Secret::new("s3cr3t/value"),
        };
        let shown = format!("{h:?} {h:#?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let wire = serde_json::to_string(&h).unwrap();
        assert_eq!(wire, r#"{"id":"AKIA1","secret":"s3cr3t/value"}"#);
        let back: Holder = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.secret.expose(), "s3cr3t/value");
    }
}
