//! The runner's environment, built fresh from an allow-list.
//!
//! The caller's environment is hostile: `LD_PRELOAD`, `GCONV_PATH` and `GLIBC_TUNABLES` reach
//! the dynamic loader and libc, `AWS_*` redirects or reconfigures the SDK (`AWS_ENDPOINT_URL`,
//! `AWS_CONFIG_FILE` with a `credential_process`), `*_PROXY` and `SSL_CERT_*` redirect or
//! weaken TLS, `STRATUS_*` would reach the runner's own settings. So nothing is filtered in
//! place: the child's environment is made from fixed values for `PATH`, `HOME`, `USER` and
//! `LOGNAME`, plus `TERM`, `LANG` and `LC_*` copied only when their values look like a terminal
//! name or a locale name (no `/`, no `..`: a locale or terminfo name must not become a path).
//! The policy follows sudo-rs's `env_check` and the `env_keep` defaults of sudo.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use crate::placeholder::WrapConfig;

/// The runner's fixed `PATH`.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The longest `TERM`, `LANG` or `LC_*` value that is passed on.
const MAX_VALUE: usize = 64;

/// The runner's environment: the fixed variables, then `TERM`, `LANG` and the `LC_*` variables
/// of `caller_env` that pass their checks (the first occurrence of a name wins, as with
/// `getenv`), sorted by name. Everything else in `caller_env` is dropped.
pub fn child_env(
    caller_env: &[(OsString, OsString)],
    cfg: &WrapConfig,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), cfg.service_home.clone().into_os_string()),
        ("USER".into(), cfg.service_user.clone().into()),
        ("LOGNAME".into(), cfg.service_user.clone().into()),
    ];
    let fixed = env.len();
    let mut seen: HashSet<&OsString> = HashSet::new();
    for (name, value) in caller_env {
        if !seen.insert(name) {
            continue;
        }
        if env.iter().all(|(n, _)| n != name) && keep(name.as_bytes(), value.as_bytes()) {
            env.push((name.clone(), value.clone()));
        }
    }
    env[fixed..].sort();
    env
}

/// Whether a caller variable passes the allow-list.
fn keep(name: &[u8], value: &[u8]) -> bool {
    match name {
        b"TERM" => sane(value, |b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)),
        b"LANG" => locale(value),
        _ => is_lc_name(name) && locale(value),
    }
}

/// `LC_` followed by one or more upper-case letters (`LC_ALL`, `LC_CTYPE`, ...).
fn is_lc_name(name: &[u8]) -> bool {
    name.strip_prefix(b"LC_")
        .is_some_and(|rest| !rest.is_empty() && rest.iter().all(u8::is_ascii_uppercase))
}

