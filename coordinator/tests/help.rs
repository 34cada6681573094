//! `--help` of every command and subcommand of the three binaries describes every flag and
//! argument it lists; `--hide-log-time` is listed; `--insecure` points at
//! `--tls-verify=false` instead of a look-alike flag.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hangar-coord")).with_file_name(name)
}

fn run(name: &str, args: &[&str]) -> Output {
    let path = bin(name);
    Command::new(&path).args(args).output().unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build every binary first: cargo build --workspace --bins)",
            path.display()
        )
    })
}

fn help(name: &str, path: &[String]) -> String {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let out = run(name, &args);
    assert!(
        out.status.success(),
        "{name} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// One entry of an Options or Arguments section: what it names, and its description.
#[derive(Debug)]
struct Entry {
    spec: String,
    description: String,
}

/// The entries of the Options and Arguments sections, and the names of the Commands.
fn parse(help: &str) -> (Vec<Entry>, Vec<String>) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut commands = Vec::new();
    let mut section = "";
    let mut in_entry = false;
    for line in help.lines() {
        if line.trim().is_empty() {
            in_entry = false;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 0 {
            section = if text.ends_with(':') { text } else { "" };
            in_entry = false;
            continue;
        }
        match section {
            "Commands:" if indent <= 2 => {
                let name = text.split_whitespace().next().unwrap_or_default();
                commands.push(name.to_owned());
            }
            "Options:" | "Arguments:" => {
                if indent <= 6 && text.starts_with(['-', '<', '[']) {
                    let (spec, description) = text.split_once("  ").unwrap_or((text, ""));
                    entries.push(Entry {
                        spec: spec.trim().to_owned(),
                        description: description.trim().to_owned(),
                    });
                    in_entry = true;
                } else if in_entry && let Some(last) = entries.last_mut() {
                    // The description on the lines below (clap's next-line help).
                    last.description.push(' ');
                    last.description.push_str(text);
                }
            }
            _ => {}
        }
    }
    (entries, commands)
}

/// The description without clap's annotations (`[default: …]`, `[env: …]`, …): what a
/// person wrote.
fn prose(description: &str) -> &str {
    let mut d = description
        .split("Possible values:")
        .next()
        .unwrap_or_default()
        .trim();
    while d.ends_with(']') {
        let Some(at) = d.rfind('[') else { break };
        let note = &d[at + 1..];
        let annotation = [
            "default:",
            "env:",
            "possible values:",
            "alias:",
            "aliases:",
            "short alias",
        ]
        .iter()
        .any(|k| note.starts_with(k));
        if !annotation {
            break;
        }
        d = d[..at].trim_end();
    }
    d
}

/// Walks `name`'s commands from `path` down, collecting every undescribed entry.
fn walk(name: &str, path: &mut Vec<String>, missing: &mut Vec<String>, seen: &mut usize) {
    let text = help(name, path);
    *seen += 1;
    let (entries, commands) = parse(&text);
    assert!(
        entries.iter().any(|e| e.spec.contains("--help")),
        "{name} {}: no Options section parsed in\n{text}",
        path.join(" ")
    );
    for e in entries {
        if prose(&e.description).is_empty() {
            missing.push(format!("{name} {}: {}", path.join(" "), e.spec));
        }
    }
    for c in commands.into_iter().filter(|c| c != "help") {
        path.push(c);
        walk(name, path, missing, seen);
        path.pop();
    }
}

#[test]
fn every_flag_and_argument_of_every_command_has_a_description() {
    let mut missing = Vec::new();
    for (name, at_least) in [
        ("hangar-coord", 30),
        ("hangar-worker", 1),
        ("hangar-loadtest", 7),
    ] {
        let mut seen = 0;
        walk(name, &mut Vec::new(), &mut missing, &mut seen);
        assert!(seen >= at_least, "{name}: only {seen} commands walked");
    }
    assert!(
        missing.is_empty(),
        "undescribed in --help:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_parser_sees_both_layouts_and_the_annotations() {
    let same_line =
        "Options:\n      --debug        Debug log level\n  -j, --jobs <JOBS>  [default: 1]\n";
    let (entries, _) = parse(same_line);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(prose(&entries[0].description), "Debug log level");
    assert_eq!(prose(&entries[1].description), "");
    let next_line = "Arguments:\n  <SHELL>\n          [possible values: bash, zsh]\n\nOptions:\n  -f, --file <FILE>\n          Image list [default: \"\"] [env: X=]\n  -h, --help\n          Print help\n";
    let (entries, _) = parse(next_line);
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(prose(&entries[0].description), "");
    assert_eq!(prose(&entries[1].description), "Image list");
    assert_eq!(entries[2].spec, "-h, --help");
}

#[test]
fn hide_log_time_is_listed() {
    let text = help("hangar-coord", &[]);
    let (entries, _) = parse(&text);
    let e = entries
        .iter()
        .find(|e| e.spec == "--hide-log-time")
        .unwrap_or_else(|| panic!("--hide-log-time not in\n{text}"));
    assert!(!prose(&e.description).is_empty(), "{e:?}");
}

#[test]
fn insecure_points_at_tls_verify_false() {
    for args in [
        &["mirror", "--insecure", "-f", "x"][..],
        &["save", "--insecure"],
        &["inspect", "--insecure", "r/a:t"],
        &["archive", "store", "file", "--insecure"],
        &["serve", "--insecure"],
    ] {
        let out = run("hangar-coord", args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("--tls-verify=false"), "{args:?}: {err}");
        assert!(!err.contains("--insecure-policy"), "{args:?}: {err}");
    }
    // Where there is no --tls-verify, no look-alike flag is offered either.
    let out = run("hangar-coord", &["status", "--insecure"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("'--insecure'"), "{err}");
    assert!(!err.contains("a similar argument exists"), "{err}");
    // The worker, too (its usage errors are clap's: exit 2).
    let out = run(
        "hangar-worker",
        &["--nats", "nats://127.0.0.1:1", "--insecure"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--tls-verify=false"), "{err}");
    assert!(!err.contains("--index-concurrency"), "{err}");
}

/// cobra finds `validate` after the flags too, as Hangar's users write it: the run is
/// `mirror validate`'s (it reads the list), not a usage error.
#[test]
fn a_subcommand_after_the_flags_is_found() {
    for args in [
        &["mirror", "-f", "/nonexistent/list.txt", "validate"][..],
        &[
            "save",
            "--tls-verify=false",
            "-f",
            "/nonexistent/list.txt",
            "validate",
        ],
    ] {
        let out = run("hangar-coord", args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("cannot read image list /nonexistent/list.txt"),
            "{args:?}: {err}"
        );
    }
    // A flag's value spelt like the subcommand stays the value.
    let out = run(
        "hangar-coord",
        &["mirror", "-f", "validate", "-d", "127.0.0.1:9"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read image list validate"), "{err}");
}
