//! One file per command, each thin over the shared engine.

pub mod archive;
pub mod bounded;
pub mod chart_sources;
pub mod convert_list;
pub mod delete;
mod failed_list;
pub mod generate_list;
pub mod harbor;
pub mod inspect;
pub mod inspect_list;
pub mod list_tags;
pub mod load;
pub mod login;
pub mod merge_manifest;
pub mod mirror;
pub mod plan;
pub mod remote;
pub mod save;
mod save_gather;
pub mod save_validate;
mod save_writer;
pub mod scan;
pub use failed_list::{ListRun, all_failed, finish, write_failed};
mod scan_db;
pub mod sign;
mod sign_report;
pub mod status_table;
pub mod stored;
pub mod submit_spec;
pub mod targets;
pub mod validate;
pub mod view;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use hangar_shared::ratelimit::{Gate, Limits, RateGate};
use hangar_shared::reference::ImageRef;
use hangar_shared::registry::RegistryOptions;
use hangar_shared::store::RegistryPool;

/// A single-image command's reference, read as containers/image reads it: `docker://`
/// stripped, the transports this tool does not read refused. Given `warn` (only `inspect`
/// does: Hangar's other commands add the transport silently), a reference without one
/// gets Hangar's warning.
pub fn docker_reference(input: &str, warn: Option<&crate::console::Console>) -> Result<ImageRef> {
    if let Some(rest) = input.strip_prefix("docker://") {
        return Ok(ImageRef::parse_docker(rest)?);
    }
    for t in [
        "docker-daemon:",
        "docker-archive:",
        "oci:",
        "oci-archive:",
        "dir:",
    ] {
        if input.starts_with(t) {
            anyhow::bail!("transport {t:?} is not supported: only docker:// registries");
        }
    }
    if let Some(console) = warn {
        console.warn(
            None,
            format!(
                "Image reference protocol not provided, use 'docker' as default: docker://{input}"
            ),
        );
    }
    Ok(ImageRef::parse_docker(input)?)
}

pub fn pool(tls_verify: Option<bool>, authfile: Option<&Path>) -> RegistryPool {
    gated_pool(tls_verify, authfile, None)
}

/// A pool whose every request asks `gate` first.
pub fn gated_pool(
    tls_verify: Option<bool>,
    authfile: Option<&Path>,
    gate: Option<Arc<dyn Gate>>,
) -> RegistryPool {
    RegistryPool::new(
        RegistryOptions {
            tls_verify,
            gate,
            cert_dir: cert_dir(),
            ..Default::default()
        },
        authfile.map(Path::to_path_buf),
    )
}

/// `--cert-dir`, a global flag: given once on the command line, for every registry the
/// command reaches. Set by `main` before the command runs.
static CERT_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

pub fn set_cert_dir(dir: Option<std::path::PathBuf>) {
    if let Some(dir) = dir {
        let _ = CERT_DIR.set(dir);
    }
}

pub fn cert_dir() -> Option<std::path::PathBuf> {
    CERT_DIR.get().cloned()
}

/// `--insecure-policy`, a global flag: with it no `policy.json` is read and every image is
/// accepted, as Hangar's in-memory `insecureAcceptAnything`. Set by `main`.
static INSECURE_POLICY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_policy(insecure: bool) {
    INSECURE_POLICY.store(insecure, std::sync::atomic::Ordering::Relaxed);
}

/// The signature policy each image's source is checked against while it is planned:
/// `None` with `--insecure-policy`, or when neither `~/.config/containers/policy.json` nor
/// `/etc/containers/policy.json` exists (then everything is accepted). Read afresh for
/// each image, as containers/image reads it for each copy.
pub fn signature_policy() -> hangar_shared::Result<Option<hangar_shared::policy::Policy>> {
    if INSECURE_POLICY.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(None);
    }
    hangar_shared::policy::Policy::load_default()
}

/// A pool for a command's registry requests, under `rate`'s limits (see [`rate_gate`]).
/// Where a command's tasks run (the fleet `--nats` names, else this process) and the pool
/// this process plans with: on a fleet its requests count against the workers' budgets.
pub async fn backend(
    bus: &crate::cli::BusArgs,
    tls_verify: Option<bool>,
    authfile: Option<&Path>,
    rate: &crate::cli::RateArgs,
) -> Result<(crate::engine::job::Backend, Arc<RegistryPool>)> {
    use crate::engine::job::Backend;
    let backend = match &bus.nats {
        Some(_) => Backend::Fleet(mirror::fleet_client(bus).await?),
        None => Backend::Embedded,
    };
    let fleet = match &backend {
        Backend::Fleet(client) => Some(client),
        Backend::Embedded => None,
    };
    let pool = Arc::new(limited_pool(tls_verify, authfile, rate, fleet).await?);
    Ok((backend, pool))
}

pub async fn limited_pool(
    tls_verify: Option<bool>,
    authfile: Option<&Path>,
    rate: &crate::cli::RateArgs,
    fleet: Option<&async_nats::Client>,
) -> Result<RegistryPool> {
    let gate = rate_gate(rate, fleet).await?;
    Ok(gated_pool(tls_verify, authfile, gate))
}

