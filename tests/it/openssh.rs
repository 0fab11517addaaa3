//! The SSH client against OpenSSH's sshd, started on 127.0.0.1 by the test: exec with exit
//! status and both streams, upload, pinned host keys (and a mismatch), first-contact pinning,
//! a refused key, fan-out, and the readiness timeout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stratus::cluster::ssh::{self, Client, SshError, Target};

const SSHD: &str = "/usr/sbin/sshd";

struct Sshd {
    child: Child,
    port: u16,
    host_key: russh::keys::PublicKey,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_available() -> bool {
    if Path::new(SSHD).exists() {
        return true;
    }
    if std::env::var_os("STRATUS_REQUIRE_SSHD").is_some() {
        panic!("{SSHD} is missing and STRATUS_REQUIRE_SSHD is set (install openssh-server)");
    }
    crate::support::skip(&format!(
        "{SSHD} is not installed (./scripts/test installs openssh-server)"
    ));
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn user() -> String {
    stratus::sys::passwd(stratus::sys::real_uid())
        .unwrap()
        .expect("the test user has a passwd entry")
        .name
}

/// Starts sshd on 127.0.0.1 authorising `client_key`; returns once it speaks SSH.
fn start_sshd(client_key: &russh::keys::PrivateKey) -> Sshd {
    let dir = tempfile::tempdir().unwrap();
    let host = ssh::generate_key().unwrap();
    let host_path = dir.path().join("host_ed25519");
    stratus::core::files::write_private(
        &host_path,
        ssh::private_key_openssh(&host).unwrap().as_bytes(),
    )
    .unwrap();
    let auth = dir.path().join("authorized_keys");
    std::fs::write(
        &auth,
        format!("{}\n", ssh::public_key_openssh(client_key.public_key())),
    )
    .unwrap();
    // sshd insists on this directory when it runs as root.
    if stratus::sys::real_uid() == 0 {
        std::fs::create_dir_all("/run/sshd").unwrap();
    }
    let port = free_port();
    let config = dir.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             LogLevel ERROR\n",
            host_path.display(),
            auth.display(),
            dir.path().join("sshd.pid").display()
        ),
    )
    .unwrap();
    // Its log (`-e`: on stderr) goes to the test's captured output, not the console: a probe
    // below that hangs up after the banner makes it say `kex_exchange_identification`.
    let mut child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sshd");
    crate::support::forward_stderr(&mut child, "sshd");
    // Ready when it sends its SSH banner.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 4];
            if (&s).read_exact(&mut buf).is_ok() && &buf == b"SSH-" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sshd did not come up on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Sshd {
        child,
        port,
        host_key: host.public_key().clone(),
        _dir: dir,
    }
}

fn target(sshd: &Sshd, pinned: Option<russh::keys::PublicKey>) -> Target {
    Target {
        name: "sshd-node".into(),
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: user(),
        host_key: pinned,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn exec_upload_and_pinned_host_keys_against_openssh() {
    if !sshd_available() {
        return;
    }
    let key = ssh::generate_key().unwrap();
    let sshd = start_sshd(&key);
    let client = Client::new(key, Duration::from_secs(10));
    runtime().block_on(async {
        let s = client
            .connect(&target(&sshd, Some(sshd.host_key.clone())))
            .await
            .expect("connect with the pinned key");
        let out = s
            .exec("echo out; echo err >&2; cat; exit 5", Some(b"from stdin\n"))
            .await
            .unwrap();
        assert_eq!(out.status, Some(5));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nfrom stdin\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

        // Upload: byte for byte, with the mode, into a directory that does not exist yet.
        let dir = tempfile::tempdir().unwrap();
        let dest: PathBuf = dir.path().join("new dir/file.bin");
        let data: Vec<u8> = (0..1_000_000u32)
            .map(|i| (i.wrapping_mul(2246822519) >> 7) as u8)
            .collect();
        s.upload(&data, dest.to_str().unwrap(), 0o640)
            .await
            .unwrap();
        assert!(
            std::fs::read(&dest).unwrap() == data,
            "uploaded bytes differ"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o640
        );
        s.close().await;

        // First contact records the key the server presents: sshd's.
        let s = client.connect(&target(&sshd, None)).await.unwrap();
        assert_eq!(s.host_key.key_data(), sshd.host_key.key_data());
        s.close().await;

        // A different pinned key is a hard error naming the node, and is not retried.
        let other = ssh::generate_key().unwrap();
        let started = Instant::now();
        let err = client
            .wait_ready(
                &target(&sshd, Some(other.public_key().clone())),
                Duration::from_secs(30),
            )
            .await
            .err()
            .expect("a mismatched host key must fail");
        assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("sshd-node"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "mismatch was retried"
        );
    });
}

#[test]
fn a_key_sshd_does_not_know_is_refused() {
    if !sshd_available() {
        return;
    }
    let key = ssh::generate_key().unwrap();
    let sshd = start_sshd(&key);
    let stranger = Client::new(ssh::generate_key().unwrap(), Duration::from_secs(10));
    runtime().block_on(async {
        let err = stranger
            .connect(&target(&sshd, Some(sshd.host_key.clone())))
            .await
            .err()
            .expect("an unknown client key must be refused");
        assert!(matches!(err, SshError::Auth { .. }), "{err}");
    });
}

#[test]
fn fan_out_runs_every_job_with_a_bound() {
    if !sshd_available() {
        return;
    }
    let key = ssh::generate_key().unwrap();
    let sshd = start_sshd(&key);
    let client = Client::new(key, Duration::from_secs(10));
    let t = target(&sshd, Some(sshd.host_key.clone()));
    let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = runtime().block_on({
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        ssh::fan_out((0..6).collect(), 2, move |i: u32| {
            let client = client.clone();
            let t = t.clone();
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = in_flight.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                let s = client.connect(&t).await.unwrap();
                let out = s.exec(&format!("echo {i}"), None).await.unwrap();
                s.close().await;
                in_flight.fetch_sub(1, SeqCst);
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
        })
    });
    assert_eq!(results, vec!["0", "1", "2", "3", "4", "5"]);
    assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 2);
}

#[test]
fn waiting_for_a_node_that_never_answers_times_out_naming_it() {
    let client = Client::new(ssh::generate_key().unwrap(), Duration::from_secs(10));
    // A listener that accepts but never speaks: a hung machine.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let t = Target {
        name: "hung-node".into(),
        host: "127.0.0.1".into(),
        port,
        user: "nobody".into(),
        host_key: None,
    };
    let started = Instant::now();
    let err = runtime()
        .block_on(client.wait_ready(&t, Duration::from_secs(2)))
        .err()
        .expect("must time out");
    let elapsed = started.elapsed();
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("hung-node"), "{err}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    drop(silent);
}
