//! The vulnerability databases `scan` (and `mirror`/`save --scan-db`) match against: OSV
//! record sets from a directory, a zip, http(s), s3:// or oci://, each bounded in size and
//! time while it is fetched, spooled to disk rather than held in memory.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt;
use hangar_shared::registry::Side;
use hangar_shared::scan::osv::{Database, DbLimits};

use crate::console::Console;

/// Connecting to a database's http(s) server.
const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A download that sends nothing for this long is given up.
const DB_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole download: a 2 GiB database at 1 MB/s takes about 35 minutes.
const DB_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Writes a downloaded database to an unnamed temporary file, refusing it once it passes
/// `cap` bytes, so a database of any size costs disk up to the cap and no memory.
/// The download ends by `until` ([`DB_DOWNLOAD_TIMEOUT`] after it began), however slowly
/// its source keeps sending.
async fn spool<S, E>(
    mut stream: S,
    cap: u64,
    location: &str,
    until: tokio::time::Instant,
) -> Result<std::fs::File>
where
    S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    use tokio::io::AsyncWriteExt as _;
    let file = tempfile::tempfile().context("a temporary file for the vulnerability database")?;
    let mut out = tokio::fs::File::from_std(file);
    let mut n = 0u64;
    loop {
        let Ok(next) = tokio::time::timeout_at(until, stream.next()).await else {
            bail!(
                "{location}: the vulnerability database's download did not end within {}; given up",
                humantime::format_duration(DB_DOWNLOAD_TIMEOUT)
            );
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.with_context(|| format!("downloading {location}"))?;
        n += chunk.len() as u64;
        if n > cap {
            bail!(
                "{location}: the vulnerability database is over {}; refused",
                human(cap)
            );
        }
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    let mut file = out.into_std().await;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
    Ok(file)
}

fn human(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else {
        format!("{n} bytes")
    }
}

/// Refuses a database whose stated size is already over the cap, before fetching it.
fn check_size(location: &str, stated: Option<u64>, cap: u64) -> Result<()> {
    match stated {
        Some(n) if n > cap => bail!(
            "{location}: the vulnerability database is {n} bytes, over {}; refused",
            human(cap)
        ),
        _ => Ok(()),
    }
}

/// Parses a database file on a blocking thread (a zip is inflated entry by entry).
async fn parse_file(file: std::fs::File, location: &str, limits: DbLimits) -> Result<Database> {
    let label = location.to_owned();
    let db = tokio::task::spawn_blocking(move || {
        Database::from_reader(std::io::BufReader::new(file), &label, &limits)
    })
    .await
    .context("reading the vulnerability database")??;
    Ok(db)
}

/// Loads the database from wherever it is, within [`DbLimits`]: the file (or download) at
/// most `file` bytes, each record and the whole unpacked database within theirs.
async fn load_db(
    location: &str,
    tls_verify: Option<bool>,
    authfile: Option<&std::path::Path>,
) -> Result<Database> {
    // Shown and used as the database's label without a URL's credentials.
    let shown = hangar_shared::redact::redact_location(location);
    let limits = DbLimits::default();
    let until = tokio::time::Instant::now() + DB_DOWNLOAD_TIMEOUT;
    if let Some(rest) = location.strip_prefix("oci://") {
        let r = hangar_shared::reference::ImageRef::parse(rest)?;
        let pool = super::pool(tls_verify, authfile);
        let reg = pool.registry(&r.registry).await?;
        let m = reg
            .manifest_opt(&r.repository(), &r.manifest_reference(), Side::Source)
            .await?
            .with_context(|| format!("{shown}: no such artifact"))?;
        let hangar_shared::manifest::Manifest::Image(img) = m.parse()? else {
            bail!("{shown}: not a single-manifest artifact");
        };
        let layer = img
            .layers
            .first()
            .with_context(|| format!("{shown}: no layer"))?;
        check_size(&shown, Some(layer.size), limits.file)?;
        let stream = reg.blob_stream(&r.repository(), layer, None).await?;
        let file = spool(stream, limits.file, &shown, until).await?;
        return parse_file(file, &shown, limits).await;
    }
    if location.starts_with("http://") || location.starts_with("https://") {
        let client = reqwest::Client::builder()
            .connect_timeout(DB_CONNECT_TIMEOUT)
            .read_timeout(DB_READ_TIMEOUT)
            .timeout(DB_DOWNLOAD_TIMEOUT)
            .build()
            .context("an http client for the vulnerability database")?;
        let response = client
            .get(location)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("downloading {shown}"))?;
        check_size(&shown, response.content_length(), limits.file)?;
        let file = spool(response.bytes_stream(), limits.file, &shown, until).await?;
        return parse_file(file, &shown, limits).await;
    }
    if location.starts_with("s3://") {
        let (store, path) = hangar_shared::archive::locate(location)?;
        let got = object_store::ObjectStoreExt::get(store.as_ref(), &path)
            .await
            .with_context(|| format!("reading {shown}"))?;
        check_size(&shown, Some(got.meta.size), limits.file)?;
        let file = spool(got.into_stream(), limits.file, &shown, until).await?;
        return parse_file(file, &shown, limits).await;
    }
    let path = std::path::PathBuf::from(location);
    if path.is_dir() {
        let db = tokio::task::spawn_blocking(move || Database::from_dir_with(&path, &limits))
            .await
            .context("reading the vulnerability database")??;
        return Ok(db);
    }
    let file = std::fs::File::open(&path).with_context(|| format!("reading {shown}"))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {shown}"))?
        .len();
    check_size(&shown, Some(len), limits.file)?;
    parse_file(file, &shown, limits).await
}

