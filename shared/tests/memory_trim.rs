//! A process of its own: the resident set is the whole process's.

use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Buffers freed in the middle of the heap (a smaller allocation after each keeps the
/// heap's top from shrinking) stay resident until trimmed; the trimming thread gives them
/// back (every quarter second; two seconds allowed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_buffers_in_the_middle_of_the_heap_go_back_to_the_system() {
    const BUF: usize = 400 << 10;
    // One freed buffer of this size raises glibc's mmap threshold above it, as a copy's
    // first buffers do, so the rest come from the heap.
    drop(std::hint::black_box(vec![1u8; BUF]));
    let mut buffers = Vec::new();
    let mut pins = Vec::new();
    for i in 0..100u8 {
        buffers.push(std::hint::black_box(vec![i | 1; BUF]));
        pins.push(std::hint::black_box(vec![i; 4096]));
    }
    let full = rss_kib();
    drop(buffers);
    let freed = rss_kib();
    assert!(
        full.saturating_sub(freed) < 10 << 10,
        "the premise: glibc keeps buffers freed in the middle resident ({full} → {freed} KiB)"
    );
    hangar_shared::memory::trim_now_and_then();
    let start = Instant::now();
    let mut now = freed;
    while start.elapsed() < Duration::from_secs(2) && freed.saturating_sub(now) < 30 << 10 {
        std::thread::sleep(Duration::from_millis(50));
        now = rss_kib();
    }
    assert!(
        freed.saturating_sub(now) >= 30 << 10,
        "40 MB freed, {} KiB given back in {:?}",
        freed.saturating_sub(now),
        start.elapsed()
    );
    drop(pins);
}
