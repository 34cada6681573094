//! `generate-sigstore-key`, `sign` and `sign validate`: cosign-compatible key-based signing.
//! Keyless signing and transparency logs need Fulcio/Rekor on the network; they are refused
//! with a clear message instead of hanging in an air gap.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use hangar_shared::sign::{KeyPair, PublicKey};
use hangar_shared::task::{Outcome, Verdict};

use super::sign_report::{NO_SIGNATURES, Row, render};
use crate::cli::{GenerateKeyArgs, SignArgs, SignValidateArgs};
use crate::console::Console;
use crate::engine::planner;
use crate::engine::work::{self, ImageOutcomes, Work};
use crate::spec::{JobKind, JobSpec};

/// Reads a passphrase: the file (trimmed), else `COSIGN_PASSWORD`, else a prompt (twice
/// when creating a key).
fn passphrase(file: Option<&Path>, creating: bool) -> Result<Vec<u8>> {
    if let Some(f) = file {
        let text = hangar_shared::local_file::read_text(f, hangar_shared::local_file::CONFIG)
            .with_context(|| format!("reading passphrase file {}", f.display()))?;
        return Ok(text.trim().as_bytes().to_vec());
    }
    if let Ok(p) = std::env::var("COSIGN_PASSWORD") {
        return Ok(p.into_bytes());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no passphrase: use --passphrase-file or COSIGN_PASSWORD (no terminal to ask on)");
    }
    let first = rpassword::prompt_password("Enter password for private key: ")?;
    if creating {
        let again = rpassword::prompt_password("Enter password for private key again: ")?;
        if first != again {
            bail!("passwords do not match");
        }
    }
    Ok(first.into_bytes())
}

/// Reads and decrypts a cosign private key.
/// The keys a job signing in this process needs (`--sign-key` names a key file here; on
/// the fleet it names the workers' key): none, or that file's key by its path.
pub fn keys_here(
    key: Option<&str>,
    passphrase_file: Option<&Path>,
) -> Result<std::collections::HashMap<String, std::sync::Arc<KeyPair>>> {
    let mut keys = std::collections::HashMap::new();
    if let Some(path) = key {
        let pair = load_key(Path::new(path), passphrase_file)?;
        keys.insert(path.to_owned(), std::sync::Arc::new(pair));
    }
    Ok(keys)
}

pub fn load_key(path: &Path, passphrase_file: Option<&Path>) -> Result<KeyPair> {
    let pem = hangar_shared::local_file::read_text(path, hangar_shared::local_file::CONFIG)
        .with_context(|| format!("reading key {}", path.display()))?;
    let pass = passphrase(passphrase_file, false)?;
    Ok(KeyPair::from_encrypted_pem(
        &pem,
        &pass,
        &path.display().to_string(),
    )?)
}

pub fn generate_key(args: &GenerateKeyArgs, console: &Console) -> Result<()> {
    let key_path = format!("{}.key", args.prefix);
    let pub_path = format!("{}.pub", args.prefix);
    for p in [&key_path, &pub_path] {
        if Path::new(p).exists() && !args.yes {
            bail!("{p} already exists (use -y to overwrite)");
        }
    }
    let pass = passphrase(args.passphrase_file.as_deref(), true)?;
    if pass.len() < 5 {
        console.warn(None, "The passphrase is shorter than 5 characters");
    }
    let pair = KeyPair::generate();
    let (private, public) = (pair.encrypted_pem(&pass)?, pair.public().to_pem()?);
    // Both written before either replaces an old one, the public half first: a failure
    // leaves the old pair as it was, never a new private key beside an old public one.
    hangar_shared::atomic::write_together(&[
        (Path::new(&pub_path), public.as_bytes(), Some(0o644)),
        (Path::new(&key_path), private.as_bytes(), Some(0o600)),
    ])
    .with_context(|| format!("writing {key_path} and {pub_path}"))?;
    console.info(
        None,
        format!("Private key written to {key_path}, public key to {pub_path}"),
    );
    Ok(())
}

