//! `archive init | ls | merge | export | verify` (`store file` and `export file` are in
//! `stored`). Merge and export are the assembler fed
//! from other archives: every blob is re-verified on its way into the new archive.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use hangar_shared::archive::writer::write_archive;
use hangar_shared::archive::{
    ArchiveImage, ArchiveIndex, ArchiveReader, BlobSource, INDEX_NAME, blob_entry,
};
use hangar_shared::digest::Digest;
use hangar_shared::error::Error;
use hangar_shared::imagelist::{ImageList, LineKind};
use hangar_shared::manifest::Manifest;
use hangar_shared::verify::ByteStream;
use indicatif::HumanBytes;

use crate::cli::{
    ArchiveCmd, ArchiveExportArgs, ArchiveLsArgs, ArchiveMergeArgs, ExportSub, StoreCmd,
};
use crate::console::{Console, escape_controls};

pub async fn run(cmd: ArchiveCmd, console: &Console) -> Result<()> {
    match cmd {
        ArchiveCmd::Init { files } => init(&files, console),
        ArchiveCmd::Ls(a) => ls(&a, console).await,
        ArchiveCmd::Merge(a) => merge(&a, console).await,
        ArchiveCmd::Export(a) => match &a.sub {
            Some(ExportSub::File(f)) => super::stored::export_file(f, console).await,
            None => export(&a, console).await,
        },
        ArchiveCmd::Store {
            what: StoreCmd::File(a),
        } => super::stored::store_files(&a, console).await,
        ArchiveCmd::Store {
            what: StoreCmd::Chart(a),
        } => super::stored::store_charts(&a, console).await,
        ArchiveCmd::Verify { files } => verify(&files, console).await,
    }
}

/// An archive whose only entry is an empty index.
fn init(files: &[PathBuf], console: &Console) -> Result<()> {
    for file in files {
        if file.exists() {
            bail!("file {:?} already exists", file.display().to_string());
        }
    }
    for file in files {
        let json = ArchiveIndex::new().to_go_json()?;
        // Made in memory (a few hundred bytes), then written whole or not at all; streamed
        // as Go writes it (sizes in a data descriptor after the entry).
        let mut zip = zip::ZipWriter::new_stream(Vec::new());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .system(zip::System::Dos)
            .last_modified_time(zip::DateTime::default());
        zip.start_file(INDEX_NAME, options)?;
        std::io::Write::write_all(&mut zip, &json)?;
        let bytes = zip.finish()?.into_inner();
        hangar_shared::atomic::write(file, &bytes, None)
            .with_context(|| format!("writing {}", file.display()))?;
        console.info(None, format!("Create [{}]", file.display()));
    }
    Ok(())
}

/// Hangar's size unit: K below a million bytes, M below a billion, else G (binary steps).
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b < 1e6 {
        format!("{:.2}K", b / 1024.0)
    } else if b < 1e9 {
        format!("{:.2}M", b / 1024.0 / 1024.0)
    } else {
        format!("{:.2}G", b / 1024.0 / 1024.0 / 1024.0)
    }
}

/// One `archive ls` row: `%4d | source:tag | archs | oses | size` and a note.
async fn ls_row(n: usize, image: &ArchiveImage, archive: &ArchiveReader) -> String {
    let attestation = image.arch_list.iter().any(|a| a == "unknown")
        || image.os_list.iter().any(|o| o == "unknown");
    let archs: Vec<&str> = image
        .arch_list
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "unknown")
        .collect();
    let oses: Vec<&str> = image
        .os_list
        .iter()
        .map(String::as_str)
        .filter(|o| *o != "unknown")
        .collect();
    let layers: HashSet<&Digest> = image.images.iter().flat_map(|s| s.layers.iter()).collect();
    let size = layers
        .iter()
        .filter_map(|d| archive.entry(&blob_entry(d)).map(|e| e.size))
        .fold(0u64, u64::saturating_add);
    let (arch, os, note) = if archs.is_empty() && oses.is_empty() {
        let note = match image.images.as_slice() {
            [one] => match archive.manifest(&one.digest).await.map(|m| m.parse()) {
                Ok(Ok(Manifest::Image(m)))
                    if m.layers
                        .first()
                        .is_some_and(|l| l.media_type.contains("helm.chart")) =>
                {
                    " | (helm chart)"
                }
                _ => " | (custom file)",
            },
            _ => "",
        };
        ("NOARCH".to_owned(), "NOOS".to_owned(), note)
    } else {
        (
            archs.join(","),
            oses.join(","),
            if attestation {
                " | (with attestation)"
            } else {
                ""
            },
        )
    };
    format!(
        "{n:4} | {} | {arch} | {os} | {}{note}",
        image.name(),
        human(size)
    )
}