/// A locale name such as `C.UTF-8`, `en_US.UTF-8` or `de_DE@euro`: never a path.
fn locale(value: &[u8]) -> bool {
    sane(value, |b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        && !value.windows(2).any(|w| w == b"..")
}

fn sane(value: &[u8], allowed: impl Fn(u8) -> bool) -> bool {
    (1..=MAX_VALUE).contains(&value.len()) && value.iter().all(|&b| allowed(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStringExt;

    /// The environment as `(name, value)` pairs.
    fn pairs<I, K, V>(vars: I) -> Vec<(OsString, OsString)>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        vars.into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect()
    }

    fn cfg() -> WrapConfig {
        WrapConfig {
            runner: "/opt/stratus/bin/stratus".into(),
            config: "/opt/stratus/etc/stratus/config.toml".into(),
            wrapper: "/opt/stratus/bin/stratus-wrap".into(),
            service_user: "stratus".into(),
            service_uid: 998,
            service_gid: 997,
            service_home: "/var/lib/stratus".into(),
        }
    }

    fn fixed() -> Vec<(OsString, OsString)> {
        pairs([
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", "/var/lib/stratus"),
            ("USER", "stratus"),
            ("LOGNAME", "stratus"),
        ])
    }

    fn run(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        child_env(&pairs(vars.iter().copied()), &cfg())
    }

    #[test]
    fn an_empty_caller_environment_gives_the_fixed_variables() {
        assert_eq!(run(&[]), fixed());
    }

    /// Each of these is dropped, whatever its value.
    const HOSTILE: &[(&str, &str)] = &[
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("LD_LIBRARY_PATH", "/tmp"),
        ("LD_AUDIT", "/tmp/evil.so"),
        ("LD_DEBUG", "all"),
        ("IFS", " /"),
        ("GLIBC_TUNABLES", "glibc.malloc.mxfast=0"),
        ("GCONV_PATH", "/tmp/gconv"),
        ("LOCPATH", "/tmp/locale"),
        ("NLSPATH", "/tmp/%N"),
        ("MALLOC_CHECK_", "3"),
        ("TMPDIR", "/tmp/evil"),
        ("TZ", "../../../tmp/evil"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
        ("AWS_CONFIG_FILE", "/tmp/config"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/tmp/creds"),
        ("AWS_ACCESS_KEY_ID", "AKIAEVIL"),
        ("AWS_SECRET_ACCESS_KEY", "evil"),
        ("AWS_PROFILE", "evil"),
        ("AWS_REGION", "us-evil-1"),
        ("STRATUS_CONFIG", "/tmp/stratus.toml"),
        ("STRATUS_STATE_DIR", "/tmp/state"),
        ("HTTP_PROXY", "http://evil:3128"),
        ("HTTPS_PROXY", "http://evil:3128"),
        ("http_proxy", "http://evil:3128"),
        ("https_proxy", "http://evil:3128"),
        ("ALL_PROXY", "socks5://evil"),
        ("NO_PROXY", "*"),
        ("SSL_CERT_FILE", "/tmp/ca.pem"),
        ("SSL_CERT_DIR", "/tmp/ca"),
        ("RUST_LOG", "trace"),
        ("RUST_BACKTRACE", "full"),
        ("BASH_ENV", "/tmp/evil.sh"),
        ("ENV", "/tmp/evil.sh"),
        ("SHELLOPTS", "xtrace"),
        ("PS4", "$(touch /tmp/pwned)"),
        ("PYTHONPATH", "/tmp"),
        ("PERL5LIB", "/tmp"),
        ("TERMINFO", "/tmp/terminfo"),
        ("TERMINFO_DIRS", "/tmp/terminfo"),
        ("LANGUAGE", "en"),
        ("SHELL", "/tmp/evil"),
        ("EDITOR", "/tmp/evil"),
        ("SUDO_USER", "root"),
        ("lc_all", "C"),
        ("LC_", "C"),
        ("LC_all", "C"),
        ("LC_1", "C"),
        ("XLC_ALL", "C"),
        ("TERMX", "xterm"),
    ];

    #[test]
    fn hostile_variables_are_dropped() {
        for (name, value) in HOSTILE {
            assert_eq!(run(&[(name, value)]), fixed(), "{name}={value} was kept");
        }
        assert_eq!(run(HOSTILE), fixed());
    }

    #[test]
    fn the_fixed_variables_are_never_taken_from_the_caller() {
        let env = run(&[
            ("PATH", "/tmp/evil:/usr/bin"),
            ("HOME", "/tmp/evil"),
            ("USER", "root"),
            ("LOGNAME", "root"),
        ]);
        assert_eq!(env, fixed());
    }

    #[test]
    fn sane_terminal_and_locale_variables_are_kept_sorted() {
        let env = run(&[
            ("LC_TIME", "en_GB.UTF-8"),
            ("TERM", "xterm-256color"),
            ("AWS_PROFILE", "x"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "de_DE@euro"),
            ("LC_MESSAGES", "POSIX"),
        ]);
        let mut want = fixed();
        want.extend(pairs([
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "de_DE@euro"),
            ("LC_MESSAGES", "POSIX"),
            ("LC_TIME", "en_GB.UTF-8"),
            ("TERM", "xterm-256color"),
        ]));
        assert_eq!(env, want);
    }

    /// (name, value, kept?)
    const VALUES: &[(&str, &str, bool)] = &[
        ("TERM", "xterm", true),
        ("TERM", "screen.xterm-256color", true),
        ("TERM", "rxvt-unicode+x", true),
        ("TERM", "", false),
        ("TERM", "../../tmp/evil", false),
        ("TERM", "/tmp/terminfo/x", false),
        ("TERM", "xterm color", false),
        ("TERM", "xterm\x1b[31m", false),
        ("TERM", "xterm@1", false),
        ("LANG", "C", true),
        ("LANG", "en_US.UTF-8", true),
        ("LANG", "sr_RS@latin", true),
        ("LANG", "", false),
        ("LANG", "/tmp/locale", false),
        ("LANG", "..", false),
        ("LANG", "en_US..UTF-8", false),
        ("LANG", "C.UTF-8+x", false),
        ("LANG", "C UTF-8", false),
        ("LC_CTYPE", "C.UTF-8", true),
        ("LC_CTYPE", "../../../../tmp/evil", false),
        ("LC_ALL", "%n%n%n", false),
        ("LC_ALL", "C\n", false),
    ];

    #[test]
    fn values_are_checked() {
        for (name, value, kept) in VALUES {
            let env = run(&[(name, value)]);
            let got = env.len() == fixed().len() + 1;
            assert_eq!(got, *kept, "{name}={value:?}");
        }
        let at_limit = "x".repeat(MAX_VALUE);
        assert_eq!(run(&[("TERM", &at_limit)]).len(), 5);
        let too_long = "x".repeat(MAX_VALUE + 1);
        assert_eq!(run(&[("TERM", &too_long)]), fixed());
        assert_eq!(run(&[("LANG", &too_long)]), fixed());
    }

    #[test]
    fn non_utf8_values_are_dropped() {
        let caller = vec![
            ("TERM".into(), OsString::from_vec(b"xterm\xff".to_vec())),
            (OsString::from_vec(b"LC_\xc3\x89".to_vec()), "C".into()),
        ];
        assert_eq!(child_env(&caller, &cfg()), fixed());
    }

    #[test]
    fn the_first_occurrence_of_a_name_wins() {
        let env = run(&[("TERM", "vt100"), ("TERM", "xterm")]);
        assert_eq!(env.last().unwrap(), &("TERM".into(), "vt100".into()));
        assert_eq!(env.len(), 5);
        // An insane first value is not replaced by a later sane one: getenv would see the first.
        let env = run(&[("TERM", "../x"), ("TERM", "xterm")]);
        assert_eq!(env, fixed());
    }
}