pub async fn sign(args: &SignArgs, debug: bool, console: Arc<Console>) -> Result<()> {
    if !args.oidc_provider.is_empty() {
        bail!(
            "keyless signing (--oidc-provider) is not supported: it needs an OIDC provider and \
             Fulcio ({}); sign with a key (-p/--key)",
            args.fulcio_url
        );
    }
    if args.tlog_upload {
        bail!(
            "--tlog-upload is not supported: no transparency log ({}) is used; signatures are \
             stored in the registry only",
            args.rekor_url
        );
    }
    let Some(key_path) = &args.key else {
        bail!("the private key is required: use -p/--key");
    };
    let list = &args.list;
    let t = super::targets::targets(list, debug, &console)?;
    list.platforms.log(&console);
    // Here `-p` is a key file, read now; on the fleet it names the workers' key
    // (`hangar-worker --sign-key NAME=PATH`), and no key material leaves them.
    let key = key_path.display().to_string();
    let work = Work::Sign {
        key: key.clone(),
        with_index: args.sign_manifest_index,
    };
    let mut failed = t.failed_lines();
    let items = &t.items;
    let finished = |i: usize, result: ImageOutcomes| {
        let target = &items[i];
        let n = Some(target.entry.index);
        let image = &target.image;
        match result {
            Ok(signed) if signed.is_empty() => console.warn(
                n,
                format!("Skip sign image [{image}]: {}", planner::NO_PLATFORM),
            ),
            Ok(signed) => {
                for (d, outcome) in signed {
                    let at = format!("{}/{}@{}", image.registry, image.repository(), d.digest);
                    match outcome {
                        Outcome::Signed { added: false } => {
                            console.info(n, format!("Already signed [{at}], skipped"))
                        }
                        _ => console.info(n, format!("Signed [{at}]")),
                    }
                }
            }
            Err(e) => {
                console.error(
                    n,
                    format!("Failed to sign [{image}]: {}: {}", e.class, e.message),
                );
                failed.push(target.entry.original.clone());
            }
        }
    };
    match &args.remote.server {
        Some(server) => {
            let mut spec = JobSpec::images(JobKind::Sign, super::targets::list_text(list)?, list);
            spec.options.sign_key = Some(key);
            let remote = super::remote::Remote {
                server,
                api: &args.remote.api,
                spec,
                outage: super::targets::outage(list)?,
            };
            super::remote::replay(remote, t.items.len(), &console, finished).await?;
        }
        None => {
            let run = super::targets::open(list, &t, &console, |here, embedded| {
                if embedded {
                    here.sign_keys = keys_here(Some(&key), args.passphrase_file.as_deref())?;
                }
                Ok(())
            })
            .await?;
            work::run(
                &work,
                &t.work(),
                &t.filter,
                &run.pool,
                run.bus,
                t.per_image(&run.job),
                finished,
            )
            .await?;
        }
    }
    let failed_file = list
        .failed
        .clone()
        .unwrap_or_else(|| "sign-failed.txt".into());
    super::finish(&console, &failed_file, &failed, super::ListRun::Sign)
}