/// Loads the database, reports its size and age, and refuses one with no usable record or
/// older than `max_age` (`None`: any age). Its age is its newest record's `modified`, as
/// osv.dev dates records (withdrawn ones too).
pub async fn open_db(
    location: &str,
    tls_verify: Option<bool>,
    authfile: Option<&std::path::Path>,
    max_age: Option<&str>,
    console: &Console,
) -> Result<Database> {
    let shown = hangar_shared::redact::redact_location(location);
    let db = load_db(location, tls_verify, authfile).await?;
    for w in &db.warnings {
        console.warn(None, w);
    }
    db.check_usable(&shown)?;
    let limit = match max_age {
        Some(a) => Some(
            humantime::parse_duration(a).with_context(|| format!("invalid --db-max-age {a:?}"))?,
        ),
        None => None,
    };
    let withdrawn = match db.withdrawn {
        0 => String::new(),
        n => format!(" (and {n} withdrawn)"),
    };
    match db.newest {
        Some(newest) => {
            let age = chrono::Utc::now().signed_duration_since(newest);
            console.info(
                None,
                format!(
                    "Vulnerability database {shown}: {} records{withdrawn}, newest {} ({} days old)",
                    db.records.len(),
                    newest.format("%Y-%m-%d"),
                    age.num_days()
                ),
            );
            if let Some(limit) = limit
                && age.to_std().unwrap_or_default() > limit
            {
                bail!(
                    "the vulnerability database {shown} is {} days old (newest record modified \
                     {}), older than --db-max-age {}; bring in a newer one or pass --skip-db-age-check",
                    age.num_days(),
                    newest.format("%Y-%m-%d"),
                    max_age.unwrap_or_default()
                );
            }
        }
        None if limit.is_some() => bail!(
            "the vulnerability database {shown} has no dated records; pass --skip-db-age-check to use it"
        ),
        None => console.info(
            None,
            format!(
                "Vulnerability database {shown}: {} records{withdrawn}, undated",
                db.records.len()
            ),
        ),
    }
    Ok(db)
}

/// Every database of `locations` ([`open_db`]: each must have usable records and, unless
/// `max_age` is `None`, be recent enough), merged into one: a record in several is kept
/// once, its newest version.
pub async fn open_dbs(
    locations: &[String],
    tls_verify: Option<bool>,
    authfile: Option<&std::path::Path>,
    max_age: Option<&str>,
    console: &Console,
) -> Result<Database> {
    let mut merged: Option<Database> = None;
    for location in locations {
        let db = open_db(location, tls_verify, authfile, max_age, console).await?;
        merged = Some(match merged {
            None => db,
            Some(mut m) => {
                m.merge(db);
                m
            }
        });
    }
    let db = merged.context("no vulnerability database")?;
    if locations.len() > 1 {
        console.info(
            None,
            format!(
                "Vulnerability databases merged: {} records from {} databases",
                db.records.len(),
                locations.len()
            ),
        );
    }
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        sizes: &[usize],
    ) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin {
        futures_util::stream::iter(
            sizes
                .iter()
                .map(|n| Ok(bytes::Bytes::from(vec![b'x'; *n])))
                .collect::<Vec<_>>(),
        )
    }

    fn later() -> tokio::time::Instant {
        tokio::time::Instant::now() + DB_DOWNLOAD_TIMEOUT
    }

    #[tokio::test]
    async fn a_download_is_spooled_up_to_its_cap() {
        let mut f = spool(chunks(&[4, 4]), 8, "http://db", later())
            .await
            .unwrap();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut f, &mut body).unwrap();
        assert_eq!(body, "xxxxxxxx");
        let err = spool(chunks(&[4, 4, 1]), 8, "http://db", later())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "http://db: the vulnerability database is over 8 bytes; refused"
        );
    }

    /// A source that sends a byte now and then keeps each read alive; the download as a
    /// whole still ends at its deadline (paused time: the hour passes at once).
    #[tokio::test(start_paused = true)]
    async fn a_download_that_never_ends_is_given_up_at_its_deadline() {
        let started = tokio::time::Instant::now();
        let trickle = Box::pin(futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")), ()))
        }));
        let err = spool(trickle, 1 << 30, "oci://r/db:1", later())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "oci://r/db:1: the vulnerability database's download did not end within 1h; given up"
        );
        assert_eq!(started.elapsed(), DB_DOWNLOAD_TIMEOUT);
    }

    #[test]
    fn a_stated_size_over_the_cap_is_refused_before_fetching() {
        assert!(check_size("s3://b/db.zip", Some(8), 8).is_ok());
        assert!(check_size("s3://b/db.zip", None, 8).is_ok());
        assert_eq!(
            check_size("s3://b/db.zip", Some(3 << 30), 2 << 30)
                .unwrap_err()
                .to_string(),
            "s3://b/db.zip: the vulnerability database is 3221225472 bytes, over 2 GiB; refused"
        );
    }
}
