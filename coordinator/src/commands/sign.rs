//! `generate-sigstore-key`, `sign` and `sign validate`: cosign-compatible key-based signing.
//! Keyless signing and transparency logs need Fulcio/Rekor on the network; they are refused
//! with a clear message instead of hanging in an air gap.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt;
use hangar_shared::digest::Digest;
use hangar_shared::error::Error;
use hangar_shared::manifest::{Platform, PlatformFilter};
use hangar_shared::reference::ImageRef;
use hangar_shared::sign::cosign::{self, Signed, Verdict};
use hangar_shared::sign::{KeyPair, PublicKey};
use hangar_shared::store::RegistryPool;
use serde_json::json;

use crate::cli::{GenerateKeyArgs, SignArgs, SignValidateArgs};
use crate::console::Console;
use crate::engine::planner;

/// Reads a passphrase: the file (trimmed), else `COSIGN_PASSWORD`, else a prompt (twice
/// when creating a key).
fn passphrase(file: Option<&Path>, creating: bool) -> Result<Vec<u8>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
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
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
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
    write_mode(&key_path, pair.encrypted_pem(&pass)?.as_bytes(), 0o600)?;
    write_mode(&pub_path, pair.public().to_pem()?.as_bytes(), 0o644)?;
    console.info(
        None,
        format!("Private key written to {key_path}, public key to {pub_path}"),
    );
    Ok(())
}

/// Writes a file whole with `mode`, through a temporary file created with that mode.
fn write_mode(path: &str, bytes: &[u8], mode: u32) -> Result<()> {
    hangar_shared::atomic::write(std::path::Path::new(path), bytes, Some(mode))
        .with_context(|| format!("writing {path}"))
}

/// One digest to sign or verify: the index's, or a selected platform's.
struct Subject {
    digest: Digest,
    media_type: String,
    platform: Option<Platform>,
}

/// The index digest (when `with_index` and the image is an index) and every platform
/// digest passing the filter (attestations never pass: their platform is unknown).
async fn subjects(
    pool: &RegistryPool,
    image: &ImageRef,
    filter: &PlatformFilter,
    with_index: bool,
) -> Result<Vec<Subject>, Error> {
    let store = pool.registry(&image.registry).await?;
    let sel = planner::select(store.as_ref(), None, image, filter, false).await?;
    let mut out = Vec::new();
    if let Some(top) = &sel.top
        && !sel.single
        && with_index
    {
        out.push(Subject {
            digest: top.digest.clone(),
            media_type: top.media_type.clone(),
            platform: None,
        });
    }
    for e in sel.entries.iter().filter(|e| !e.is_attestation()) {
        out.push(Subject {
            digest: e.digest.clone(),
            media_type: e.media_type.clone(),
            platform: e.platform.clone(),
        });
    }
    Ok(out)
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
    let key = Arc::new(load_key(key_path, args.passphrase_file.as_deref())?);
    let t = super::targets::targets(&args.list, debug, &console)?;
    let pool = Arc::new(
        super::limited_pool(
            args.list.access.tls_verify,
            args.list.access.authfile.as_deref(),
            &args.list.rate,
            None,
        )
        .await?,
    );
    let mut failed = t.failed;
    let (filter, with_index, timeout) = (t.filter.clone(), args.sign_manifest_index, t.timeout);
    let mut results = futures_util::stream::iter(t.items.iter())
        .map(|target| {
            let (pool, filter, key, console) =
                (pool.clone(), filter.clone(), key.clone(), console.clone());
            async move {
                let n = Some(target.entry.index);
                let work = async {
                    let image = &target.image;
                    let subjects = subjects(&pool, image, &filter, with_index).await?;
                    if subjects.is_empty() {
                        console.warn(
                            n,
                            format!("Skip sign image [{image}]: {}", planner::NO_PLATFORM),
                        );
                    }
                    let store = pool.registry(&image.registry).await?;
                    let identity = cosign::docker_reference(&image.registry, &image.repository());
                    for s in subjects {
                        let r = cosign::sign(
                            store.as_ref(),
                            &image.repository(),
                            &s.digest,
                            &identity,
                            &key,
                        )
                        .await?;
                        let at = format!("{}/{}@{}", image.registry, image.repository(), s.digest);
                        match r {
                            Signed::Added => console.info(n, format!("Signed [{at}]")),
                            Signed::AlreadySigned => {
                                console.info(n, format!("Already signed [{at}], skipped"))
                            }
                        }
                    }
                    Ok::<_, Error>(())
                };
                (target, super::targets::with_timeout(timeout, work).await)
            }
        })
        .buffer_unordered(t.jobs);
    while let Some((target, result)) = results.next().await {
        if let Err(e) = result {
            console.error(
                Some(target.entry.index),
                format!(
                    "Failed to sign [{}]: {}: {}",
                    target.image, e.class, e.message
                ),
            );
            failed.push(target.entry.original.clone());
        }
    }
    let failed_file = args
        .list
        .failed
        .clone()
        .unwrap_or_else(|| "sign-failed.txt".into());
    super::finish(&console, &failed_file, &failed, "sign")
}

