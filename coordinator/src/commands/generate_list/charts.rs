//! Images from a chart repository on disk: its charts found through its `index.yaml` (the
//! shortest-path one) or through the `Chart.yaml` directories under it, the newest version
//! of each chart that the Rancher version satisfies, and in each the image maps of every
//! `values.yaml` (subcharts and packaged `.tgz` charts included).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_yaml_ng::Value;

use super::constraint;
use super::{Found, Lists};
use crate::console::Console;

/// The largest `values.yaml`, `Chart.yaml`, `questions.yaml` or `index.yaml` read, and the
/// most a packaged chart may unpack to: a repository is input like any other.
const MAX_FILE: u64 = 16 << 20;
const MAX_PACKAGE: u64 = 256 << 20;

/// One version of one chart.
struct Version {
    name: String,
    version: semver::Version,
    text: String,
    /// A chart directory or packaged `.tgz`, relative to the repository.
    path: PathBuf,
    rancher_constraint: Option<String>,
    /// The package's SHA-256, when the repository's index gives it.
    digest: Option<String>,
}

/// A repository's kind: system charts check every version of `rancher-monitoring`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Default,
    System,
}

/// A chart repository: cloned on disk, or served over http(s) (its `index.yaml`, the
/// packages it names downloaded as they are chosen).
pub enum Repo<'a> {
    Dir(&'a Path),
    Http {
        url: &'a str,
        http: &'a crate::commands::bounded::Downloads,
    },
}

/// Adds the images of the charts in `repo` that `rancher` supports to `found`, their
/// sources naming the repository as `label`.
pub async fn collect(
    repo: Repo<'_>,
    label: &str,
    kind: Kind,
    rancher: &semver::Version,
    found: &mut Found,
    console: &Console,
) -> Result<()> {
    let (dir, mut versions) = match &repo {
        Repo::Dir(dir) => {
            refuse_symlinks(dir)?;
            let versions = match shortest_index(dir)? {
                Some(index) => {
                    let base = index
                        .parent()
                        .unwrap_or(dir)
                        .strip_prefix(dir)
                        .unwrap_or(Path::new(""))
                        .to_owned();
                    from_index(
                        &read_bounded(&index)?,
                        &index.display().to_string(),
                        console,
                    )?
                    .into_iter()
                    .map(|mut v| {
                        v.path = base.join(&v.path);
                        v
                    })
                    .collect()
                }
                None => from_chart_dirs(dir, console)?,
            };
            (dir.to_path_buf(), versions)
        }
        Repo::Http { url, http } => {
            let index_url = format!("{}/index.yaml", url.trim_end_matches('/'));
            let bytes = http.get(&index_url, None, MAX_FILE).await?;
            let shown = hangar_shared::redact::redact_url(&index_url);
            let text = String::from_utf8(bytes).with_context(|| format!("{shown} is not text"))?;
            (PathBuf::new(), from_index(&text, &shown, console)?)
        }
    };
    versions.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| b.version.cmp(&a.version)));
    let mut i = 0;
    while i < versions.len() {
        let name = versions[i].name.clone();
        let all = kind == Kind::System && name == "rancher-monitoring";
        let mut first = true;
        while i < versions.len() && versions[i].name == name {
            let v = &versions[i];
            i += 1;
            // Only the newest version is a candidate (as Rancher's tools decide).
            if !(first || all) {
                continue;
            }
            first = false;
            let constraint = match (&v.rancher_constraint, &repo) {
                (Some(c), _) => Some(c.clone()),
                (None, Repo::Dir(_)) => questions_range(&dir.join(&v.path))?,
                // A package has no questions file beside it.
                (None, Repo::Http { .. }) => None,
            };
            if let Some(c) = constraint {
                let ok = constraint::satisfied(&c, rancher).map_err(|e| {
                    anyhow::anyhow!("failed to check constraint of chart {:?}: {e}", v.name)
                })?;
                if !ok {
                    continue;
                }
            }
            let source = format!("[{label};{}:{}]", v.name, v.text);
            let values = match &repo {
                Repo::Dir(_) => values_files(&dir.join(&v.path)),
                Repo::Http { url, http } => {
                    let base = reqwest::Url::parse(&format!("{}/", url.trim_end_matches('/')))?;
                    let chart = crate::commands::chart_sources::package_url(
                        &base,
                        &v.path.to_string_lossy(),
                    )?;
                    let bytes = http.get(chart.as_str(), None, MAX_PACKAGE).await?;
                    let shown = hangar_shared::redact::redact_url(chart.as_str());
                    crate::commands::chart_sources::check_digest(
                        v.digest.as_deref(),
                        &hangar_shared::digest::Digest::of(&bytes),
                        &shown,
                    )?;
                    values_in_package(std::io::Cursor::new(bytes), &shown)
                }
            };
            match values {
                Ok(files) => {
                    for (file, text) in files {
                        match serde_yaml_ng::from_str::<Value>(&text) {
                            Ok(values @ Value::Mapping(_)) => {
                                images(&values, &source, found, console)
                            }
                            Ok(_) => console
                                .warn(None, format!("{file}: values are not a mapping; skipped")),
                            Err(e) => console
                                .warn(None, format!("Failed to get values from {file:?}: {e}")),
                        }
                    }
                }
                Err(e) => console.warn(None, format!("{}: {e:#}; skipped", v.path.display())),
            }
        }
    }
    Ok(())
}