/// The gate for this process's registry requests: on a fleet, the fleet's (the workers'
/// budgets, in-flight slots and holds, through NATS KV); alone, its own when it has limits.
pub async fn rate_gate(
    rate: &crate::cli::RateArgs,
    fleet: Option<&async_nats::Client>,
) -> Result<Option<Arc<dyn Gate>>> {
    let mut limits = Limits::default();
    for spec in &rate.rate_limits {
        let (host, n) = Limits::parse_entry("--rate-limit", spec)?;
        limits.budgets.insert(host, n);
    }
    for spec in &rate.max_in_flight {
        let (host, n) = Limits::parse_entry("--max-in-flight", spec)?;
        limits.concurrency.insert(host, n);
    }
    Ok(match fleet {
        Some(client) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let holder = format!("coord-{}-{nanos:x}", std::process::id());
            Some(RateGate::fleet(client.clone(), limits, &holder).await?)
        }
        None if limits.budgets.is_empty() && limits.concurrency.is_empty() => None,
        None => Some(Arc::new(RateGate::local(limits))),
    })
}

/// The summary of a copy (mirror, load, and the gathering of save and sync): images by
/// outcome — an image the destination already held is "already present", never "copied" —
/// and the blobs, each unique digest once by the most work it needed, so that the parts add
/// up to the whole. Returns the images that failed, by their list lines.
pub fn summarise(
    console: &crate::console::Console,
    report: &crate::engine::job::JobReport,
    done_word: &str,
    failed_before: usize,
) -> Vec<String> {
    use crate::engine::tracker::ImageResult;
    let (mut done, mut present, mut skipped) = (0usize, 0usize, 0usize);
    let mut failed = Vec::new();
    for (job, result) in &report.results {
        match result {
            ImageResult::Copied {
                already_present: true,
                ..
            } => present += 1,
            ImageResult::Copied { .. } => done += 1,
            ImageResult::Skipped(_) => skipped += 1,
            ImageResult::Failed(_) => failed.push(job.entry.original.clone()),
        }
    }
    let b = &report.blobs;
    console.info(
        None,
        format!(
            "Images: {done} {done_word}, {present} already present, {} failed, {skipped} skipped",
            failed_before + failed.len()
        ),
    );
    let extra = if b.extra_mounts > 0 {
        format!(" (and {} mounts into further repositories)", b.extra_mounts)
    } else {
        String::new()
    };
    console.info(
        None,
        format!(
            "Blobs: {} unique = {} copied + {} from the cache + {} mounted + {} already present{extra}; \
             {} copied in {:.1}s, {} saved by dedup and mounts",
            b.unique,
            b.copied,
            b.from_cache,
            b.mounted,
            b.present,
            indicatif::HumanBytes(report.stats.bytes_copied),
            report.elapsed.as_secs_f64(),
            indicatif::HumanBytes(b.saved_bytes),
        ),
    );
    failed
}

/// The count a validate command ends with, before its failed list.
pub fn verdicts(console: &crate::console::Console, passed: usize, failed: usize, skipped: usize) {
    console.info(
        None,
        format!("Validated: {passed} passed, {failed} failed, {skipped} skipped"),
    );
}

/// Runs a one-shot command under its `--timeout`: a registry that answers a byte at a
/// time cannot hold it.
pub async fn within<T>(
    timeout: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let bound = humantime::parse_duration(timeout)
        .with_context(|| format!("invalid --timeout {timeout:?}"))?;
    match tokio::time::timeout(bound, work).await {
        Ok(done) => done,
        Err(_) => anyhow::bail!(
            "no answer within {} (--timeout)",
            humantime::format_duration(bound)
        ),
    }
}

/// Writes a file whole or not at all, through a fresh temporary file
/// ([`hangar_shared::atomic`]).
pub fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    hangar_shared::atomic::write(path, contents.as_bytes(), None)
        .with_context(|| format!("writing {}", path.display()))
}

/// `[y/N]` on stdin.
pub fn confirm(question: &str) -> bool {
    use std::io::Write;
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok()
        && matches!(answer.trim(), "y" | "Y" | "yes" | "Yes")
}

/// Logs the list lines that named no valid image, as failed, and returns them.
pub fn report_rejected(
    console: &crate::console::Console,
    rejected: &[(hangar_shared::imagelist::ListEntry, String)],
    verb: &str,
) -> Vec<String> {
    rejected
        .iter()
        .map(|(entry, why)| {
            console.error(
                Some(entry.index),
                format!(
                    "Failed to {verb} image [{}] (line {}): invalid-input: {why}",
                    crate::commands::quoted_line(&entry.original),
                    entry.line_no
                ),
            );
            entry.original.clone()
        })
        .collect()
}

