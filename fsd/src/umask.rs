//! The daemon's umask: owner-only for everything it creates in its home,
//! the user's own for the files it writes on the user's behalf.

/// The user's umask when the daemon started, for the files it writes on the
/// user's behalf outside its home (`download-file`).
static USER_UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Everything the daemon creates in its home (pieces, staging files, logs)
/// is owner-only, whatever the user's umask.
pub fn owner_only_files() {
    // SAFETY: umask cannot fail.
    let old = unsafe { libc::umask(0o077) };
    let _ = USER_UMASK.set(old);
}

/// The mode of a file the user asked for: `0o666` less the user's umask.
pub fn user_file_mode() -> u32 {
    0o666 & !USER_UMASK.get().copied().unwrap_or(0o022)
}
