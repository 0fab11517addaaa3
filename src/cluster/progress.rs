//! What a launch shows while it waits. On a terminal, one bar: the phase, and how many nodes are
//! through it. Where no bar is drawn (cron, CI, a pipe, a log), plain lines instead: one when a
//! phase starts, and one every 30 s while it waits, naming the nodes still waited for (and,
//! while they install, each one's phase and how long it has been at it). A launch is never
//! silent for long.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use crate::core::printer::Printer;
use crate::core::text::shortened;

/// How often a waiting phase says so, off a terminal.
const EVERY: Duration = Duration::from_secs(30);
/// The most nodes a waiting line names; the rest are counted.
const NAMED: usize = 8;

pub(crate) struct Progress<'a> {
    printer: &'a Printer,
    bar: ProgressBar,
    cluster: String,
    phase: Mutex<Phase>,
}

struct Phase {
    name: &'static str,
    started: Instant,
    said: Instant,
}

impl<'a> Progress<'a> {
    pub fn new(printer: &'a Printer, cluster: &str, nodes: u64) -> Self {
        let now = Instant::now();
        Self {
            printer,
            bar: printer.bar(nodes, "launching"),
            cluster: cluster.to_owned(),
            phase: Mutex::new(Phase {
                name: "launching",
                started: now,
                said: now,
            }),
        }
    }

    /// The bar, for a task that counts nodes through the phase.
    pub fn bar(&self) -> ProgressBar {
        self.bar.clone()
    }

    /// Starts a phase for `nodes` nodes: its count from 0, the frame drawn at once (the count is
    /// reset before the message changes: a frame naming the new phase must not show the old
    /// one's count, as "waiting for SSH 5/5" did before any node had answered); and its line.
    pub fn phase(&self, name: &'static str, nodes: usize) {
        self.bar.set_position(0);
        self.bar.set_message(name);
        self.bar.force_draw();
        let now = Instant::now();
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase {
            name,
            started: now,
            said: now,
        };
        self.printer.waiting(format!(
            "{}: {name} ({nodes} node{})",
            self.cluster,
            if nodes == 1 { "" } else { "s" }
        ));
    }

    /// Counts `n` more nodes through the current phase, drawn at once: with a steady tick,
    /// indicatif draws a new position only at the next tick, so counts that moved faster than
    /// the tick (nodes answering within the same tenth of a second, as they do) were never
    /// shown, and the bar jumped from 0 to done.
    pub fn count(&self, n: u64) {
        count_up(&self.bar, n);
    }

    /// Sets how many nodes are through the phase.
    pub fn through(&self, n: u64) {
        if self.bar.position() != n {
            self.bar.set_position(n);
            self.bar.force_draw();
        }
    }

    /// More nodes to bring up (replacements).
    pub fn more(&self, n: u64) {
        self.bar.inc_length(n);
    }

    /// Says what the phase still waits for, once every 30 s: `waiting` names the nodes, each
    /// with what it is doing, if known.
    pub fn waiting_for(&self, waiting: &[(String, Option<String>)]) {
        if waiting.is_empty() {
            return;
        }
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if phase.said.elapsed() < EVERY {
            return;
        }
        phase.said = Instant::now();
        let mut named: Vec<String> = waiting
            .iter()
            .take(NAMED)
            .map(|(node, doing)| match doing {
                Some(d) => format!("{node} ({})", shortened(d, 60)),
                None => node.clone(),
            })
            .collect();
        if waiting.len() > NAMED {
            named.push(format!("{} more", waiting.len() - NAMED));
        }
        self.printer.waiting(format!(
            "{}: {} for {}: waiting for {}",
            self.cluster,
            phase.name,
            clock(phase.started.elapsed()),
            named.join(", ")
        ));
    }

    /// Shows a one-line summary of the phase on the bar (what the nodes report).
    pub fn detail(&self, text: &str) {
        let name = self.phase.lock().unwrap_or_else(|p| p.into_inner()).name;
        self.bar
            .set_message(format!("{name}: {}", shortened(text, 50)));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// See `Progress::count`.
pub(crate) fn count_up(bar: &ProgressBar, n: u64) {
    bar.inc(n);
    bar.force_draw();
}

/// `1m05s`, `42s`.
pub(crate) fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_as_minutes_and_seconds() {
        assert_eq!(clock(Duration::from_secs(42)), "42s");
        assert_eq!(clock(Duration::from_secs(65)), "1m05s");
        assert_eq!(clock(Duration::from_secs(600)), "10m00s");
    }
}
