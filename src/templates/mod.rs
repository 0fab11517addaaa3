//! Rendering of user-data and pushed files from a profile and the cluster's facts.
//!
//! Pure data in, text out: one handlebars registry per profile, strict mode (a missing variable
//! is an error naming the template and the variable, never an empty string) and no HTML escaping
//! (the default escaper turns `&` into `&amp;`, which breaks shell scripts).
//!
//! Two contexts exist, because a cloud launches master and workers together, before any address
//! is known, and launches all the nodes of a role in one call, with one user-data:
//! - boot (user-data, one per role): cluster, owner, role, request id, profile, env, and
//!   `image_build` (true only when `admin image build` bakes an image of the profile). A node learns
//!   its own index at boot (EC2's `ami-launch-index` in the instance metadata, plus the batch's
//!   first index in the `stratus:first-index` tag; `STRATUS_NODE_INDEX` on a local node);
//! - configure (pushed files, per node): all of the above plus the node's `index` and
//!   `node_name`, and `master`, `workers` and `node` with their addresses.
//!
//! Secrets are never part of either context; `check_user_data` also refuses rendered user-data
//! that looks like it carries a private key or an AWS secret, since user-data is readable by
//! anyone who can query the instance.

use std::collections::BTreeMap;
use std::io::Write;

use handlebars::{Handlebars, RenderErrorReason, handlebars_helper};
use serde::Serialize;

use crate::config::profile::{Profile, RoleSettings};
use crate::core::model::{Role, shell_quote};

/// EC2 accepts at most 16 KB of user data; stratus sends it gzipped (cloud-init unpacks it).
pub const USER_DATA_LIMIT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {template}: syntax error: {message}")]
    Syntax { template: String, message: String },
    #[error("template {template}{}: variable `{variable}` is not defined", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    MissingVariable {
        template: String,
        variable: String,
        line: Option<usize>,
    },
    #[error("template {template}: {message}")]
    Render { template: String, message: String },
    #[error(
        "template {template}: rendered user-data is {size} bytes after gzip; EC2 allows {USER_DATA_LIMIT}"
    )]
    TooLarge { template: String, size: usize },
    #[error(
        "template {template}: rendered user-data contains what looks like {what}; secrets must never go into user-data (it is readable from the instance)"
    )]
    Secret {
        template: String,
        what: &'static str,
    },
}

/// The profile as templates see it (`{{profile.…}}`): its settings without the template texts.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileFacts<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub max_workers: u32,
    pub ssh_user: &'a str,
    pub ssh_port: u16,
    pub workers_file: Option<&'a str>,
    pub ports: &'a [u16],
    pub master: &'a RoleSettings,
    pub worker: &'a RoleSettings,
    pub vars: &'a BTreeMap<String, serde_json::Value>,
}

impl<'a> From<&'a Profile> for ProfileFacts<'a> {
    fn from(p: &'a Profile) -> Self {
        Self {
            name: &p.name,
            description: &p.description,
            max_workers: p.max_workers,
            ssh_user: &p.ssh_user,
            ssh_port: p.ssh_port,
            workers_file: p.workers_file.as_deref(),
            ports: &p.ports,
            master: &p.master,
            worker: &p.worker,
            vars: &p.vars,
        }
    }
}

/// What user-data is rendered with: the same for every node of a role.
#[derive(Debug, Clone, Serialize)]
pub struct BootContext<'a> {
    pub cluster: &'a str,
    pub owner: &'a str,
    pub role: Role,
    pub request_id: &'a str,
    pub profile: ProfileFacts<'a>,
    pub env: &'a BTreeMap<String, String>,
    /// True in the user-data of an image build (`stratus admin image build`): install only,
    /// start nothing, report phase `done` when the node can be baked.
    pub image_build: bool,
}

/// A node as configure-time templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFacts {
    pub name: String,
    pub role: Role,
    pub index: u32,
    /// The address stratus reaches the node at (per the site's `address` setting).
    pub address: String,
    /// The address the cluster's nodes reach each other at (the private IP on EC2).
    pub private_address: String,
}

