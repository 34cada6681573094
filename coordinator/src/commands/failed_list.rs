//! How a list command ends, as Hangar ends it: `Done`, or its failed lines written to the
//! failed list (the retry's `-f`), logged under Hangar's title for the command, and its
//! `some images failed to <verb>`.

use std::path::Path;

use anyhow::Result;

use super::{quoted_line, write_atomically};

/// What a list command did, in Hangar's words: the title of its failed list in the log
/// and the verb of its error.
#[derive(Clone, Copy, Debug)]
pub enum ListRun {
    /// `mirror`, `mirror validate`, `load`.
    Copy,
    Save,
    Sync,
    /// `save`, `sync` and `load validate` (`mirror validate` is `Copy` in Hangar's words).
    Validate,
    Sign,
    SignatureValidate,
    Scan,
    Inspect,
    Export,
}

impl ListRun {
    /// A job's, as the command that runs it here would say.
    pub fn of(kind: crate::spec::JobKind) -> Self {
        use crate::spec::JobKind as K;
        match kind {
            // Hangar's mirror validate says "Copy" and "failed to copy".
            K::Mirror | K::Load | K::MirrorValidate => Self::Copy,
            K::Save => Self::Save,
            K::Sync => Self::Sync,
            K::SaveValidate | K::SyncValidate | K::LoadValidate => Self::Validate,
            K::Sign => Self::Sign,
            K::SignValidate => Self::SignatureValidate,
            K::Scan => Self::Scan,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Copy => "Copy",
            Self::Save => "Save",
            Self::Sync => "Sync",
            Self::Validate => "Validate",
            Self::Sign => "Sign",
            Self::SignatureValidate => "Signature validate",
            Self::Scan => "Scan",
            Self::Inspect => "Inspect",
            Self::Export => "Export",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            // Hangar's sign validate ends in its copy error.
            Self::Copy | Self::Save | Self::Sync | Self::SignatureValidate => "copy",
            Self::Validate => "validate",
            Self::Sign => "sign",
            Self::Scan => "scan",
            Self::Inspect => "inspect",
            Self::Export => "export",
        }
    }
}

/// Ends a list command: `Done`, or the failed lines written whole to `path` and Hangar's
/// `some images failed to <verb>`.
pub fn finish(
    console: &crate::console::Console,
    path: &Path,
    failed: &[String],
    run: ListRun,
) -> Result<()> {
    if failed.is_empty() {
        console.info(None, "Done");
        return Ok(());
    }
    write_failed(console, path, failed, run)?;
    anyhow::bail!("some images failed to {}", run.verb())
}

/// A job that ended in an error (a destination that cannot be reached, the fleet lost)
/// vouches for no line: every one goes to the failed list, so that Hangar's retry with
/// `-f <failed file>` has its list. Gives the job's error back.
pub fn all_failed(
    console: &crate::console::Console,
    path: &Path,
    lines: &[String],
    error: hangar_shared::error::Error,
    run: ListRun,
) -> anyhow::Error {
    if !lines.is_empty()
        && let Err(e) = write_failed(console, path, lines, run)
    {
        console.error(None, format!("{e:#}"));
    }
    error.into()
}

/// Bytes of failed lines a command's log lists (within the console's message limit);
/// Hangar lists all.
const LOGGED_FAILED: usize = 8 << 10;

/// Writes the failed list, one line each, and logs it as Hangar does: the lines (as an
/// error), then where they went. `archive export`'s list has no last newline, as Hangar's.
pub fn write_failed(
    console: &crate::console::Console,
    path: &Path,
    failed: &[String],
    run: ListRun,
) -> Result<()> {
    let mut text = failed.join("\n");
    if !matches!(run, ListRun::Export) {
        text.push('\n');
    }
    write_atomically(path, &text)?;
    let shown = path.display().to_string();
    // Bounded, as every message quoting a list line: each line cut at 200 characters,
    // as many as fit in LOGGED_FAILED bytes (the file holds them all).
    let mut listed = String::new();
    let mut shown_lines = 0;
    for line in failed {
        let quoted = quoted_line(line);
        if listed.len() + quoted.len() + 1 > LOGGED_FAILED {
            break;
        }
        listed.push('\n');
        listed.push_str(&quoted);
        shown_lines += 1;
    }
    console.error(None, format!("{} failed image list: {listed}", run.title()));
    if failed.len() > shown_lines {
        console.error(
            None,
            format!("… and {} more, in {shown}", failed.len() - shown_lines),
        );
    }
    match run {
        ListRun::Export => console.error(None, format!("Export failed images saved to {shown:?}")),
        _ => console.info(None, format!("Failed image list exported to {shown:?}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_jobs_failed_list_is_named_as_its_command_names_it() {
        use super::ListRun;
        use crate::spec::JobKind as K;
        for (kind, title, verb) in [
            (K::Mirror, "Copy", "copy"),
            (K::MirrorValidate, "Copy", "copy"),
            (K::Load, "Copy", "copy"),
            (K::Save, "Save", "copy"),
            (K::Sync, "Sync", "copy"),
            (K::SaveValidate, "Validate", "validate"),
            (K::LoadValidate, "Validate", "validate"),
            (K::Sign, "Sign", "sign"),
            (K::SignValidate, "Signature validate", "copy"),
            (K::Scan, "Scan", "scan"),
        ] {
            let run = ListRun::of(kind);
            assert_eq!((run.title(), run.verb()), (title, verb), "{kind:?}");
        }
    }
}
