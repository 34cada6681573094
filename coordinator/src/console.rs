//! What the user sees: Hangar-style log lines (`[HH:MM:SS] [INFO] [IMG:N] …`, INFO on
//! stdout, WARN and ERRO on stderr) and, on a terminal, a live progress bar with images,
//! bytes, rate and ETA. Lines printed while the bar is up go through it so neither tears.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
    /// The command failed as a whole (Hangar's `[FATA]` line before it exits).
    Fatal,
}

pub struct Console {
    hide_time: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Console {
    pub fn new(hide_time: bool) -> Arc<Self> {
        Arc::new(Self {
            hide_time,
            bar: Mutex::new(None),
        })
    }

    /// `--hide-log-time`: what prints a time of its own leaves it out too.
    pub fn hides_time(&self) -> bool {
        self.hide_time
    }

    fn stamp(&self) -> String {
        if self.hide_time {
            return "-".to_owned();
        }
        // Local time, as Hangar prints it (`TZ` decides, so `TZ=UTC` gives UTC).
        chrono::Local::now().format("[%H:%M:%S]").to_string()
    }

    pub fn log(&self, level: Level, img: Option<usize>, msg: impl Display) {
        let msg = fit_for_terminal(&msg.to_string());
        let tag = match level {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERRO",
            Level::Fatal => "FATA",
        };
        let line = match img {
            Some(n) => format!("{} [{tag}] [IMG:{n}] {msg}", self.stamp()),
            None => format!("{} [{tag}] {msg}", self.stamp()),
        };
        if let Ok(bar) = self.bar.lock()
            && let Some(bar) = bar.as_ref()
        {
            bar.println(line);
            return;
        }
        // A closed pipe is no reason to abort the copy.
        let _ = match level {
            Level::Info => writeln!(std::io::stdout(), "{line}"),
            _ => writeln!(std::io::stderr(), "{line}"),
        };
    }

    pub fn info(&self, img: Option<usize>, msg: impl Display) {
        self.log(Level::Info, img, msg);
    }

    pub fn warn(&self, img: Option<usize>, msg: impl Display) {
        self.log(Level::Warn, img, msg);
    }

    pub fn error(&self, img: Option<usize>, msg: impl Display) {
        self.log(Level::Error, img, msg);
    }

    /// Shows a bar when stderr is a terminal; returns a handle that keeps it fresh.
    pub fn start_progress(self: &Arc<Self>, images: u64, bytes: Arc<AtomicU64>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(images), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} images  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar.clone());
        }
        let ticker_bar = bar.clone();
        let ticker = tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let moved = bytes.load(Ordering::Relaxed);
                let rate = moved as f64 / start.elapsed().as_secs_f64().max(0.001);
                ticker_bar.set_message(format!(
                    "{} at {}/s",
                    HumanBytes(moved),
                    HumanBytes(rate as u64)
                ));
                ticker_bar.tick();
            }
        });
        Progress {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    pub fn stop_progress(&self, progress: Progress) {
        if let Some(t) = progress.ticker {
            t.abort();
        }
        if let Some(bar) = progress.bar {
            bar.finish_and_clear();
        }
        if let Ok(mut slot) = self.bar.lock() {
            *slot = None;
        }
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn image_done(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

/// The most of one message printed: a list line or a registry's error body can be
/// megabytes.
const MESSAGE_LIMIT: usize = 16 << 10;

/// `msg` as a terminal may show it: control characters other than newline and tab (an
/// escape sequence in a list line or a registry's error body would drive the terminal)
/// written as Rust escapes, and no more than [`MESSAGE_LIMIT`] bytes of it.
fn fit_for_terminal(msg: &str) -> String {
    escaped(msg, MESSAGE_LIMIT)
}

/// Text from outside (an archive's image names, a coordinator's answer) printed as a
/// command's output: its control characters escaped as [`fit_for_terminal`] escapes them,
/// its length as it is.
pub fn escape_controls(text: &str) -> String {
    escaped(text, usize::MAX)
}

fn escaped(msg: &str, limit: usize) -> String {
    let mut out = String::with_capacity(msg.len().min(limit) + 32);
    for (at, c) in msg.char_indices() {
        if out.len() >= limit {
            out.push_str(&format!("… ({} more bytes)", msg.len() - at));
            break;
        }
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fit_for_terminal;

    #[test]
    fn messages_cannot_drive_the_terminal_or_flood_it() {
        assert_eq!(
            fit_for_terminal("Failed [\u{1b}]0;pwned\u{7}\u{1b}[2J] (line 3)\r\nnext\tü"),
            "Failed [\\u{1b}]0;pwned\\u{7}\\u{1b}[2J] (line 3)\\r\nnext\tü"
        );
        let long = "é".repeat(1 << 20);
        let shown = fit_for_terminal(&long);
        assert!(shown.len() < (16 << 10) + 64, "{}", shown.len());
        assert!(
            shown.ends_with(" more bytes)"),
            "{}",
            &shown[shown.len() - 40..]
        );
    }
}
