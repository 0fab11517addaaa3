//! A child process on a real pseudo-terminal, driven expect-style.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Pty {
    controller: OwnedFd,
    child: Child,
    output: Arc<(Mutex<Vec<u8>>, Condvar)>,
    seen: usize,
}

impl Pty {
    pub fn spawn(mut cmd: Command) -> Self {
        let (controller, terminal) = stratus::sys::openpty(100, 30).expect("openpty");
        cmd.stdin(terminal.try_clone().unwrap())
            .stdout(terminal.try_clone().unwrap())
            .stderr(terminal);
        stratus::sys::session_on_terminal_std(&mut cmd);
        let child = cmd.spawn().expect("spawn on pty");
        drop(cmd);
        let output = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let reader = controller.try_clone().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stratus::sys::read_fd(reader.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let (lock, cv) = &*out;
                        lock.lock().unwrap().extend_from_slice(&buf[..n]);
                        cv.notify_all();
                    }
                }
            }
            out.1.notify_all();
        });
        Self {
            controller,
            child,
            output,
            seen: 0,
        }
    }

    pub fn send(&mut self, text: &str) {
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            let n =
                stratus::sys::write_fd(self.controller.as_raw_fd(), rest).expect("write to pty");
            rest = &rest[n..];
        }
    }

    /// Waits until `needle` appears in the output after what earlier calls consumed.
    pub fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (lock, cv) = &*self.output;
        let mut out = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&out[self.seen..]).into_owned();
            if let Some(i) = text.find(needle) {
                self.seen += text[..i + needle.len()].len();
                return;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {needle:?}; the terminal showed:\n{}",
                String::from_utf8_lossy(&out)
            );
            out = cv.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Everything the terminal showed so far, escape sequences and all.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.0.lock().unwrap()).into_owned()
    }

    /// Waits for the child and returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }
}
