//! The certificate directory (`--certs DIR`, `certs/` by default) and safe file handling:
//! every write goes to a temporary file that is renamed into place, keys are created 0600,
//! and nothing existing is replaced unless the caller asked for it.

use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where a certificate directory keeps each file.
#[derive(Debug, Clone)]
pub struct CertDir {
    root: PathBuf,
}

impl CertDir {
    pub fn new(root: impl Into<PathBuf>) -> CertDir {
        CertDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    pub fn stub_cert(&self) -> PathBuf {
        self.root.join("stub.crt")
    }
    pub fn stub_key(&self) -> PathBuf {
        self.root.join("stub.key")
    }
    /// `agents/<cluster>/<name>.crt`: cluster and name are validated DNS labels, so this
    /// path cannot leave the directory.
    pub fn agent_cert(&self, cluster: &str, name: &str) -> PathBuf {
        self.root.join("agents").join(cluster).join(format!("{name}.crt"))
    }
    pub fn agent_key(&self, cluster: &str, name: &str) -> PathBuf {
        self.root.join("agents").join(cluster).join(format!("{name}.key"))
    }
    /// A service's client certificate (`tether certs service`), for the console.
    pub fn service_cert(&self, name: &str) -> PathBuf {
        self.root.join("services").join(format!("{name}.crt"))
    }
    pub fn service_key(&self, name: &str) -> PathBuf {
        self.root.join("services").join(format!("{name}.key"))
    }
    pub fn whitelist(&self) -> PathBuf {
        self.root.join("whitelist")
    }
    /// Private Ed25519 key that signs user tokens; only `tether token` and `tether kubeconfig`
    /// read it.
    pub fn issuer_key(&self) -> PathBuf {
        self.root.join("issuer.key")
    }
    /// Public half of the issuer key; stub and agent verify tokens with it.
    pub fn issuer_pub(&self) -> PathBuf {
        self.root.join("issuer.pub")
    }
}

/// Permissions of a written file.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Readable by the owner only (private keys).
    Secret,
    /// Readable by everyone (certificates, whitelist).
    Public,
}

/// Why a file could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Refused to replace an existing file.
    #[error("{} already exists; pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// Reading or writing failed.
    #[error("{}: {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable PEM of the expected kind.
    #[error("{}: {problem}", path.display())]
    Pem { path: PathBuf, problem: String },
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename), creating parent
/// directories.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(match mode {
                Mode::Secret => 0o600,
                Mode::Public => 0o644,
            })
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fails with [`FileError::Exists`] if any of `paths` exists and `force` is not set.
pub fn refuse_overwrite(paths: &[&Path], force: bool) -> Result<(), FileError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(FileError::Exists(p.to_path_buf())),
        None => Ok(()),
    }
}

/// Saves a file atomically, naming it in the error.
pub fn save(path: &Path, bytes: &[u8], mode: Mode) -> Result<(), FileError> {
    write_atomic(path, bytes, mode).map_err(|source| FileError::Io {
        path: path.to_owned(),
        action: "cannot write",
        source,
    })
}

/// Reads a whole file, naming it and `what` was being read in the error.
pub fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Io { path: path.to_owned(), action: what, source })
}

/// Loads every certificate of a PEM file (leaf first), refusing an empty file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    parse_certs(path, &read(path, "cannot read certificate")?)
}

/// Every certificate of `pem` (leaf first), read from `path` (named in errors).
pub fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::Pem { path: path.to_owned(), problem: format!("invalid certificate PEM: {e}") })?;
    if certs.is_empty() {
        return Err(FileError::Pem { path: path.to_owned(), problem: "no CERTIFICATE block found".into() });
    }
    Ok(certs)
}

/// Loads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    parse_key(path, &read(path, "cannot read private key")?)
}

/// The first private key of `pem`, read from `path` (named in errors).
pub fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, FileError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| FileError::Pem { path: path.to_owned(), problem: format!("no usable private key: {e}") })
}

/// Loads a text file (PEM) whole.
pub fn load_text(path: &Path, what: &'static str) -> Result<String, FileError> {
    let bytes = read(path, what)?;
    String::from_utf8(bytes).map_err(|_| FileError::Pem { path: path.to_owned(), problem: "not UTF-8 text".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_set_modes_and_leave_no_temporary_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sub/k.key");
        write_atomic(&key, b"secret", Mode::Secret).unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        write_atomic(&key, b"again", Mode::Secret).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"again");
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("k.key")]);
        assert!(matches!(refuse_overwrite(&[&key], false), Err(FileError::Exists(_))));
        assert!(refuse_overwrite(&[&key], true).is_ok());
    }

    #[test]
    fn loading_garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.crt");
        std::fs::write(&path, "not pem").unwrap();
        let err = load_certs(&path).unwrap_err().to_string();
        assert!(err.contains("bad.crt") && err.contains("no CERTIFICATE"), "{err}");
        let err = load_key(&dir.path().join("missing.key")).unwrap_err().to_string();
        assert!(err.contains("missing.key: cannot read private key"), "{err}");
    }
}