pub async fn validate(args: &SignValidateArgs, debug: bool, console: Arc<Console>) -> Result<()> {
    if args.certificate_identity.is_some() || args.certificate_oidc_issuer.is_some() {
        bail!("keyless verification is not supported: verify with a public key (-k/--key)");
    }
    let format = args.format.to_ascii_lowercase();
    if !matches!(format.as_str(), "json" | "yaml" | "csv") {
        bail!(
            "unknown report format {:?}: use json, yaml or csv",
            args.format
        );
    }
    let Some(key_path) = &args.key else {
        bail!("the public key is required: use -k/--key");
    };
    let pem = hangar_shared::local_file::read_text(key_path, hangar_shared::local_file::CONFIG)
        .with_context(|| format!("reading key {}", key_path.display()))?;
    // Read here so a bad key file fails the command at once, naming it; the checks
    // carry its PEM (a public key is no secret).
    PublicKey::from_pem(&pem, &key_path.display().to_string())?;
    let list = &args.list;
    let t = super::targets::targets(list, debug, &console)?;
    list.platforms.log(&console);
    console.info(None, format!("Output Format: [{}]", args.format));
    let work = Work::Verify {
        public_key: pem.clone(),
        identity: args.exact_repository.clone(),
        with_index: args.validate_manifest_index,
    };
    let mut failed = t.failed_lines();
    let mut rows: Vec<Row> = Vec::new();
    let (mut passed, mut unsigned_images) = (0, 0);
    let items = &t.items;
    let finished = |i: usize, result: ImageOutcomes| {
        let target = &items[i];
        let n = Some(target.entry.index);
        let reference = target.image.to_string();
        let checked = match result {
            Ok(checked) => checked,
            Err(e) => {
                console.error(
                    n,
                    format!("FAILED: [{reference}]: {}: {}", e.class, e.message),
                );
                failed.push(target.entry.original.clone());
                return;
            }
        };
        let mut bad = Vec::new();
        // Hangar passes an image any of whose digests is signed.
        let mut signed = false;
        let mut verdicts = Vec::new();
        for (subject, outcome) in checked {
            let payload = match outcome {
                Outcome::Checked {
                    verdict: Verdict::Pass { payload },
                } => {
                    signed = true;
                    payload.unwrap_or_default()
                }
                Outcome::Checked {
                    verdict: Verdict::Absent,
                } => NO_SIGNATURES.to_owned(),
                Outcome::Checked {
                    verdict: Verdict::Fail { why },
                } => {
                    bad.push(format!("{}: {why}", subject.digest));
                    why
                }
                other => {
                    let why = format!("unexpected outcome {other:?}");
                    bad.push(format!("{}: {why}", subject.digest));
                    why
                }
            };
            verdicts.push(Row {
                reference: reference.clone(),
                subject,
                payload,
            });
        }
        // A failed image is not in the report, as in Hangar (its payloads would read as
        // signatures to a script that checks for the unsigned words).
        if bad.is_empty() {
            rows.extend(verdicts);
        }
        if bad.is_empty() {
            if signed {
                passed += 1;
                console.info(n, format!("PASS: [{reference}]"));
            } else {
                unsigned_images += 1;
                console.warn(n, format!("No signature found of image [{reference}]"));
            }
        } else {
            console.error(n, format!("FAILED: [{reference}]: {}", bad.join("; ")));
            failed.push(target.entry.original.clone());
        }
    };
    match &args.remote.server {
        Some(server) => {
            let mut spec = JobSpec::images(
                JobKind::SignValidate,
                super::targets::list_text(list)?,
                list,
            );
            spec.options.public_key = Some(pem);
            spec.options.exact_repository = args.exact_repository.clone();
            let remote = super::remote::Remote {
                server,
                api: &args.remote.api,
                spec,
                outage: super::targets::outage(list)?,
            };
            super::remote::replay(remote, t.items.len(), &console, finished).await?;
        }
        None => {
            let run = super::targets::open(list, &t, &console, |_, _| Ok(())).await?;
            work::run(
                &work,
                &t.work(),
                &t.filter,
                &run.pool,
                run.bus,
                t.per_image(&run.job),
                finished,
            )
            .await?;
        }
    }
    let report = super::report_path(
        args.report.as_deref(),
        "sign-validate-report.[FORMAT]",
        &format,
    );
    super::write_atomically(&report, &render(&rows, &format)?)?;
    // Hangar's words, its copy of scan's.
    console.info(
        None,
        format!("Scan report output to {:?}", report.display().to_string()),
    );
    let failed_file = list
        .failed
        .clone()
        .unwrap_or_else(|| "sign-failed.txt".into());
    // Unsigned images are warned about, not failed (as Hangar): counted as skipped.
    super::verdicts(&console, passed, failed.len(), unsigned_images);
    super::finish(
        &console,
        &failed_file,
        &failed,
        super::ListRun::SignatureValidate,
    )
}