/// What pushed files are rendered with: the boot context of the target node plus every address.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigureContext<'a> {
    #[serde(flatten)]
    pub boot: BootContext<'a>,
    pub index: u32,
    pub node_name: String,
    pub node: NodeFacts,
    pub master: NodeFacts,
    pub workers: Vec<NodeFacts>,
}

handlebars_helper!(quote_helper: |s: Json| {
    let text = match s {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    shell_quote(&text)
});

/// The templates of one profile, parsed once.
pub struct Renderer {
    hb: Handlebars<'static>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").finish_non_exhaustive()
    }
}

impl Renderer {
    pub fn for_profile(profile: &Profile) -> Result<Self, TemplateError> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_helper("quote", Box::new(quote_helper));
        for (name, text) in &profile.templates {
            hb.register_template_string(name, text)
                .map_err(|e| TemplateError::Syntax {
                    template: name.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(Self { hb })
    }

    /// Renders one template with any serializable context.
    pub fn render<T: Serialize>(&self, template: &str, ctx: &T) -> Result<String, TemplateError> {
        self.hb.render(template, ctx).map_err(|e| {
            let name = e
                .template_name
                .clone()
                .unwrap_or_else(|| template.to_owned());
            match e.reason() {
                RenderErrorReason::MissingVariable(var) => TemplateError::MissingVariable {
                    template: name,
                    variable: var.clone().unwrap_or_else(|| "?".into()),
                    line: e.line_no,
                },
                _ => TemplateError::Render {
                    template: name,
                    message: e.to_string(),
                },
            }
        })
    }

    /// Renders a node's user-data and checks it can be sent: size after gzip and no secrets.
    pub fn user_data(
        &self,
        template: &str,
        ctx: &BootContext<'_>,
    ) -> Result<String, TemplateError> {
        let text = self.render(template, ctx)?;
        check_user_data(template, &text)?;
        Ok(text)
    }
}

/// Gzips user-data as it is sent to a cloud.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// User-data of several parts, as cloud-init reads it (a MIME multi-part message): each part
/// named (cloud-init runs shell-script parts in the order of their names) and typed by its
/// first line, `#cloud-config` or a `#!` script. The boundary is one no part contains.
pub fn multipart(parts: &[(&str, &str)]) -> String {
    let mut n = 0u32;
    let boundary = loop {
        let b = format!("==stratus-part-boundary-{n}==");
        if !parts.iter().any(|(_, text)| text.contains(&b)) {
            break b;
        }
        n += 1;
    };
    let mut out =
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    for (name, text) in parts {
        let kind = if text.starts_with("#cloud-config") {
            "text/cloud-config"
        } else if text.starts_with("#!") {
            "text/x-shellscript"
        } else {
            "text/plain"
        };
        out.push_str(&format!(
            "--{boundary}\nContent-Type: {kind}; charset=\"utf-8\"\nMIME-Version: 1.0\nContent-Transfer-Encoding: 8bit\nContent-Disposition: attachment; filename=\"{name}\"\n\n{text}"
        ));
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&format!("--{boundary}--\n"));
    out
}

/// The parts of a multi-part user-data (`multipart`), as cloud-init splits it: each part's
/// file name and body; `None` if `text` is not one.
pub fn split_multipart(text: &str) -> Option<Vec<(String, String)>> {
    let head = text.lines().next()?;
    let rest = head.strip_prefix("Content-Type: multipart/mixed; boundary=\"")?;
    let boundary = format!("--{}", rest.strip_suffix('"')?);
    let mut parts = Vec::new();
    for chunk in text.split(&boundary).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        let chunk = chunk.strip_prefix('\n').unwrap_or(chunk);
        let (headers, body) = chunk.split_once("\n\n")?;
        let name = headers
            .lines()
            .find_map(|l| l.split_once("filename=\""))
            .and_then(|(_, n)| n.strip_suffix('"'))
            .unwrap_or("part")
            .to_owned();
        parts.push((name, body.to_owned()));
    }
    Some(parts)
}

pub fn check_user_data(template: &str, text: &str) -> Result<(), TemplateError> {
    let lower = text.to_ascii_lowercase();
    let secret = if lower.contains("private key-----") {
        Some("a private key")
    } else if lower.contains("aws_secret_access_key") {
        Some("an AWS secret access key")
    } else {
        None
    };
    if let Some(what) = secret {
        return Err(TemplateError::Secret {
            template: template.to_owned(),
            what,
        });
    }
    let size = gzip(text.as_bytes()).len();
    if size > USER_DATA_LIMIT {
        return Err(TemplateError::TooLarge {
            template: template.to_owned(),
            size,
        });
    }
    Ok(())
}

impl From<TemplateError> for crate::core::error::Error {
    fn from(e: TemplateError) -> Self {
        crate::core::error::Error::wrap(crate::core::error::Kind::BadInput, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(template: &str) -> Profile {
        let mut p = Profile::for_tests("p");
        p.templates.insert("t.hbs".into(), template.into());
        p
    }

    fn ctx<'a>(p: &'a Profile, env: &'a BTreeMap<String, String>) -> BootContext<'a> {
        BootContext {
            cluster: "demo",
            owner: "alice",
            role: Role::Worker,
            request_id: "req-1",
            profile: p.into(),
            env,
            image_build: false,
        }
    }

    #[test]
    fn a_multipart_user_data_splits_into_its_parts_in_order() {
        let guard = "#!/bin/bash\necho guard\n";
        // A part that holds the first boundary stratus would pick gets another.
        let profile = "#!/bin/bash\necho '--==stratus-part-boundary-0=='\n";
        let text = multipart(&[("00-guard.sh", guard), ("50-user-data", profile)]);
        assert!(
            text.contains("boundary=\"==stratus-part-boundary-1==\""),
            "{text}"
        );
        assert!(text.contains("Content-Type: text/x-shellscript"), "{text}");
        let parts = split_multipart(&text).unwrap();
        assert_eq!(
            parts,
            vec![
                ("00-guard.sh".to_owned(), guard.to_owned()),
                ("50-user-data".to_owned(), profile.to_owned())
            ]
        );
        assert_eq!(split_multipart(guard), None);
        let config = multipart(&[("c", "#cloud-config\nruncmd: []")]);
        assert!(
            config.contains("Content-Type: text/cloud-config"),
            "{config}"
        );
    }

    #[test]
    fn renders_without_html_escaping() {
        let p = profile("{{cluster}} {{role}} {{env.X}} && {{quote env.Y}}");
        let env = BTreeMap::from([("X".into(), "a&b".into()), ("Y".into(), "it's".into())]);
        let r = Renderer::for_profile(&p).unwrap();
        assert_eq!(
            r.user_data("t.hbs", &ctx(&p, &env)).unwrap(),
            r"demo worker a&b && 'it'\''s'"
        );
    }

    #[test]
    fn missing_variable_names_template_and_variable() {
        let p = profile("line one\n{{master.address}}\n");
        let env = BTreeMap::new();
        let r = Renderer::for_profile(&p).unwrap();
        let err = r
            .user_data("t.hbs", &ctx(&p, &env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.hbs"), "{err}");
        assert!(err.contains("master.address"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn oversized_and_secret_user_data_is_refused() {
        // Random-looking text does not compress below the limit.
        let mut big = String::new();
        let mut x: u64 = 1;
        for _ in 0..40_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            big.push(char::from(b'a' + (x >> 59) as u8 % 26));
        }
        assert!(matches!(
            check_user_data("t", &big),
            Err(TemplateError::TooLarge { .. })
        ));
        assert!(matches!(
            check_user_data("t", "-----BEGIN OPENSSH PRIVATE KEY-----"),
            Err(TemplateError::Secret { .. })
        ));
        assert!(check_user_data("t", &"echo hello\n".repeat(5000)).is_ok());
    }

    #[test]
    fn user_data_is_per_role_and_knows_no_node_index() {
        let p = profile("{{node_name}}");
        let env = BTreeMap::new();
        let err = Renderer::for_profile(&p)
            .unwrap()
            .user_data("t.hbs", &ctx(&p, &env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("node_name"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_template() {
        let p = profile("{{#if x}}unclosed");
        let err = Renderer::for_profile(&p).unwrap_err().to_string();
        assert!(err.contains("t.hbs"), "{err}");
    }
}
