//! What `admin install` writes for the machine's service managers: the class service's systemd
//! units (`NAME.socket`, `NAME.service` in /etc/systemd/system) and the cron file of the
//! accounting side (/etc/cron.d/NAME), where systemd and cron read them whatever the prefix.
//!
//! NAME is `stratus` for the default install and `stratus-` followed by the prefix's components
//! for one under `--prefix` (`/opt/class` gives `stratus-opt-class`), so that two installs on
//! one machine (a class and its rehearsal, or tests) never overwrite each other's files. Each
//! file starts with a line naming the install it belongs to; an install refuses to replace a
//! file of another install, or one it did not write.

use std::path::Path;

/// The first line of every file written here, naming its install (`/` for the default one).
pub fn header(install: &str) -> String {
    format!("# written by `stratus admin install` for the install under {install}")
}

/// Which install wrote `text`, if one did: `Some(install)` from our header, `Some("/")` for the
/// cron file of an install made before headers existed.
pub fn owner_of(text: &str) -> Option<String> {
    let first = text.lines().next().unwrap_or("");
    if let Some(rest) = first.strip_prefix(&header("")) {
        return Some(rest.to_owned());
    }
    first
        .starts_with("# stratus accounting:")
        .then(|| "/".to_owned())
}

/// What the units and the cron file say.
pub struct Unit<'a> {
    /// `stratus`, `stratus-opt-class`.
    pub name: &'a str,
    /// The prefix, or `/`.
    pub install: &'a str,
    pub cli: &'a Path,
    pub config: &'a Path,
    pub state: &'a Path,
    pub socket: &'a Path,
    pub user: &'a str,
    pub group: &'a str,
}

impl Unit<'_> {
    /// The socket, in a directory of root's (systemd makes it, 0755), open to every local user
    /// (0666): the service learns who connects from SO_PEERCRED, not from the file's mode.
    pub fn socket_unit(&self) -> String {
        format!(
            "{header}\n\
             [Unit]\n\
             Description=stratus class service socket ({install})\n\
             \n\
             [Socket]\n\
             ListenStream={socket}\n\
             SocketUser=root\n\
             SocketGroup=root\n\
             SocketMode=0666\n\
             DirectoryMode=0755\n\
             RemoveOnStop=yes\n\
             \n\
             [Install]\n\
             WantedBy=sockets.target\n",
            header = header(self.install),
            install = self.install,
            socket = self.socket.display(),
        )
    }

    /// The service: `stratus serve` as the service account, which can write its state
    /// directory and nothing else of the file system, with no capability, no new privileges,
    /// no devices, no view of other processes or of the kernel's knobs.
    pub fn service_unit(&self) -> String {
        format!(
            "{header}\n\
             [Unit]\n\
             Description=stratus class service ({install})\n\
             Requires={name}.socket\n\
             After={name}.socket network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             Type=simple\n\
             User={user}\n\
             Group={group}\n\
             ExecStart={cli} serve --config {config}\n\
             Restart=on-failure\n\
             RestartSec=5s\n\
             UMask=0077\n\
             # Each launch holds up to [ssh] max_parallel (16) SSH connections at once: a class\n\
             # of 60 launching together would pass systemd's default of 1024 open files.\n\
             LimitNOFILE=65536\n\
             NoNewPrivileges=yes\n\
             ProtectSystem=strict\n\
             ReadWritePaths={state}\n\
             ProtectHome=yes\n\
             PrivateTmp=yes\n\
             PrivateDevices=yes\n\
             ProtectKernelTunables=yes\n\
             ProtectKernelModules=yes\n\
             ProtectKernelLogs=yes\n\
             ProtectControlGroups=yes\n\
             ProtectClock=yes\n\
             ProtectHostname=yes\n\
             ProtectProc=invisible\n\
             ProcSubset=pid\n\
             CapabilityBoundingSet=\n\
             AmbientCapabilities=\n\
             RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n\
             RestrictNamespaces=yes\n\
             RestrictRealtime=yes\n\
             RestrictSUIDSGID=yes\n\
             LockPersonality=yes\n\
             MemoryDenyWriteExecute=yes\n\
             SystemCallArchitectures=native\n\
             RemoveIPC=yes\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n\
             Also={name}.socket\n",
            header = header(self.install),
            install = self.install,
            name = self.name,
            user = self.user,
            group = self.group,
            cli = self.cli.display(),
            config = self.config.display(),
            state = self.state.display(),
        )
    }

    /// The cron lines of the accounting side, run as the service account: the snapshot every
    /// 5 minutes and the reaper every 15, each unless the class service runs it on a timer.
    pub fn cron_file(&self, snapshot: bool, reap: bool) -> String {
        let (cli, config, user) = (self.cli.display(), self.config.display(), self.user);
        let mut out = format!(
            "{}\n# stratus accounting: a snapshot of every instance every 5 minutes, the reaper every 15.\n",
            header(self.install)
        );
        if snapshot {
            out.push_str(&format!(
                "*/5 * * * * {user} {cli} --config {config} accounting snapshot --quiet\n"
            ));
        }
        if reap {
            out.push_str(&format!(
                "*/15 * * * * {user} {cli} --config {config} accounting reap --quiet\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit() -> Unit<'static> {
        Unit {
            name: "stratus-opt-class",
            install: "/opt/class",
            cli: Path::new("/opt/class/bin/stratus"),
            config: Path::new("/opt/class/etc/stratus/config.toml"),
            state: Path::new("/opt/class/var/lib/stratus"),
            socket: Path::new("/run/stratus/stratus-opt-class.sock"),
            user: "stratus",
            group: "stratus",
        }
    }

    #[test]
    fn every_file_names_its_install() {
        let u = unit();
        for text in [u.socket_unit(), u.service_unit(), u.cron_file(true, true)] {
            assert_eq!(owner_of(&text).as_deref(), Some("/opt/class"), "{text}");
        }
        assert_eq!(
            owner_of("# stratus accounting: a snapshot ...\n*/5 ...").as_deref(),
            Some("/")
        );
        assert_eq!(owner_of("# my own cron lines\n"), None);
    }

    #[test]
    fn the_service_runs_serve_as_the_service_account_hardened() {
        let s = unit().service_unit();
        for line in [
            "User=stratus",
            "ExecStart=/opt/class/bin/stratus serve --config /opt/class/etc/stratus/config.toml",
            "NoNewPrivileges=yes",
            "LimitNOFILE=65536",
            "ProtectSystem=strict",
            "ReadWritePaths=/opt/class/var/lib/stratus",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "Requires=stratus-opt-class.socket",
        ] {
            assert!(s.lines().any(|l| l == line), "{line} in {s}");
        }
        let sock = unit().socket_unit();
        assert!(sock.contains("ListenStream=/run/stratus/stratus-opt-class.sock\n"));
        assert!(sock.contains("SocketMode=0666\n"));
        let cron = unit().cron_file(false, true);
        assert!(!cron.contains("snapshot --quiet"), "{cron}");
        assert!(cron.contains("*/15 * * * * stratus /opt/class/bin/stratus --config /opt/class/etc/stratus/config.toml accounting reap --quiet\n"));
    }
}
