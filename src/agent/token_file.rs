//! The pod's service-account token, as the kubelet keeps it: a file it replaces (through a
//! symlink swap) well before the token expires. The agent checks the file's identity (inode,
//! size, modification time) on every request, a `stat` and nothing more, and reads it again as
//! soon as it changed, so a rotated token is in use from the next request on. If the file cannot
//! be read, the last token read stays in use, as client-go does (kubernetes/kubernetes#68164).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use http::HeaderValue;

use crate::identity::files::{self, FileError};

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    inode: u64,
    len: u64,
    modified_ns: i128,
}

fn version_of(path: &Path) -> Option<Version> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Version {
        inode: meta.ino(),
        len: meta.len(),
        modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

/// A token file, re-read when it changes.
pub struct TokenFile {
    path: PathBuf,
    current: Mutex<(Option<Version>, HeaderValue)>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("TokenFile").field("path", &self.path).finish_non_exhaustive()
    }
}

fn bearer(path: &Path, text: &str) -> Result<HeaderValue, FileError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", text.trim())).map_err(|_| FileError::Pem {
        path: path.to_owned(),
        problem: "the token holds characters an HTTP header cannot carry".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

impl TokenFile {
    /// Reads the file now, so that a missing or unusable token is an error at start.
    pub fn open(path: &Path) -> Result<TokenFile, FileError> {
        let version = version_of(path);
        let value = bearer(path, &files::load_text(path, "cannot read the service account token")?)?;
        Ok(TokenFile { path: path.to_owned(), current: Mutex::new((version, value)) })
    }

    /// The `Authorization` value to send now.
    pub fn authorization(&self) -> HeaderValue {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let version = version_of(&self.path);
        if version.is_some() && version != current.0 {
            match files::load_text(&self.path, "cannot read the service account token")
                .and_then(|text| bearer(&self.path, &text))
            {
                Ok(value) => {
                    tracing::info!(path = %self.path.display(), "service account token changed; using the new one");
                    *current = (version, value);
                }
                Err(e) => tracing::warn!(error = %e, "keeping the previous service account token"),
            }
        }
        current.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_read_again_and_a_vanished_one_keeps_the_last_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").unwrap();
        let token = TokenFile::open(&path).unwrap();
        assert_eq!(token.authorization(), "Bearer one");
        // The kubelet's way: a new file renamed over the old one.
        files::write_atomic(&path, b"two", files::Mode::Secret).unwrap();
        assert_eq!(token.authorization(), "Bearer two");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(token.authorization(), "Bearer two");
        assert!(token.authorization().is_sensitive());
        assert!(!format!("{token:?}").contains("two"));
    }

    #[test]
    fn a_missing_token_file_is_an_error_naming_it() {
        let err = TokenFile::open(Path::new("/nonexistent/token")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/token: cannot read the service account token"), "{err}");
    }
}
