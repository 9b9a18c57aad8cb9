//! What glibc's allocator is told, for a daemon whose resident memory is a goal of its own
//! (BENCHMARKS.md, "Memory"). Elsewhere (musl, macOS) these do nothing.

/// One malloc arena for every thread. glibc gives a thread that allocates while another holds
/// the arena an arena of its own; each of sqlx's SQLite worker threads ended up with one, about
/// 0.9 MB resident each at 10,000 orgs. They allocate little and seldom at the same moment as
/// the runtime thread: one arena measured 2 MB less and no more CPU per check. Call it before
/// other threads start.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; M_ARENA_MAX takes any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives the pages of freed memory back to the system. Reading a config builds a document
/// several times its size (toml's parse tree: about 2 KB per `[[org]]`); freed, those pages
/// would stay resident under what is allocated after them.
pub fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the system; it takes the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