/// A report row: one digest of one image.
struct Row {
    reference: String,
    subject: Subject,
    payload: String,
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
    let pem = std::fs::read_to_string(key_path)
        .with_context(|| format!("reading key {}", key_path.display()))?;
    let key = Arc::new(PublicKey::from_pem(&pem, &key_path.display().to_string())?);
    let t = super::targets::targets(&args.list, debug, &console)?;
    let pool = Arc::new(
        super::limited_pool(
            args.list.access.tls_verify,
            args.list.access.authfile.as_deref(),
            &args.list.rate,
            None,
        )
        .await?,
    );
    let mut failed = t.failed;
    let (filter, with_index, timeout) = (t.filter.clone(), args.validate_manifest_index, t.timeout);
    let exact = args.exact_repository.clone();
    let mut results = futures_util::stream::iter(t.items.iter())
        .map(|target| {
            let (pool, filter, key, exact) =
                (pool.clone(), filter.clone(), key.clone(), exact.clone());
            async move {
                let work = async {
                    let image = &target.image;
                    let store = pool.registry(&image.registry).await?;
                    let mut out = Vec::new();
                    for s in subjects(&pool, image, &filter, with_index).await? {
                        let v = cosign::verify(
                            store.as_ref(),
                            &image.repository(),
                            &s.digest,
                            &key,
                            exact.as_deref(),
                        )
                        .await?;
                        out.push((s, v));
                    }
                    Ok::<_, Error>(out)
                };
                (target, super::targets::with_timeout(timeout, work).await)
            }
        })
        .buffer_unordered(t.jobs);
    let mut rows: Vec<Row> = Vec::new();
    let (mut passed, mut unsigned_images) = (0, 0);
    while let Some((target, result)) = results.next().await {
        let n = Some(target.entry.index);
        let reference = target.image.to_string();
        match result {
            Err(e) => {
                console.error(
                    n,
                    format!("FAILED: [{reference}]: {}: {}", e.class, e.message),
                );
                failed.push(target.entry.original.clone());
            }
            Ok(checked) => {
                let mut bad = Vec::new();
                let mut unsigned = false;
                for (subject, verdict) in checked {
                    let at = format!("{}@{}", target.image.name_and_tag(), subject.digest);
                    let payload = match verdict {
                        Verdict::Verified { payload } => payload,
                        Verdict::NoSignature => {
                            unsigned = true;
                            let text = format!("No signature found of image [{at}]");
                            console.warn(n, &text);
                            text
                        }
                        Verdict::Invalid(why) => {
                            bad.push(format!("{}: {why}", subject.digest));
                            why
                        }
                    };
                    rows.push(Row {
                        reference: reference.clone(),
                        subject,
                        payload,
                    });
                }
                if bad.is_empty() {
                    if unsigned {
                        unsigned_images += 1;
                    } else {
                        passed += 1;
                        console.info(n, format!("PASS: [{reference}]"));
                    }
                } else {
                    console.error(n, format!("FAILED: [{reference}]: {}", bad.join("; ")));
                    failed.push(target.entry.original.clone());
                }
            }
        }
    }
    let report = args
        .report
        .clone()
        .unwrap_or_else(|| format!("sign-validate-report.{format}").into());
    super::write_atomically(&report, &render(&rows, &format)?)?;
    console.info(
        None,
        format!(
            "Sign validate report output to {:?}",
            report.display().to_string()
        ),
    );
    let failed_file = args
        .list
        .failed
        .clone()
        .unwrap_or_else(|| "sign-failed.txt".into());
    // Unsigned images are warned about, not failed (as Hangar): counted as skipped.
    super::verdicts(&console, passed, failed.len(), unsigned_images);
    super::finish(&console, &failed_file, &failed, "validate")
}

/// The report (schema of Hangar's §7.2): JSON, YAML, or CSV with Hangar's header.
fn render(rows: &[Row], format: &str) -> Result<String> {
    if format == "csv" {
        let mut out = String::from(
            "image,arch,os,payload,digest,tlogVerify,mediaType,certificateIssuer,certificateSubject,\
             githubWorkflowName,githubWorkflowRef,githubWorkflowRepository,githubWorkflowSha,\
             githubWorkflowTrigger\n",
        );
        for r in rows {
            let p = r.subject.platform.clone().unwrap_or_default();
            let cells = [
                r.reference.clone(),
                p.architecture,
                p.os,
                r.payload.clone(),
                r.subject.digest.to_string(),
                "false".into(),
                r.subject.media_type.clone(),
            ];
            // No certificate or workflow columns: signatures here are key-based.
            out.push_str(&super::csv_line(
                cells
                    .into_iter()
                    .chain(std::iter::repeat_n(String::new(), 7)),
            ));
        }
        return Ok(out);
    }
    let results = super::by_reference(rows.iter().map(|r| {
        let image = json!({
            "digest": r.subject.digest.to_string(),
            "mediaType": r.subject.media_type,
            "platform": r.subject.platform,
            "tlogVerified": false,
            "payload": r.payload,
        });
        (r.reference.clone(), image)
    }));
    let doc = json!({
        "time": hangar_shared::archive::index::go_time_now(),
        "results": results,
    });
    Ok(match format {
        "yaml" => serde_yaml_ng::to_string(&doc)?,
        _ => serde_json::to_string_pretty(&doc)?,
    })
}
