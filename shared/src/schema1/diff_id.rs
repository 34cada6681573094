//! A layer's digest uncompressed (its `diff_id`), which a schema 1 manifest does not say
//! and the converted config must: inflated and hashed on a blocking thread, bounded.

use std::io::Write;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::verify::ByteStream;

/// The most bytes one layer may inflate to while its digest is computed (a gzip bomb's
/// cost is hashing time; the image's `--timeout` bounds that too).
pub const MAX_INFLATED: u64 = 64 << 30;

/// A layer's digest uncompressed, read from `stream` (verified against `blob`, its own
/// digest), and whether it is gzip. A layer that is not gzip is a tar whose digest is its
/// own. Inflating and hashing run on a blocking thread.
pub async fn diff_id(stream: ByteStream, blob: &Digest, what: &str) -> Result<(Digest, bool)> {
    diff_id_within(stream, blob, what, MAX_INFLATED).await
}

async fn diff_id_within(
    mut stream: ByteStream,
    blob: &Digest,
    what: &str,
    cap: u64,
) -> Result<(Digest, bool)> {
    let mut first: Vec<Bytes> = Vec::new();
    let mut head = Vec::with_capacity(2);
    while head.len() < 2 {
        let Some(chunk) = stream.next().await else {
            break;
        };
        let chunk = chunk?;
        head.extend(chunk.iter().take(2 - head.len()));
        first.push(chunk);
    }
    if !head.starts_with(&[0x1f, 0x8b]) {
        // Read to its end all the same: the stream checks the bytes against `blob`.
        while let Some(chunk) = stream.next().await {
            chunk?;
        }
        return Ok((blob.clone(), false));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let label = what.to_owned();
    let inflating = tokio::task::spawn_blocking(move || {
        /// The hash, the bytes inflated so far, and the most allowed.
        struct Hashing(Sha256, u64, u64);
        impl Write for Hashing {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.1 += buf.len() as u64;
                if self.1 > self.2 {
                    let most = match self.2 >> 30 {
                        0 => format!("{} MiB", self.2 >> 20),
                        gib => format!("{gib} GiB"),
                    };
                    return Err(std::io::Error::other(format!(
                        "it inflates to more than {most}"
                    )));
                }
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let bad = |e: std::io::Error| Error::invalid(format!("{label}: not a gzip layer: {e}"));
        let mut decoder = flate2::write::MultiGzDecoder::new(Hashing(Sha256::new(), 0, cap));
        while let Some(chunk) = rx.blocking_recv() {
            decoder.write_all(&chunk).map_err(bad)?;
        }
        let hashing = decoder.finish().map_err(bad)?;
        Ok::<_, Error>(Digest::from_sha256(hashing.0.finalize().as_slice()))
    });
    let mut chunks = futures_util::stream::iter(first.into_iter().map(Ok)).chain(stream);
    while let Some(chunk) = chunks.next().await {
        // A closed channel: the inflater stopped, and says why below.
        if tx.send(chunk?).await.is_err() {
            break;
        }
    }
    drop(tx);
    let digest = inflating
        .await
        .map_err(|e| Error::internal(format!("{what}: inflating: {e}")))??;
    Ok((digest, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip bomb (64 MiB of zeros in about 64 KiB) stops at the cap, having inflated no
    /// more than it, with an error saying so.
    #[tokio::test]
    async fn a_layer_inflating_past_the_cap_is_refused() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 1 << 20, "{}", gz.len());
        let blob = Digest::of(&gz);
        let chunks: Vec<Result<Bytes>> = gz
            .chunks(8192)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let started = std::time::Instant::now();
        let e = diff_id_within(
            futures_util::stream::iter(chunks).boxed(),
            &blob,
            "bomb",
            4 << 20,
        )
        .await
        .unwrap_err();
        assert!(
            e.message.contains("bomb") && e.message.contains("more than 4 MiB"),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn diff_id_is_the_uncompressed_digest_and_a_plain_tar_its_own() {
        let plain = b"layer bytes".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        // One byte first: the gzip magic spans chunks.
        let mut chunks: Vec<Result<Bytes>> = vec![Ok(Bytes::copy_from_slice(&gz[..1]))];
        chunks.extend(gz[1..].chunks(100).map(|c| Ok(Bytes::copy_from_slice(c))));
        let blob = Digest::of(&gz);
        let got = diff_id(futures_util::stream::iter(chunks).boxed(), &blob, "l")
            .await
            .unwrap();
        assert_eq!(got, (Digest::of(&plain), true));
        let tar = Digest::of(&plain);
        let raw = futures_util::stream::iter(vec![Ok(Bytes::from(plain))]).boxed();
        assert_eq!(diff_id(raw, &tar, "l").await.unwrap(), (tar, false));
        let broken = [&gz[..20], b"not deflate at all".as_slice()].concat();
        let broken = futures_util::stream::iter(vec![Ok(Bytes::from(broken))]).boxed();
        let e = diff_id(broken, &blob, "l").await.unwrap_err();
        assert!(e.message.contains("not a gzip layer"), "{e}");
    }
}
