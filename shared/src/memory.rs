//! Process-wide memory settings.

/// Caps glibc's malloc at two arenas. By default it makes up to eight per core, one for
/// each thread that contends: the blocking pool's file writers and the runtime's workers
/// each keep freed chunks in their own, and a copy's peak memory grows by that
/// fragmentation (measured: a save at `-j 20` held 49 MB instead of 66). Other libcs
/// keep their own policy.
pub fn cap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; any thread may call it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
