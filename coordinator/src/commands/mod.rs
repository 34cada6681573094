//! One file per command, each thin over the shared engine.

pub mod convert_list;
pub mod delete;
pub mod inspect;
pub mod list_tags;
pub mod login;
pub mod merge_manifest;
pub mod mirror;
pub mod validate;

use std::path::Path;

use anyhow::{Context as _, Result};
use hangar_shared::registry::RegistryOptions;
use hangar_shared::store::RegistryPool;

/// Strips `docker://`, warning as Hangar does when no transport was given; refuses the
/// transports this tool does not read.
pub fn docker_reference(input: &str, console: &crate::console::Console) -> Result<String> {
    if let Some(rest) = input.strip_prefix("docker://") {
        return Ok(rest.to_owned());
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
    console.warn(
        None,
        format!("No transport specified for {input:?}, using docker://"),
    );
    Ok(input.to_owned())
}

pub fn pool(tls_verify: Option<bool>, authfile: Option<&Path>) -> RegistryPool {
    RegistryPool::new(
        RegistryOptions {
            tls_verify,
            ..Default::default()
        },
        authfile.map(Path::to_path_buf),
    )
}

/// Writes a file whole or not at all (temp file + rename).
pub fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
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
