//! `hangar-loadtest`: `seed` synthetic images, run the delay/fault `proxy`, or `bench`
//! the mirror against skopeo and a raw bound.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use hangar_loadtest::{archive_bench, bench, proxy, seed, services::RegistryProcess};

#[derive(Parser)]
#[command(
    name = "hangar-loadtest",
    about = "Synthetic images, a WAN proxy and the mirror benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct SeedArgs {
    /// Number of images (tags).
    #[arg(long, default_value_t = 10)]
    images: usize,
    /// Own layers per image and platform.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Bytes per own layer.
    #[arg(long, default_value_t = 1 << 20)]
    layer_size: u64,
    /// Base layers shared by every image.
    #[arg(long, default_value_t = 2)]
    shared_layers: usize,
    /// Bytes per shared base layer.
    #[arg(long, default_value_t = 4 << 20)]
    shared_layer_size: u64,
    /// Share of images that are amd64+arm64 indexes.
    #[arg(long, default_value_t = 0.3)]
    multiarch: f64,
    /// Seed of the random generator the layers are made from.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Project (first path segment) of the seeded repositories.
    #[arg(long, default_value = "loadtest")]
    project: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build images offline and push them; writes the image list.
    Seed {
        /// Registry to push to (host:port; plain HTTP or TLS without verification).
        #[arg(long)]
        registry: String,
        /// Where to write the image list.
        #[arg(long, default_value = "seeded-list.txt")]
        list: PathBuf,
        #[command(flatten)]
        spec: SeedArgs,
    },
    /// Forward a port to an upstream with a one-way delay each way.
    Proxy {
        /// Address to listen on (host:port).
        #[arg(long)]
        listen: String,
        /// Address to forward to (host:port).
        #[arg(long)]
        upstream: String,
        /// Delay added in each direction, in milliseconds.
        #[arg(long, default_value_t = 25)]
        delay_ms: u64,
    },
    /// Mirror one seeded list four ways (hangar, skopeo, the raw bound, the copy floor), on loopback and via the proxy.
    Bench {
        /// The hangar-coord binary to measure (use a release build).
        #[arg(long, default_value = "target/release/hangar-coord")]
        hangar: PathBuf,
        /// Delay each way of the proxied (WAN) runs, in milliseconds.
        #[arg(long, default_value_t = 25)]
        delay_ms: u64,
        /// `--jobs` given to hangar-coord (images at once).
        #[arg(long, default_value_t = 20)]
        jobs: usize,
        /// Instead of hangar vs skopeo vs raw: the embedded mode vs fleet workers (--workers),
        /// each worker's registry traffic through a link of its own (--link-mbps).
        #[arg(long)]
        fleet: bool,
        /// Fleet sizes to measure (--fleet).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        workers: Vec<usize>,
        /// Each worker's own link (--fleet): megabytes per second each way; 0 for none (all
        /// workers on the machine's loopback).
        #[arg(long, default_value_t = 15)]
        link_mbps: u64,
        /// Each worker's own link (--fleet): one-way delay in milliseconds.
        #[arg(long, default_value_t = 10)]
        link_delay_ms: u64,
        /// Instead of mirroring: save into a zip and load it, beside skopeo to `oci:` and
        /// `dir:` and the raw bounds.
        #[arg(long)]
        archive: bool,
        /// Instead of mirroring: sign every image of the list, then validate.
        #[arg(long)]
        sign: bool,
        /// Instead of mirroring: scan the list, then scan again (re-match only).
        #[arg(long)]
        scan: bool,
        /// Instead of the four-way mirror: mirror the list once, then time a re-run and a
        /// `mirror validate` with nothing to do, at --delay-ms each way.
        #[arg(long)]
        noop: bool,
        /// Blob copies at once per fleet worker (`--blob-concurrency`; the worker's own
        /// default).
        #[arg(long, default_value_t = 8)]
        worker_concurrency: usize,
        /// Mirror and archive benches: after the table, this many more rounds of hangar, its
        /// raw bound and its floor back to back (each order of the three in turn), each
        /// round's ratios and their medians printed.
        #[arg(long, default_value_t = 0)]
        rounds: usize,
        #[command(flatten)]
        spec: SeedArgs,
    },
    /// Copy every unique blob of a list GET→PUT in parallel, unverified (the raw bound);
    /// with --save-dir, GET each into a file of that directory instead (the save's bound).
    Raw {
        /// The image list (as `seed` writes it).
        #[arg(long)]
        list: PathBuf,
        /// Source registry (host:port).
        #[arg(long)]
        source: String,
        /// Destination registry (host:port).
        #[arg(long, required_unless_present = "save_dir")]
        dest: Option<String>,
        /// GET every blob into a file of this directory instead of copying.
        #[arg(long, conflicts_with = "dest")]
        save_dir: Option<PathBuf>,
        /// Blob copies at once.
        #[arg(long, default_value_t = 32)]
        parallel: usize,
    },
    /// Tasks per second through JetStream with empty handlers (publish, pull, ack).
    QueueBench {
        /// Number of tasks to publish.
        #[arg(long, default_value_t = 20_000)]
        tasks: u64,
        /// Publishes in flight at once.
        #[arg(long, default_value_t = 64)]
        publishers: usize,
        /// Deliveries held at once by the consumer.
        #[arg(long, default_value_t = 256)]
        slots: usize,
    },
    /// Upload a file to an S3 location (`s3://bucket/key?endpoint=…`; AWS_* credentials).
    PutObject {
        /// Where to upload: `s3://bucket/key?endpoint=…&region=…`.
        location: String,
        /// The local file to upload.
        file: PathBuf,
    },
    /// Mirror one image with one big layer and report hangar-coord's peak RSS.
    Rss {
        /// The hangar-coord binary to measure (use a release build).
        #[arg(long, default_value = "target/release/hangar-coord")]
        hangar: PathBuf,
        /// Layer size in bytes (default 2 GiB).
        #[arg(long, default_value_t = 2 << 30)]
        size: u64,
        /// Measure `save` into a zip instead of `mirror`.
        #[arg(long)]
        save: bool,
    },
}

