//! A command's output on stdout. SIGPIPE stays ignored in this process (Rust's default): a
//! registry closing a connection under a vectored write would otherwise kill the whole
//! process. So output into a closed pipe (`| head`) is seen as an error here, and the
//! process then ends as other tools do, by the signal, quietly.

use std::io::Write as _;

/// Writes `bytes` to stdout whole; a closed pipe ends the process by SIGPIPE.
pub fn write(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => end_by_sigpipe(),
        other => other,
    }
}

/// `format!`-style output with a newline, through [`write`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::write(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(crate) use outln;

fn end_by_sigpipe() -> ! {
    // SAFETY: restoring a signal's default and raising it in this thread; nothing else runs
    // after it (the process ends by it, as a shell expects of `tool | head`).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
}