async fn ls(args: &ArchiveLsArgs, console: &Console) -> Result<()> {
    let Some(file) = args.file.as_ref().or(args.archive.as_ref()) else {
        bail!("the archive is required: use -f/--file or give it as the argument");
    };
    let archive = ArchiveReader::open(file).await?;
    let index = &archive.index;
    if args.json {
        crate::stdout::write(index.to_go_json_pretty()?.as_bytes())?;
        return Ok(());
    }
    if args.image_only {
        for image in &index.list {
            crate::stdout::outln!("{}", escape_controls(&image.name()))?;
        }
        return Ok(());
    }
    if !console.hides_time() {
        let created = index.time.split('T').next().unwrap_or_default();
        console.info(None, format!("Created time: {created}"));
    }
    console.info(None, format!("Index version: {}", index.version));
    console.info(None, "Images:");
    for (n, image) in index.list.iter().enumerate() {
        // The index is the archive's words: its names may hold escape sequences.
        let row = ls_row(n + 1, image, &archive).await;
        crate::stdout::outln!("{}", escape_controls(&row))?;
    }
    Ok(())
}

/// Blobs from several archives: the first that holds a digest serves it.
struct Archives(Vec<Arc<ArchiveReader>>);

#[async_trait]
impl BlobSource for Archives {
    async fn blob_size(&self, digest: &Digest) -> hangar_shared::error::Result<Option<u64>> {
        Ok(self.0.iter().find_map(|a| a.blob_size(digest)))
    }
    async fn blob_stream(
        &self,
        digest: &Digest,
        _size: u64,
    ) -> hangar_shared::error::Result<ByteStream> {
        match self.0.iter().find(|a| a.has_blob(digest)) {
            Some(a) => a.blob(digest, None).await,
            None => Err(Error::not_found(format!(
                "blob {digest} is in no input archive"
            ))),
        }
    }
}

async fn merge(args: &ArchiveMergeArgs, console: &Console) -> Result<()> {
    if args.files.len() < 2 {
        bail!("merge needs two or more archives: -f A.zip -f B.zip");
    }
    let Some(output) = &args.output else {
        bail!("the merged archive is required: use -o/--output");
    };
    super::may_overwrite(output, args.yes)?;
    let mut inputs = Vec::new();
    let mut images = Vec::new();
    for f in &args.files {
        let a = Arc::new(ArchiveReader::open(f).await?);
        images.extend(a.index.list.iter().cloned());
        inputs.push(a);
    }
    let w = write_archive(output, None, &images, Arc::new(Archives(inputs))).await?;
    console.info(
        None,
        format!(
            "Merged {} archives into {}: {} images, {}",
            args.files.len(),
            w.path.display(),
            w.images,
            HumanBytes(w.bytes)
        ),
    );
    Ok(())
}

async fn export(args: &ArchiveExportArgs, console: &Console) -> Result<()> {
    let Some(list_file) = &args.file else {
        bail!("image list file not provided: use -f/--file");
    };
    let Some(source) = &args.source else {
        bail!("the archive to export from is required: use -s/--source");
    };
    let Some(dest) = &args.destination else {
        bail!("the new archive is required: use -d/--destination");
    };
    super::may_overwrite(dest, args.yes)?;
    let archive = Arc::new(ArchiveReader::open(source).await?);
    let list = ImageList::read(list_file)?;
    let mut images = Vec::new();
    let mut failed = Vec::new();
    for entry in &list.entries {
        let LineKind::Default(r) = &entry.kind else {
            super::ignore_mirror_line(console, entry, list_file, "export");
            continue;
        };
        let r = r
            .clone()
            .with_registry(Some(args.source_registry.trim()).filter(|s| !s.is_empty()));
        let name = format!("{}/{}", r.registry, r.repository());
        let tag = r.tag.clone().unwrap_or_default();
        match archive
            .index
            .list
            .iter()
            .rev()
            .find(|i| i.source == name && i.tag == tag)
        {
            Some(i) => images.push(i.clone()),
            None => {
                console.error(
                    Some(entry.index),
                    format!(
                        "Failed to export [{}]: not found in {source}",
                        entry.original
                    ),
                );
                failed.push(entry.original.clone());
            }
        }
    }
    let w = write_archive(dest, None, &images, Arc::new(Archives(vec![archive]))).await?;
    console.info(
        None,
        format!(
            "Exported {} images into {}, {}",
            w.images,
            w.path.display(),
            HumanBytes(w.bytes)
        ),
    );
    super::finish(console, &args.failed, &failed, super::ListRun::Export)
}

