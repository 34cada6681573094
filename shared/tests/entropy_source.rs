//! aws-lc seeds its random generator on first use (a run's first TLS handshake). Built with
//! its CPU-jitter collector, that first use costs ~50 ms of CPU, and every run's first probe
//! waited for it; `.cargo/config.toml` builds aws-lc without the collector (the OS's
//! `getrandom` alone, as ring and BoringSSL use). This checks that the build took the
//! setting, in the very binary the test runs (a debug build of the same crates; the
//! release binaries take the same environment from the same file).

use rustls::crypto::aws_lc_rs::default_provider;

#[test]
fn random_generator_is_seeded_from_the_os_without_the_jitter_collector() {
    let mut bytes = [0u8; 32];
    default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("aws-lc gives random bytes");
    assert!(bytes.iter().any(|b| *b != 0), "random bytes are all zero");
    let exe = std::env::current_exe().expect("the test binary's path");
    let binary = std::fs::read(&exe).expect("the test binary is readable");
    // Names joined at run time: a literal of a whole name would be in this binary itself.
    // First that aws-lc is linked into it with its symbols (not stripped, not a system
    // library), which the absence below would otherwise prove nothing about: a function of
    // its entropy sources compiled with or without the collector.
    let own = ["opt", "out", "cpu", "jitter", "get", "seed", "wrap"].join("_");
    assert!(
        memchr::memmem::find(&binary, own.as_bytes()).is_some(),
        "{} does not hold aws-lc's own symbols: the check below would prove nothing",
        exe.display()
    );
    let collector = ["jent", "entropy", "collector", "alloc"].join("_");
    assert!(
        memchr::memmem::find(&binary, collector.as_bytes()).is_none(),
        "{} links aws-lc's CPU-jitter entropy collector: AWS_LC_SYS_NO_JITTER_ENTROPY \
         from .cargo/config.toml was not applied to the build",
        exe.display()
    );
}
