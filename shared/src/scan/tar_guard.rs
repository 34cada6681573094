//! A reader between a layer and the tar parser that follows the archive's structure as the
//! bytes pass and refuses an extension header (PAX `x`/`g`, GNU long name/link `L`/`K`)
//! larger than [`MAX_EXTENSION`]. The tar crate reads such a header's data whole into memory
//! — it is the names and attributes of the next entry — so a layer claiming a 1 GB long name
//! would cost 1 GB before any cap on the files the scanner keeps could apply. Entry data
//! passes through without being looked at; only headers are parsed.

use std::io::{self, Read};

/// The largest extension header accepted: real ones hold a path or a few attributes.
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: usize = 512;

enum State {
    /// Reading a 512-byte header.
    Header {
        buf: Box<[u8; BLOCK]>,
        filled: usize,
    },
    /// GNU sparse extension blocks, then `data` bytes of entry data.
    SparseExt {
        buf: Box<[u8; BLOCK]>,
        filled: usize,
        data: u64,
    },
    /// Entry data (padding included) still to pass; a PAX header's own data is kept, to
    /// learn the size it gives the next entry.
    Data { left: u64, pax: Option<Vec<u8>> },
}

pub struct TarGuard<R> {
    inner: R,
    state: State,
    /// A size a PAX header gave the next entry.
    next_size: Option<u64>,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            state: State::Header {
                buf: Box::new([0; BLOCK]),
                filled: 0,
            },
            next_size: None,
        }
    }

    /// Follows `bytes` through the archive's structure.
    fn follow(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Header { buf, filled } => {
                    let n = (BLOCK - *filled).min(bytes.len());
                    buf[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                    *filled += n;
                    bytes = &bytes[n..];
                    if *filled == BLOCK {
                        let header = std::mem::replace(buf, Box::new([0; BLOCK]));
                        *filled = 0;
                        self.header(&header)?;
                    }
                }
                State::SparseExt { buf, filled, data } => {
                    let n = (BLOCK - *filled).min(bytes.len());
                    buf[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                    *filled += n;
                    bytes = &bytes[n..];
                    if *filled == BLOCK {
                        *filled = 0;
                        // Byte 504 of an extension block: another follows.
                        if buf[504] == 0 {
                            let left = padded(*data);
                            self.state = State::Data { left, pax: None };
                        }
                    }
                }
                State::Data { left, pax } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    if let Some(p) = pax {
                        p.extend_from_slice(&bytes[..n]);
                    }
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        if let State::Data { pax: Some(p), .. } = &self.state {
                            self.next_size = pax_size(p);
                        }
                        self.state = State::Header {
                            buf: Box::new([0; BLOCK]),
                            filled: 0,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    fn header(&mut self, h: &[u8; BLOCK]) -> io::Result<()> {
        if h.iter().all(|b| *b == 0) {
            // End-of-archive blocks (or padding): stay on headers.
            return Ok(());
        }
        let flag = h[156];
        let extension = matches!(flag, b'x' | b'g' | b'L' | b'K');
        // As the tar crate does: a PAX size holds for every header up to the entry it
        // describes, extension headers included, and overrides the header's own field —
        // whatever the entry's type.
        let size = match self.next_size {
            Some(size) if !extension => {
                self.next_size = None;
                size
            }
            Some(size) => size,
            None => number(&h[124..136]),
        };
        if extension && size > MAX_EXTENSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a tar extension header ({}) of {size} bytes, over the {} KiB accepted",
                    flag as char,
                    MAX_EXTENSION >> 10
                ),
            ));
        }
        if flag == b'S' && h[482] != 0 {
            self.state = State::SparseExt {
                buf: Box::new([0; BLOCK]),
                filled: 0,
                data: size,
            };
        } else if size > 0 {
            self.state = State::Data {
                left: padded(size),
                pax: (flag == b'x').then(Vec::new),
            };
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.follow(&out[..n])?;
        Ok(n)
    }
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

/// A header's numeric field: octal text, or GNU's base-256 when the high bit is set.
fn number(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return field[1..].iter().fold(0u64, |n, b| {
            n.saturating_mul(256).saturating_add(u64::from(*b))
        });
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    u64::from_str_radix(text.trim(), 8).unwrap_or(0)
}

/// The `size` record of PAX extended attributes (`"<len> size=<n>\n"` records).
fn pax_size(data: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(data)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, kv)| kv))
        .find_map(|kv| kv.strip_prefix("size="))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, flag: u8, size: u64) -> [u8; BLOCK] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).expect("path");
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(flag));
        h.set_cksum();
        *h.as_bytes()
    }

    #[test]
    fn ordinary_archives_pass_whole_and_parse() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in [
            ("etc/os-release", &b"ID=debian\n"[..]),
            ("a/b", &[7u8; 1500][..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, name, body).expect("append");
        }
        // A long name goes through a GNU long-name entry.
        let long = format!("{}/file", "d".repeat(300));
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_cksum();
        b.append_data(&mut h, &long, &b"abc"[..]).expect("append");
        let bytes = b.into_inner().expect("tar");
        let mut archive = tar::Archive::new(TarGuard::new(&bytes[..]));
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["etc/os-release".to_owned(), "a/b".into(), long]);
    }

    #[test]
    fn a_huge_extension_header_is_refused_before_its_data() {
        for flag in [b'x', b'L', b'g', b'K'] {
            let mut bytes = header("././@LongLink", flag, 1 << 30).to_vec();
            bytes.extend_from_slice(&[b'a'; 4096]);
            let mut archive = tar::Archive::new(TarGuard::new(&bytes[..]));
            let err = archive
                .entries()
                .expect("entries")
                .next()
                .expect("an entry")
                .err()
                .expect("refused");
            assert!(err.to_string().contains("tar extension header"), "{err}");
        }
        assert_eq!(
            pax_size(b"20 size=12345678901\n11 a=b\n"),
            Some(12345678901)
        );
        assert_eq!(number(b"0000644\0"), 0o644);
    }

    fn peak_rss() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    }

    /// A gzip layer of 300 KB whose PAX header claims (and holds) 300 MiB: a warning naming
    /// the layer, and no 300 MiB read into memory.
    #[test]
    fn a_layer_with_a_huge_pax_header_is_refused_in_constant_memory() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&header("pax", b'x', 300 << 20))
            .expect("header");
        let zeros = vec![b'a'; 1 << 20];
        for _ in 0..300 {
            gz.write_all(&zeros).expect("data");
        }
        gz.write_all(&[0u8; 1024]).expect("end");
        let layer = gz.finish().expect("gzip");
        let before = peak_rss();
        let mut files = crate::scan::layers::Files::new(
            crate::scan::Limits::default(),
            crate::scan::Cancel::default(),
        );
        files.apply("sha256:evil", &layer[..]);
        let grew = peak_rss().saturating_sub(before);
        assert!(grew < 100 << 20, "peak RSS grew {} MiB", grew >> 20);
        let warnings: Vec<&String> = files.warnings.iter().collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("sha256:evil") && w.contains("tar extension header")),
            "{warnings:?}"
        );
    }
}