/// A repository is read as it is: a symlink could lead out of it, or around in a loop.
fn refuse_symlinks(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("chart repository {}", dir.display()))?;
    if meta.file_type().is_symlink() {
        bail!("symlink found at path {}", dir.display());
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            refuse_symlinks(&entry?.path())?;
        }
    }
    Ok(())
}

fn read_bounded(path: &Path) -> Result<String> {
    crate::commands::bounded::read_text(path, MAX_FILE)
}

/// The `index.yaml` nearest the repository's root, if any (depth first, names in order).
fn shortest_index(dir: &Path) -> Result<Option<PathBuf>> {
    let mut best: Option<PathBuf> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "index.yaml")
                && best
                    .as_ref()
                    .is_none_or(|b| p.as_os_str().len() < b.as_os_str().len())
            {
                best = Some(p);
            }
        }
    }
    Ok(best)
}

/// The charts an index names; each version's `path` is its first URL as written, which
/// must stay inside the repository.
fn from_index(text: &str, index: &str, console: &Console) -> Result<Vec<Version>> {
    let doc: Value = serde_yaml_ng::from_str(text)
        .with_context(|| format!("{index}: not a chart repository index"))?;
    let mut out = Vec::new();
    let Some(entries) = doc.get("entries").and_then(Value::as_mapping) else {
        bail!("{index}: a chart repository index needs `entries`");
    };
    for (name, list) in entries {
        let Some(name) = name.as_str() else { continue };
        for entry in list.as_sequence().into_iter().flatten() {
            let text = entry
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let url = entry
                .get("urls")
                .and_then(Value::as_sequence)
                .and_then(|u| u.first())
                .and_then(Value::as_str);
            let (Some(version), Some(url)) = (super::version::parse(text), url) else {
                console.warn(
                    None,
                    format!("{index}: chart {name} {text:?} has no version or URL; skipped"),
                );
                continue;
            };
            if url.contains("://")
                || Path::new(url).is_absolute()
                || url.split('/').any(|s| s == "..")
            {
                console.warn(
                    None,
                    format!(
                        "{index}: chart {name} {text} lies outside the repository ({url}); skipped"
                    ),
                );
                continue;
            }
            out.push(Version {
                name: name.to_owned(),
                version,
                text: text.to_owned(),
                path: PathBuf::from(url),
                rancher_constraint: rancher_annotation(entry),
                digest: entry
                    .get("digest")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        }
    }
    Ok(out)
}

fn rancher_annotation(meta: &Value) -> Option<String> {
    meta.get("annotations")
        .and_then(|a| a.get("catalog.cattle.io/rancher-version"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Every directory holding a `Chart.yaml` with a name, not descending into it.
fn from_chart_dirs(repo: &Path, console: &Console) -> Result<Vec<Version>> {
    let mut out = Vec::new();
    let mut stack = vec![repo.to_owned()];
    while let Some(d) = stack.pop() {
        let chart = d.join("Chart.yaml");
        if chart.is_file() {
            let meta: Value =
                match read_bounded(&chart).and_then(|t| Ok(serde_yaml_ng::from_str(&t)?)) {
                    Ok(m) => m,
                    Err(e) => {
                        console.warn(None, format!("{}: {e:#}; skipped", chart.display()));
                        continue;
                    }
                };
            let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
            let text = meta
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match super::version::parse(text) {
                Some(version) if !name.is_empty() => out.push(Version {
                    name: name.to_owned(),
                    version,
                    text: text.to_owned(),
                    path: d.strip_prefix(repo).unwrap_or(&d).to_owned(),
                    rancher_constraint: rancher_annotation(&meta),
                    digest: None,
                }),
                _ => console.warn(
                    None,
                    format!(
                        "{}: a chart needs a name and a semantic version; skipped",
                        chart.display()
                    ),
                ),
            }
            continue;
        }
        for entry in std::fs::read_dir(&d)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(out)
}

/// A system chart's `questions.yaml` (or `.yml`) range of Rancher versions, as a constraint.
fn questions_range(chart: &Path) -> Result<Option<String>> {
    if !chart.is_dir() {
        return Ok(None);
    }
    let Some(file) = ["questions.yaml", "questions.yml"]
        .iter()
        .map(|n| chart.join(n))
        .find(|p| p.is_file())
    else {
        return Ok(None);
    };
    let doc: Value = match serde_yaml_ng::from_str(&read_bounded(&file)?) {
        Ok(d) => d,
        Err(_) => return Ok(None),
    };
    let field = |k: &str| {
        doc.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Ok(
        match (field("rancher_min_version"), field("rancher_max_version")) {
            (Some(min), Some(max)) => Some(format!("{min} - {max}")),
            (Some(min), None) => Some(format!(">= {min}")),
            (None, Some(max)) => Some(format!("<= {max}")),
            (None, None) => None,
        },
    )
}

fn is_values(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n == "values.yaml" || n == "values.yml")
}

/// Every `values.yaml`/`values.yml` of a chart directory or packaged chart, with its name.
fn values_files(path: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if path.is_dir() {
        let mut stack = vec![path.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let p = entry?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if is_values(&p) {
                    out.push((p.display().to_string(), read_bounded(&p)?));
                }
            }
        }
        out.sort();
        return Ok(out);
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    values_in_package(file, &path.display().to_string())
}

/// Every `values.yaml`/`values.yml` of a packaged chart (`label` names it), bounded as the
/// scanner bounds layers.
fn values_in_package(package: impl Read, label: &str) -> Result<Vec<(String, String)>> {
    values_within(package, label, MAX_PACKAGE)
}

fn values_within(package: impl Read, label: &str, cap: u64) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    // Past its bound the read fails: `take` would end it quietly, and tar would read the
    // cut as the archive's end, leaving the values files after it out of the list.
    let gz =
        hangar_shared::archive::custom::Inflated::new(flate2::read::GzDecoder::new(package), cap);
    let mut tar = tar::Archive::new(hangar_shared::scan::tar_guard::TarGuard::new(gz));
    for entry in tar
        .entries()
        .with_context(|| format!("{label} is not a packaged chart"))?
    {
        let entry = entry.with_context(|| format!("reading {label}"))?;
        let name = entry.path()?.into_owned();
        if !entry.header().entry_type().is_file() || !is_values(&name) {
            continue;
        }
        if entry.size() > MAX_FILE {
            bail!(
                "{label}: {} is larger than {} MiB",
                name.display(),
                MAX_FILE >> 20
            );
        }
        let mut text = String::new();
        entry.take(MAX_FILE).read_to_string(&mut text)?;
        out.push((format!("{label}:{}", name.display()), text));
    }
    Ok(out)
}

/// Every mapping with a `repository` and a `tag` names an image, on the systems its `os`
/// lists (Linux when it lists none).
fn images(node: &Value, source: &str, found: &mut Found, console: &Console) {
    match node {
        Value::Mapping(m) => {
            let repo = m
                .get("repository")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty());
            if let (Some(repo), Some(tag)) = (repo, m.get("tag")) {
                let tag = match tag {
                    Value::String(s) if s.is_empty() => Some("latest".to_owned()),
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                };
                match tag {
                    Some(tag) => {
                        let image = format!("{repo}:{tag}");
                        match m.get("os") {
                            Some(Value::String(os)) => {
                                for part in os.split(',').map(str::trim) {
                                    if part.eq_ignore_ascii_case("linux") {
                                        found.add(Lists::Linux, &image, source);
                                    } else if part.eq_ignore_ascii_case("windows") {
                                        found.add(Lists::Windows, &image, source);
                                    }
                                }
                            }
                            None | Some(Value::Null) => found.add(Lists::Linux, &image, source),
                            Some(_) => {
                                console.error(
                                    None,
                                    format!(
                                        "field 'os:' for image {image} neither a string nor nil"
                                    ),
                                );
                                found.add(Lists::Linux, &image, source);
                            }
                        }
                    }
                    None => console.warn(
                        None,
                        format!("{source}: image {repo} has a tag that is not a value; skipped"),
                    ),
                }
            }
            for (_, v) in m {
                images(v, source, found, console);
            }
        }
        Value::Sequence(items) => {
            for v in items {
                images(v, source, found, console);
            }
        }
        Value::Tagged(t) => images(&t.value, source, found, console),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    /// A package that inflates past its bound fails, naming it — even where the cut falls
    /// between two entries, which a reader ended by `take` took for the archive's end,
    /// leaving out the values files after it.
    #[test]
    fn a_package_past_its_bound_fails_instead_of_ending_early() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, data).unwrap();
        };
        // A header and 65,024 bytes: the values file's header begins at 64 KiB.
        add("app/big.bin", &vec![0u8; 65_024]);
        add(
            "app/values.yaml",
            b"image: {repository: rancher/app, tag: v1}\n",
        );
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let package = gz.finish().unwrap();
        let whole = super::values_within(std::io::Cursor::new(&package), "app.tgz", 1 << 20);
        assert_eq!(whole.unwrap().len(), 1);
        let cut = super::values_within(std::io::Cursor::new(&package), "app.tgz", 64 << 10);
        let e = format!("{:#}", cut.unwrap_err());
        assert!(e.contains("app.tgz") && e.contains("inflates past"), "{e}");
    }
}