/// The most problems one archive's verification lists (the first found; a damaged
/// archive can have as many as it has entries and manifest lines).
const MAX_PROBLEMS: usize = 1000;

/// Re-hashes every blob, checks every other entry's CRC-32, and checks that everything
/// the index names (and everything its manifests name) is there.
async fn verify_one(location: &str, console: &Console) -> Result<Vec<String>> {
    let archive = ArchiveReader::open(location).await?;
    let mut problems = Vec::new();
    let mut blobs = 0usize;
    let checks = futures_util::stream::iter(archive.entries().iter())
        .map(|e| {
            let archive = &archive;
            async move {
                let result = match e.name.strip_prefix("share/sha256/") {
                    Some(hex) => match format!("sha256:{hex}").parse::<Digest>() {
                        Ok(d) => match archive.blob(&d, None).await {
                            Ok(s) => s.try_for_each(|_| async { Ok(()) }).await,
                            Err(err) => Err(err),
                        },
                        Err(_) => Err(Error::invalid(format!(
                            "entry {:?}: not a sha256 digest name",
                            e.name
                        ))),
                    },
                    None => archive.read_entry(&e.name).await.map(drop),
                };
                (e, result)
            }
        })
        .buffer_unordered(4);
    tokio::pin!(checks);
    while let Some((e, result)) = checks.next().await {
        match result {
            Ok(()) if e.name.starts_with("share/") => blobs += 1,
            Ok(()) => {}
            Err(err) => problems.push(format!("entry {:?}: {}", e.name, err.message)),
        }
    }
    let mut checked = std::collections::HashSet::new();
    for image in &archive.index.list {
        // A stored file or chart is named by its file name, not an image reference.
        if !image.is_custom()
            && let Err(e) = image.reference()
        {
            problems.push(e.message);
        }
        for spec in &image.images {
            // A manifest listed by many images (or many times) is checked once: a hostile
            // index repeating one that names 40,000 missing layers would otherwise say so
            // again for every listing.
            if !checked.insert(&spec.digest) {
                continue;
            }
            if problems.len() >= MAX_PROBLEMS {
                break;
            }
            let hex = spec.digest.hex();
            for name in [format!("{hex}/index.json"), format!("{hex}/oci-layout")] {
                if archive.entry(&name).is_none() {
                    problems.push(format!("image {}: entry {name:?} is missing", image.name()));
                }
            }
            for d in spec.blobs() {
                if !archive.has_blob(d) {
                    problems.push(format!(
                        "image {}: entry {:?} is missing",
                        image.name(),
                        blob_entry(d)
                    ));
                }
            }
            if let Ok(m) = archive.manifest(&spec.digest).await
                && let Ok(Manifest::Image(m)) = m.parse()
            {
                for b in m.blobs() {
                    if !archive.has_blob(&b.digest) {
                        problems.push(format!(
                            "image {}: manifest {} names {}, whose entry {:?} is missing",
                            image.name(),
                            spec.digest,
                            b.digest,
                            blob_entry(&b.digest)
                        ));
                    }
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("and more: {more} problems not listed beyond these"));
    }
    if problems.is_empty() {
        console.info(
            None,
            format!(
                "Archive {location}: OK ({} images, {} entries, {blobs} blobs re-hashed)",
                archive.index.list.len(),
                archive.entries().len()
            ),
        );
    }
    Ok(problems)
}

async fn verify(files: &[String], console: &Console) -> Result<()> {
    let mut bad = 0;
    for f in files {
        let problems = match verify_one(f, console).await {
            Ok(p) => p,
            Err(e) => vec![format!("{e:#}")],
        };
        for p in &problems {
            console.error(None, format!("Archive {f}: {p}"));
        }
        if !problems.is_empty() {
            bad += 1;
        }
    }
    if bad > 0 {
        bail!("{bad} of {} archives failed verification", files.len());
    }
    Ok(())
}
