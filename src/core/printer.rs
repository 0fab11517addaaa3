//! All user-facing output goes through the `Printer`: results on stdout, status and warnings on
//! stderr, and the progress bars. Owning the bars here is what keeps them from tearing log lines:
//! every write to stderr (logs included, see `LogWriter`) suspends the bars first.
//!
//! Bars are hidden when stderr is not a terminal, with `--json`, or with `--quiet`.

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

#[derive(Debug)]
pub struct Printer {
    json: bool,
    quiet: bool,
    bars: bool,
    multi: MultiProgress,
    /// The runner's and the class service's mode: everything goes to a sink as JSON lines
    /// (`Event`, then the service's result or error), and the bars, hidden, are reported by
    /// `tick`.
    lines: Option<std::sync::Mutex<Lines>>,
}

/// Where the lines of a runner or of one request to the class service go.
pub type LineSink = Box<dyn FnMut(&str) -> io::Result<()> + Send>;

struct Lines {
    bars: Vec<ProgressBar>,
    last: Vec<Bar>,
    sink: LineSink,
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lines")
            .field("bars", &self.bars.len())
            .finish()
    }
}

/// What the printer of a runner reports as it goes, one JSON line each (the service's protocol
/// adds its result and error lines to these).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// The progress bars in flight, each as the runner sees it now.
    Progress(Vec<Bar>),
    Status(String),
    Warning(String),
    /// A line of progress for a reader without bars (a log, cron, a pipe): the CLI prints it
    /// only where it draws no bars.
    Waiting(String),
}

/// A progress bar as the runner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Bar {
    pub message: String,
    pub position: u64,
    pub length: u64,
    /// The bar is done (the CLI clears it).
    pub done: bool,
}

impl Printer {
    pub fn new(json: bool, quiet: bool) -> Self {
        let bars = !json && !quiet && io::stderr().is_terminal();
        let target = if bars {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            json,
            quiet,
            bars,
            multi: MultiProgress::with_draw_target(target),
            lines: None,
        }
    }

    /// The runner's printer: JSON lines on stdout, for the CLI on the other side of the wrapper.
    pub fn lines() -> Self {
        Self::lines_to(Box::new(|line| {
            let mut out = io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()
        }))
    }

    /// A printer of JSON lines into `sink` (one request to the class service).
    pub fn lines_to(sink: LineSink) -> Self {
        Self {
            json: false,
            quiet: false,
            bars: false,
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            lines: Some(std::sync::Mutex::new(Lines {
                bars: Vec::new(),
                last: Vec::new(),
                sink,
            })),
        }
    }

    /// Writes one JSON line to the sink (runner and service modes; stdout otherwise).
    pub fn line<T: Serialize + ?Sized>(&self, line: &T) -> io::Result<()> {
        let text = serde_json::to_string(line).map_err(io::Error::other)?;
        match &self.lines {
            Some(lines) => {
                let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
                (l.sink)(&text)
            }
            None => {
                let mut out = io::stdout().lock();
                writeln!(out, "{text}")?;
                out.flush()
            }
        }
    }

    /// In runner mode, reports the bars that changed since the last call; `true` if it wrote.
    pub fn tick(&self) -> bool {
        let Some(lines) = &self.lines else {
            return false;
        };
        let mut l = lines.lock().unwrap_or_else(|p| p.into_inner());
        let now: Vec<Bar> = l
            .bars
            .iter()
            .map(|b| Bar {
                message: b.message(),
                position: b.position(),
                length: b.length().unwrap_or(0),
                done: b.is_finished(),
            })
            .collect();
        l.bars.retain(|b| !b.is_finished());
        if now == l.last {
            return false;
        }
        l.last = now.iter().filter(|b| !b.done).cloned().collect();
        drop(l);
        self.line(&Event::Progress(now)).is_ok()
    }

    fn track(&self, pb: ProgressBar) -> ProgressBar {
        if let Some(lines) = &self.lines {
            lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .bars
                .push(pb.clone());
        }
        pb
    }

    /// A printer that shows nothing but results; for library callers and tests.
    pub fn quiet() -> Self {
        Self::new(false, true)
    }