fn spec(registry: &str, a: &SeedArgs) -> seed::SeedSpec {
    seed::SeedSpec {
        registry: registry.to_owned(),
        project: a.project.clone(),
        images: a.images,
        layers_per_image: a.layers,
        layer_size: a.layer_size,
        shared_layers: a.shared_layers,
        shared_layer_size: a.shared_layer_size,
        multiarch_share: a.multiarch,
        seed: a.seed,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    match Cli::parse().command {
        Cmd::Seed {
            registry,
            list,
            spec: a,
        } => {
            let reg = seed::connect(&registry).await?;
            let dir = tempfile::tempdir()?;
            let lines = seed::seed(&reg, &spec(&registry, &a), dir.path()).await?;
            std::fs::write(&list, lines.join("\n") + "\n")
                .with_context(|| format!("writing {}", list.display()))?;
            eprintln!(
                "seeded {} images into {registry}; list in {}",
                lines.len(),
                list.display()
            );
        }
        Cmd::Proxy {
            listen,
            upstream,
            delay_ms,
        } => {
            let p = proxy::start(
                &listen,
                &upstream,
                proxy::ProxyOptions {
                    delay: Duration::from_millis(delay_ms),
                    ..Default::default()
                },
            )
            .await?;
            eprintln!(
                "proxy {} -> {upstream} with {delay_ms} ms each way; Ctrl-C to stop",
                p.addr
            );
            tokio::signal::ctrl_c().await?;
        }
        Cmd::Bench {
            hangar,
            delay_ms,
            jobs,
            fleet,
            workers,
            link_mbps,
            link_delay_ms,
            archive,
            sign,
            scan,
            noop,
            worker_concurrency,
            rounds,
            spec: a,
        } => {
            let source = RegistryProcess::start()?;
            let reg = seed::connect(&source.addr).await?;
            let dir = tempfile::tempdir()?;
            let lines = seed::seed(&reg, &spec(&source.addr, &a), dir.path()).await?;
            let list = dir.path().join("list.txt");
            std::fs::write(&list, lines.join("\n") + "\n")?;
            let b = bench::BenchSpec {
                hangar,
                list,
                lines,
                source: source.addr.clone(),
                delay: Duration::from_millis(delay_ms),
                jobs,
                workdir: dir.path().to_owned(),
                rounds,
            };
            if noop {
                let rows = hangar_loadtest::noop_bench::run(&b, &source).await?;
                println!("{}", hangar_loadtest::noop_bench::table(&rows, b.delay));
                return Ok(());
            }
            if scan {
                let (rows, bytes, images) = hangar_loadtest::scan_bench::bench(&b).await?;
                println!(
                    "{}",
                    hangar_loadtest::scan_bench::table(&rows, bytes, images)
                );
                return Ok(());
            }
            if sign {
                let rows = tokio::task::block_in_place(|| hangar_loadtest::sign_bench::bench(&b))?;
                println!("{}", hangar_loadtest::sign_bench::table(&rows));
                return Ok(());
            }
            if archive {
                let rows = archive_bench::run(&b).await?;
                println!("{}", archive_bench::table(&rows));
                if rounds > 0 {
                    let rounds = archive_bench::save_rounds(&b).await?;
                    for (bound, pairs) in bench::against_bounds(&rounds, "save floor") {
                        let what = format!("save (zip), streamed, vs the {bound}");
                        println!("{}", bench::rounds_report(&what, bound, &pairs));
                    }
                }
                return Ok(());
            }
            if fleet {
                let link = (link_mbps > 0).then(|| hangar_loadtest::link::LinkOptions {
                    rate: link_mbps * 1_000_000,
                    delay: Duration::from_millis(link_delay_ms),
                });
                let rows =
                    hangar_loadtest::fleet_bench::run(&b, &workers, worker_concurrency, link)
                        .await?;
                println!("{}", hangar_loadtest::fleet_bench::table(&rows));
                return Ok(());
            }
            let far = format!("{delay_ms} ms each way");
            let mut rows = bench::run_network(&b, "loopback", Duration::ZERO).await?;
            rows.extend(bench::run_network(&b, &far, b.delay).await?);
            println!("{}", bench::table(&rows));
            if rounds > 0 {
                for (network, delay) in [("loopback", Duration::ZERO), (far.as_str(), b.delay)] {
                    let rounds = bench::mirror_rounds(&b, delay).await?;
                    for (bound, pairs) in bench::against_bounds(&rounds, "copy floor") {
                        let what = format!("mirror, {network}, vs the {bound}");
                        println!("{}", bench::rounds_report(&what, bound, &pairs));
                    }
                }
            }
        }
        Cmd::Raw {
            list,
            source,
            dest,
            save_dir,
            parallel,
        } => {
            let text = std::fs::read_to_string(&list)
                .with_context(|| format!("reading {}", list.display()))?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect();
            let reg = seed::connect(&source).await?;
            let blobs = bench::unique_blobs(&reg, &lines).await?;
            let start = std::time::Instant::now();
            match (&dest, &save_dir) {
                (_, Some(dir)) => {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    archive_bench::raw_save(&source, &blobs, dir, parallel).await?;
                }
                (Some(dest), None) => bench::raw_copy(&source, dest, &blobs, parallel).await?,
                (None, None) => anyhow::bail!("--dest or --save-dir"),
            }
            println!(
                "raw: {} blobs in {:.2}s",
                blobs.len(),
                start.elapsed().as_secs_f64()
            );
        }
        Cmd::QueueBench {
            tasks,
            publishers,
            slots,
        } => {
            let r = hangar_loadtest::queue_bench::run(tasks, publishers, slots).await?;
            println!(
                "| {} tasks | {} publishers | {} slots | published in {:.2}s ({:.0}/s) | through in {:.2}s ({:.0}/s) |",
                r.tasks,
                r.publishers,
                r.slots,
                r.publish_secs,
                r.tasks as f64 / r.publish_secs,
                r.total_secs,
                r.tasks as f64 / r.total_secs
            );
        }
        Cmd::PutObject { location, file } => {
            let (store, path) = hangar_shared::archive::locate(&location)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            object_store::ObjectStoreExt::put(store.as_ref(), &path, bytes.into()).await?;
            println!("uploaded {} to {location}", file.display());
        }
        Cmd::Rss { hangar, size, save } => {
            let source = RegistryProcess::start()?;
            let dest = RegistryProcess::start()?;
            let reg = seed::connect(&source.addr).await?;
            let dir = tempfile::tempdir()?;
            let s = seed::SeedSpec {
                registry: source.addr.clone(),
                project: "big".into(),
                images: 1,
                layers_per_image: 1,
                layer_size: size,
                shared_layers: 0,
                shared_layer_size: 0,
                multiarch_share: 0.0,
                seed: 7,
            };
            let lines = seed::seed(&reg, &s, dir.path()).await?;
            let list = dir.path().join("list.txt");
            std::fs::write(&list, lines.join("\n") + "\n")?;
            let mut cmd = std::process::Command::new(&hangar);
            if save {
                cmd.args(["save", "--tls-verify=false", "-y", "-d"])
                    .arg(dir.path().join("big.zip"))
                    .arg("-f");
            } else {
                cmd.args(["mirror", "--tls-verify=false", "-d", &dest.addr, "-f"]);
            }
            cmd.arg(&list)
                .arg("-o")
                .arg(dir.path().join("failed.txt"))
                .stdout(std::process::Stdio::null());
            let (elapsed, rss) = tokio::task::block_in_place(|| bench::run_measured(&mut cmd))?;
            println!(
                "| one {:.2} GiB layer | {:.1} s | peak RSS {:.1} MB |",
                size as f64 / (1u64 << 30) as f64,
                elapsed.as_secs_f64(),
                rss.unwrap_or(0) as f64 / 1024.0
            );
        }
    }
    Ok(())
}
