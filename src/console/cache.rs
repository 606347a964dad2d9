//! Where the console's clients keep what they hold for the user (tokens of `tether credential`,
//! the sign-in of `tether login`): the user's cache directory, files readable by the user only
//! and written whole.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::identity::files::{self, Mode};

/// `$XDG_CACHE_HOME/tether`, or `~/.cache/tether`.
pub fn user_cache_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("no $HOME nor $XDG_CACHE_HOME for tether's cache")?)
            .join(".cache"),
    };
    Ok(base.join("tether"))
}

/// Writes `bytes` to `path` whole (mode 0600), its directory created (mode 0700) if missing.
pub fn save_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    files::save(path, bytes, Mode::Secret)?;
    Ok(())
}