/// A report's file: `-r` or Hangar's default, its `[FORMAT]` replaced by `extension`
/// (Hangar replaces it in a given name too).
pub fn report_path(given: Option<&Path>, default: &str, extension: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let Some(given) = given else {
        return default.replace("[FORMAT]", extension).into();
    };
    // By bytes, as Go's strings.ReplaceAll: a name need not be UTF-8.
    let (bytes, mut out) = (given.as_os_str().as_bytes(), Vec::new());
    let mut rest = bytes;
    while let Some(at) = rest.windows(8).position(|w| w == b"[FORMAT]") {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(extension.as_bytes());
        rest = &rest[at + 8..];
    }
    out.extend_from_slice(rest);
    std::ffi::OsString::from_vec(out).into()
}

/// Logs the lines a list reader skipped, naming the list and line.
pub fn report_list_warnings(
    console: &crate::console::Console,
    list: &hangar_shared::imagelist::ImageList,
    label: &str,
) {
    for w in &list.warnings {
        console.warn(
            None,
            format!(
                "Ignore image list line {:?} ({label}:{}): {}",
                w.line, w.line_no, w.message
            ),
        );
    }
}

/// A list line as a message quotes it: at most 200 characters (a line may be megabytes;
/// the failed list keeps it whole), on one line.
pub fn quoted_line(original: &str) -> std::borrow::Cow<'_, str> {
    let cut: std::borrow::Cow<'_, str> = match original.char_indices().nth(200) {
        Some((end, _)) => format!("{}… ({} bytes)", &original[..end], original.len()).into(),
        None => original.into(),
    };
    // A line from a file has no line break; one a coordinator reports might, and would
    // start a log line of its own.
    match cut.contains(['\n', '\r']) {
        true => cut.replace('\n', "\\n").replace('\r', "\\r").into(),
        false => cut,
    }
}

/// Hangar's warning for a mirror-format line given to a command that takes the default
/// format only (save, sync, load, export): the line is skipped, not failed.
pub fn ignore_mirror_line(
    console: &crate::console::Console,
    entry: &hangar_shared::imagelist::ListEntry,
    file: &Path,
    command: &str,
) {
    console.warn(
        Some(entry.index),
        format!(
            "Ignore image list line \"{}\": invalid format ({}:{}: {command} takes the default list format only)",
            quoted_line(&entry.original),
            file.display(),
            entry.line_no
        ),
    );
}

/// A project flag (`--project`, `--source-project`, `--destination-project`): empty, or a
/// repository path in distribution's grammar — nothing a URL would resolve elsewhere.
pub fn check_project(flag: &str, value: &str) -> Result<()> {
    let value = value.trim().trim_matches('/');
    if value.is_empty() {
        return Ok(());
    }
    hangar_shared::reference::validate_repository(value)
        .map_err(|e| anyhow::anyhow!("{flag}: {}", e.message))
}

/// `-j`: Hangar's range (1–20, else 1 with a warning); `--debug` forces 1.
pub fn clamp_jobs(jobs: i64, debug: bool, console: &crate::console::Console) -> usize {
    if debug {
        return 1;
    }
    if !(1..=20).contains(&jobs) {
        console.warn(None, format!("Invalid worker num: {jobs}, set to 1"));
        return 1;
    }
    jobs as usize
}

// The CSV quoting is the scan reports' own.
pub use hangar_shared::scan::report::csv_line;

/// `4G`, `700M`, `1.5G`, `512Ki`, `1000` (bytes); binary units.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid size {text:?}: expected e.g. 4G or 700M"))?;
    let unit = unit
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i');
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => anyhow::bail!("invalid size {text:?}: unknown unit {unit:?}"),
    };
    let bytes = (n * mult as f64) as u64;
    if bytes == 0 {
        anyhow::bail!("invalid size {text:?}: must be more than zero");
    }
    Ok(bytes)
}

/// Asks before replacing an existing file, as Hangar does, unless `yes`. (An S3 object
/// is replaced only when the new one is complete; it is not asked about.)
pub fn may_overwrite(location: &str, yes: bool) -> Result<()> {
    let path = Path::new(location);
    if yes || location.starts_with("s3://") || !path.exists() {
        return Ok(());
    }
    let shown = path.display().to_string();
    if confirm(&format!("File {shown:?} already exists! Overwrite?")) {
        return Ok(());
    }
    anyhow::bail!("file {shown:?} already exists")
}

#[cfg(test)]
mod tests {
    #[test]
    fn report_names_take_the_format() {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"r\xff.[FORMAT]");
        let path = super::report_path(Some(std::path::Path::new(odd)), "d.[FORMAT]", "csv");
        assert_eq!(path.as_os_str().as_bytes(), b"r\xff.csv");
        assert_eq!(
            super::report_path(None, "d.[FORMAT]", "json"),
            std::path::PathBuf::from("d.json")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(super::parse_size("700M").unwrap(), 700 << 20);
        assert_eq!(super::parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(super::parse_size("1000").unwrap(), 1000);
        assert!(super::parse_size("12Q").is_err());
        assert!(super::parse_size("0").is_err());
    }
}
