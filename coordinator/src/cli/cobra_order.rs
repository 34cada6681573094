//! cobra (Hangar's command-line library) finds a subcommand among the flags: `hangar
//! mirror -f list.txt validate` runs `mirror validate -f list.txt`. clap takes a
//! subcommand only before the flags, so the command line is put in that order first.
//!
//! cobra's rule, followed here: a flag spelt `--name` or `-n` without `=` takes the next
//! word as its value unless it is a switch (takes no value) of the command or an ancestor;
//! the first other word that names a subcommand is that subcommand; `--` ends the search.

use std::ffi::{OsStr, OsString};

/// `args` (the program's name first) with each subcommand moved before the flags that
/// precede it. A line clap reads as it is is left as it is: the subcommand moves only
/// past flags it takes too (its own or global ones), never past a cluster like `-yd`, and
/// clap's `help` never moves.
pub fn subcommand_first(cmd: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let mut args = args;
    // Built, so that globals are on every subcommand and each flag's value count is known.
    let mut cmd = cmd.clone();
    cmd.build();
    let mut path = vec![cmd];
    // Where the current command's own words start.
    let mut start = 1;
    loop {
        let (Some(current), Some(words)) = (path.last(), args.get(start..)) else {
            return args;
        };
        let Some(found) = find_subcommand(&path, current, words) else {
            return args;
        };
        if found.at > 0 && !found.flags_before.iter().all(|f| takes(&found.sub, f)) {
            return args;
        }
        let word = args.remove(start + found.at);
        args.insert(start, word);
        start += 1;
        path.push(found.sub);
    }
}

/// A subcommand named among a command's words.
struct Found {
    at: usize,
    sub: clap::Command,
    /// The flags before it, as written (`--name`, `-n`, `-abc`), without values.
    flags_before: Vec<String>,
}

/// The first word of `words` naming a subcommand of `current`; `None` at a positional
/// that names none (the command's own argument) or at `--`.
fn find_subcommand(
    path: &[clap::Command],
    current: &clap::Command,
    words: &[OsString],
) -> Option<Found> {
    let mut flags_before = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = words[i].to_string_lossy();
        if word == "--" {
            return None;
        }
        if let Some(long) = word.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or_default();
            if !long.contains('=') && !is_switch(path, |a| a.get_long() == Some(name)) {
                i += 1;
            }
            flags_before.push(format!("--{name}"));
        } else if let Some(short) = word.strip_prefix('-') {
            let mut chars = short.chars();
            if let (Some(c), None) = (chars.next(), chars.next())
                && !is_switch(path, |a| a.get_short() == Some(c))
            {
                i += 1;
            }
            flags_before.push(word.into_owned());
        } else if !word.is_empty() {
            return named(current, &words[i]).map(|sub| Found {
                at: i,
                sub,
                flags_before,
            });
        }
        i += 1;
    }
    None
}

/// Whether `sub` takes the flag `written` (`--name` or `-n`; a cluster it does not).
fn takes(sub: &clap::Command, written: &str) -> bool {
    let found = |a: &clap::Arg| match written.strip_prefix("--") {
        Some(long) => a.get_long() == Some(long),
        None => {
            let mut chars = written.chars().skip(1);
            matches!((chars.next(), chars.next()), (Some(c), None) if a.get_short() == Some(c))
        }
    };
    sub.get_arguments().any(found)
}

/// Whether the flag `matches` finds on the command or an ancestor takes no value. A flag
/// known nowhere takes one, as cobra assumes.
fn is_switch(path: &[clap::Command], matches: impl Fn(&clap::Arg) -> bool) -> bool {
    path.iter()
        .rev()
        .flat_map(|c| c.get_arguments())
        .find(|a| matches(a))
        .is_some_and(|a| {
            !a.get_action().takes_values() || a.get_num_args().is_some_and(|n| n.min_values() == 0)
        })
}

/// The subcommand of `cmd` that `word` names; clap's own `help` is never one to move.
fn named(cmd: &clap::Command, word: &OsStr) -> Option<clap::Command> {
    let word = word.to_str()?;
    cmd.get_subcommands()
        .filter(|s| s.get_name() != "help")
        .find(|s| s.get_name() == word || s.get_all_aliases().any(|a| a == word))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn reordered(line: &str) -> String {
        let args = std::iter::once("hangar")
            .chain(line.split(' '))
            .map(OsString::from)
            .collect();
        let out: Vec<String> = subcommand_first(&crate::cli::Cli::command(), args)
            .into_iter()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        out.join(" ")
    }

    #[test]
    fn a_subcommand_after_flags_comes_first() {
        for (given, expected) in [
            ("mirror -f l.txt validate", "mirror validate -f l.txt"),
            ("m -f l.txt -j 3 validate", "m validate -f l.txt -j 3"),
            (
                "--debug save --tls-verify=false -f l validate -y",
                "save validate --debug --tls-verify=false -f l -y",
            ),
            ("load --skip-login validate", "load validate --skip-login"),
            // Already in order, or no subcommand: unchanged.
            ("mirror validate -f l.txt", "mirror validate -f l.txt"),
            ("mirror -f l.txt -d r", "mirror -f l.txt -d r"),
            // A flag's value named like a subcommand is the value.
            ("mirror -f validate", "mirror -f validate"),
            ("mirror --file validate -d r", "mirror --file validate -d r"),
            // An image reference is the command's own argument: nothing after it is looked at.
            ("inspect --raw r/a:1", "inspect --raw r/a:1"),
            ("mirror -- validate", "mirror -- validate"),
            // clap's help reads every word after it as a command name: it stays put.
            ("--debug help mirror", "--debug help mirror"),
            ("inspect --raw help", "inspect --raw help"),
            // Past a flag the subcommand does not take (root's -v), or a cluster: as written.
            ("-v mirror", "-v mirror"),
            ("save -yd validate", "save -yd validate"),
            (
                "mirror --file=l.txt validate",
                "mirror validate --file=l.txt",
            ),
        ] {
            assert_eq!(reordered(given), expected, "{given}");
        }
    }

    #[test]
    fn an_empty_line_is_left_alone() {
        assert!(subcommand_first(&crate::cli::Cli::command(), Vec::new()).is_empty());
    }

    #[test]
    fn the_reordered_line_parses_as_cobra_reads_it() {
        let args = ["hangar", "mirror", "-f", "l.txt", "validate", "-j", "2"]
            .map(OsString::from)
            .to_vec();
        let mut cmd = crate::cli::Cli::command();
        cmd.build();
        let matches = cmd
            .try_get_matches_from(subcommand_first(&crate::cli::Cli::command(), args))
            .expect("parses");
        let (name, mirror) = matches.subcommand().expect("mirror");
        assert_eq!(name, "mirror");
        let (name, validate) = mirror.subcommand().expect("validate");
        assert_eq!(name, "validate");
        assert_eq!(
            validate
                .get_one::<std::path::PathBuf>("file")
                .map(|p| p.display().to_string()),
            Some("l.txt".into())
        );
    }
}
