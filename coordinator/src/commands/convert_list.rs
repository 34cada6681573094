//! `convert-list`: default-format lines → `SRC DST TAG` mirror lines, as Hangar writes them
//! (no `library/` inserted, `\n`-joined, no trailing newline).

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use hangar_shared::reference::has_explicit_registry;

use crate::cli::ConvertListArgs;
use crate::console::Console;

fn with_registry(image: &str, registry: &str, default_prefix: bool) -> String {
    let explicit = has_explicit_registry(image);
    match (registry.is_empty(), explicit) {
        (false, true) => format!(
            "{registry}/{}",
            image.split_once('/').map(|(_, rest)| rest).unwrap_or(image)
        ),
        (false, false) => format!("{registry}/{image}"),
        (true, false) if default_prefix => format!("docker.io/{image}"),
        (true, _) => image.to_owned(),
    }
}

/// Converts one line; `None` for lines Hangar skips.
pub fn convert_line(line: &str, source: &str, dest: &str) -> Option<String> {
    // The tag is cut from the last path segment only, so `host:port/…` lines work
    // (Hangar splits the whole line on `:` and skips them).
    let (prefix, last) = line
        .rsplit_once('/')
        .map(|(p, l)| (Some(p), l))
        .unwrap_or((None, line));
    let parts: Vec<&str> = last.split(':').filter(|p| !p.is_empty()).collect();
    let (name, tag) = match parts.as_slice() {
        [name] => (*name, "latest"),
        [name, tag] => (*name, *tag),
        _ => return None,
    };
    let joined;
    let image = match prefix {
        Some(p) => {
            joined = format!("{p}/{name}");
            joined.as_str()
        }
        None => name,
    };
    Some(format!(
        "{} {} {tag}",
        with_registry(image, source, false),
        with_registry(image, dest, true)
    ))
}

pub fn run(args: &ConvertListArgs, console: &Console) -> Result<()> {
    let text = hangar_shared::local_file::read_text(&args.input, hangar_shared::local_file::LIST)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.converted", args.input.display())));
    if output.exists()
        && !args.yes
        && !super::confirm(&format!(
            "File {:?} already exists! Overwrite?",
            output.display().to_string()
        ))
    {
        bail!("cancelled");
    }
    let mut out = Vec::new();
    // A byte-order mark is not part of the first line (as `ImageList::parse` has it).
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        // A digest pin has no tag for the mirror format's third column; Hangar, splitting
        // on `:`, writes `app@sha256 … <hex>`, a line no mirror reads.
        if line.contains('@') {
            console.warn(
                None,
                format!(
                    "Ignore image list line {:?} ({}:{}): a digest-pinned image has no tag \
                     for the mirror format",
                    line,
                    args.input.display(),
                    i + 1
                ),
            );
            continue;
        }
        let fields = line.split(' ').filter(|f| !f.is_empty()).count();
        if fields == 3 {
            console.info(
                None,
                format!("Line {:?} is already in mirror format, skipped", line),
            );
            continue;
        }
        match (fields, convert_line(line, &args.source, &args.destination)) {
            (1, Some(converted)) => out.push(converted),
            _ => console.warn(
                None,
                format!(
                    "Ignore image list line {:?} ({}:{}): invalid format",
                    line,
                    args.input.display(),
                    i + 1
                ),
            ),
        }
    }
    super::write_atomically(&output, &out.join("\n"))?;
    console.info(
        None,
        format!("Converted {} lines into {}", out.len(), output.display()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hangars_examples() {
        assert_eq!(
            convert_line("alpine:3", "example.io", "docker.io").unwrap(),
            "example.io/alpine docker.io/alpine 3"
        );
        assert_eq!(
            convert_line("library/mysql:5.7.5", "example.io", "docker.io").unwrap(),
            "example.io/library/mysql docker.io/library/mysql 5.7.5"
        );
        assert_eq!(
            convert_line("reg.io/a/b", "", "").unwrap(),
            "reg.io/a/b reg.io/a/b latest"
        );
        assert_eq!(
            convert_line("nginx", "", "").unwrap(),
            "nginx docker.io/nginx latest"
        );
        assert_eq!(
            convert_line("reg.io:5000/a/b:1", "src.io", "dst.io").unwrap(),
            "src.io/a/b dst.io/a/b 1"
        );
        assert!(convert_line("a:b:c", "", "").is_none());
    }
}