    pub fn json_mode(&self) -> bool {
        self.json
    }

    /// Runs `f` with the progress bars cleared from the screen.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.bars {
            self.multi.suspend(f)
        } else {
            f()
        }
    }

    /// Writes a result to stdout.
    pub fn out(&self, text: impl Display) -> io::Result<()> {
        self.suspend(|| {
            let mut out = io::stdout().lock();
            writeln!(out, "{text}")?;
            out.flush()
        })
    }

    /// Writes raw bytes to stdout (remote command output, which need not be UTF-8).
    pub fn out_bytes(&self, bytes: &[u8]) -> io::Result<()> {
        self.suspend(|| {
            let mut out = io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()
        })
    }

    /// Writes raw bytes to stderr (remote command errors).
    pub fn err_bytes(&self, bytes: &[u8]) -> io::Result<()> {
        self.suspend(|| {
            let mut err = io::stderr().lock();
            err.write_all(bytes)?;
            err.flush()
        })
    }

    /// Writes a value as pretty JSON to stdout.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> io::Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
        self.out(text)
    }

    /// A line of progress or advice on stderr; hidden by `--quiet` and `--json`.
    pub fn status(&self, msg: impl Display) {
        if self.lines.is_some() {
            let _ = self.line(&Event::Status(msg.to_string()));
            return;
        }
        if self.quiet || self.json {
            return;
        }
        self.stderr_line(&msg.to_string());
    }

    /// A line of progress that stands for the bars where none are drawn (stderr is not a
    /// terminal): what a launch is waiting for, as it goes. Hidden by `--quiet` and `--json`,
    /// and where the bars show.
    pub fn waiting(&self, msg: impl Display) {
        if self.lines.is_some() {
            let _ = self.line(&Event::Waiting(msg.to_string()));
            return;
        }
        if self.quiet || self.json || self.bars {
            return;
        }
        self.stderr_line(&msg.to_string());
    }

    pub fn warn(&self, msg: impl Display) {
        if self.lines.is_some() {
            let _ = self.line(&Event::Warning(msg.to_string()));
            return;
        }
        self.stderr_line(&format!("warning: {msg}"));
    }

    /// An error report, already formatted (see `error::render`).
    pub fn error(&self, rendered: &str) {
        self.stderr_line(rendered);
    }

    fn stderr_line(&self, line: &str) {
        self.suspend(|| {
            let mut err = io::stderr().lock();
            // Nothing sensible can be done if stderr itself is gone.
            let _ = writeln!(err, "{line}");
        });
    }

    /// A bar counting `len` steps (nodes, usually), with the time taken and, once the rate is
    /// known, the time left.
    pub fn bar(&self, len: u64, msg: impl Into<String>) -> ProgressBar {
        if !self.bars {
            let pb = ProgressBar::hidden();
            pb.set_length(len);
            pb.set_message(msg.into());
            return self.track(pb);
        }
        let style = ProgressStyle::with_template(
            "{spinner} {msg} [{bar:20}] {pos}/{len} {elapsed} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let pb = self.multi.add(ProgressBar::new(len));
        pb.set_style(style);
        pb.set_message(msg.into());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    /// A spinner for a wait of unknown length.
    pub fn spinner(&self, msg: impl Into<String>) -> ProgressBar {
        if !self.bars {
            let pb = ProgressBar::hidden();
            pb.set_message(msg.into());
            return self.track(pb);
        }
        let style = ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let pb = self.multi.add(ProgressBar::new_spinner());
        pb.set_style(style);
        pb.set_message(msg.into());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }
}

/// A `tracing` writer that sends log lines to stderr without tearing the progress bars.
pub struct LogWriter {
    printer: Arc<Printer>,
    buf: Vec<u8>,
}

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        self.printer.suspend(|| io::stderr().lock().write_all(&buf))
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Makes a `LogWriter` per log event.
#[derive(Clone)]
pub struct MakeLogWriter(pub Arc<Printer>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeLogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter {
            printer: self.0.clone(),
            buf: Vec::new(),
        }
    }
}
