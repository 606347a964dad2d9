//! The agent whitelist: a plain text file an operator can read and edit, like ssh's
//! `authorized_keys`. One agent per line, `<cluster> <agent-name> sha256:<64 hex>`, separated by
//! spaces or tabs; `#` starts a comment; blank lines are ignored. A malformed line is an error
//! naming the file and line, and a fingerprint may appear only once (it maps to one cluster).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::files;
use super::fingerprint::Fingerprint;
use super::names;

/// One registered agent certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub cluster: String,
    pub name: String,
    pub fingerprint: Fingerprint,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.cluster, self.name, self.fingerprint)
    }
}

/// The largest whitelist file read: room for about 600,000 agents.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A parsed whitelist.
#[derive(Debug, Clone, Default)]
pub struct Whitelist {
    entries: Vec<Entry>,
    by_fingerprint: HashMap<Fingerprint, usize>,
}

/// Why a whitelist could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum WhitelistError {
    /// A line is not `<cluster> <agent-name> sha256:<hex>`.
    #[error("{}:{line}: {problem}", path.display())]
    Malformed { path: PathBuf, line: usize, problem: String },
    /// The same fingerprint is listed twice.
    #[error("{}:{line}: fingerprint {fingerprint} is already listed on line {first_line}", path.display())]
    Duplicate { path: PathBuf, line: usize, first_line: usize, fingerprint: Fingerprint },
    /// A registration conflicts with an existing entry.
    #[error("{}: fingerprint {} is already registered as {} {}; remove that line first", path.display(), existing.fingerprint, existing.cluster, existing.name)]
    Conflict { path: PathBuf, existing: Entry },
    /// The path is not a regular file (a device, a FIFO, a directory, or a symlink to one).
    #[error("{}: not a regular file; the whitelist must be one", path.display())]
    NotAFile { path: PathBuf },
    /// The file is larger than any whitelist.
    #[error("{}: {len} bytes, more than the {MAX_FILE_BYTES} a whitelist may have", path.display())]
    TooLarge { path: PathBuf, len: u64 },
    /// The file could not be read or written.
    #[error("{}: {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What [`register`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    Added,
    /// The same entry was already there; nothing changed.
    AlreadyPresent,
}

impl Whitelist {
    /// Parses whitelist text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Whitelist, WhitelistError> {
        let mut list = Whitelist::default();
        let mut lines_of = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let malformed = |problem: String| WhitelistError::Malformed { path: path.to_owned(), line, problem };
            let content = raw.split('#').next().unwrap_or("");
            let fields: Vec<&str> = content.split_whitespace().collect();
            match fields.as_slice() {
                [] => continue,
                [cluster, name, fingerprint] => {
                    names::validate("cluster", cluster).map_err(|e| malformed(e.to_string()))?;
                    names::validate("agent name", name).map_err(|e| malformed(e.to_string()))?;
                    let fingerprint: Fingerprint = fingerprint
                        .parse()
                        .map_err(|e: super::fingerprint::InvalidFingerprint| malformed(e.to_string()))?;
                    if let Some(first_line) = lines_of.insert(fingerprint, line) {
                        return Err(WhitelistError::Duplicate { path: path.to_owned(), line, first_line, fingerprint });
                    }
                    list.push(Entry { cluster: cluster.to_string(), name: name.to_string(), fingerprint });
                }
                other => {
                    return Err(malformed(format!(
                        "expected `<cluster> <agent-name> sha256:<64 hex>`, found {} field(s)",
                        other.len()
                    )));
                }
            }
        }
        Ok(list)
    }

    /// Reads and parses a whitelist file. Only a regular file of at most [`MAX_FILE_BYTES`] is
    /// read (a path pointing at `/dev/zero` must not exhaust memory), and opening never waits
    /// (a FIFO would block until someone writes).
    pub fn load(path: &Path) -> Result<Whitelist, WhitelistError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |action| move |source| WhitelistError::Io { path: path.to_owned(), action, source };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io("cannot read the whitelist (register agents with `tether certs agent --register`)"))?;
        let meta = file.metadata().map_err(io("cannot look at the whitelist"))?;
        if !meta.is_file() {
            return Err(WhitelistError::NotAFile { path: path.to_owned() });
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(WhitelistError::TooLarge { path: path.to_owned(), len: meta.len() });
        }
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(io("cannot read the whitelist"))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(WhitelistError::TooLarge { path: path.to_owned(), len: text.len() as u64 });
        }
        Whitelist::parse(&text, path)
    }

    fn push(&mut self, entry: Entry) {
        self.by_fingerprint.insert(entry.fingerprint, self.entries.len());
        self.entries.push(entry);
    }

    /// The entry of a fingerprint, if it is registered.
    pub fn lookup(&self, fingerprint: &Fingerprint) -> Option<&Entry> {
        self.by_fingerprint.get(fingerprint).map(|&i| &self.entries[i])
    }

    /// Whether any agent is registered for `cluster`.
    pub fn has_cluster(&self, cluster: &str) -> bool {
        self.entries.iter().any(|e| e.cluster == cluster)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

const HEADER: &str = "\
# tether agent whitelist: one agent certificate per line.
#   <cluster> <agent-name> sha256:<64 hex digits>
# The stub accepts an agent only if its certificate chains to the tether CA and its fingerprint
# is listed here, and only for the cluster listed. '#' starts a comment.
";

/// Adds `entry` to the whitelist file at `path` (creating it if needed), atomically: the file is
/// rewritten whole and renamed into place, so a reader never sees half a line.
pub fn register(path: &Path, entry: &Entry) -> Result<Registered, WhitelistError> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(WhitelistError::Io { path: path.to_owned(), action: "cannot read the whitelist", source });
        }
    };
    let text = existing.as_deref().unwrap_or(HEADER);
    let list = Whitelist::parse(text, path)?;
    if let Some(found) = list.lookup(&entry.fingerprint) {
        if found == entry {
            return Ok(Registered::AlreadyPresent);
        }
        return Err(WhitelistError::Conflict { path: path.to_owned(), existing: found.clone() });
    }
    let mut updated = text.to_owned();
    if !updated.is_empty() && !updated.ends_with('\n') {
        updated.push('\n');
    }
    updated.push_str(&format!("{entry}\n"));
    files::write_atomic(path, updated.as_bytes(), files::Mode::Public).map_err(|source| WhitelistError::Io {
        path: path.to_owned(),
        action: "cannot write the whitelist",
        source,
    })?;
    Ok(Registered::Added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::of_der(&[n])
    }

    #[test]
    fn parses_entries_comments_and_blank_lines() {
        let text = format!("# header\n\n dev\tagent-0  {}  # first\nprod agent-1 {}\n", fp(0), fp(1));
        let list = Whitelist::parse(&text, Path::new("wl")).unwrap();
        assert_eq!(list.entries().len(), 2);
        assert_eq!(list.lookup(&fp(0)).unwrap().name, "agent-0");
        assert_eq!(list.lookup(&fp(1)).unwrap().cluster, "prod");
        assert!(list.lookup(&fp(2)).is_none());
        assert!(list.has_cluster("dev") && !list.has_cluster("nope"));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let text = format!("# ok\ndev agent-0 {}\ndev agent-1\n", fp(0));
        let err = Whitelist::parse(&text, Path::new("certs/whitelist")).unwrap_err().to_string();
        assert!(err.starts_with("certs/whitelist:3: expected"), "{err}");

        let err = Whitelist::parse("dev agent-0 sha256:zz\n", Path::new("wl")).unwrap_err().to_string();
        assert!(err.starts_with("wl:1: ") && err.contains("not a fingerprint"), "{err}");

        let err = Whitelist::parse(&format!("Dev agent-0 {}\n", fp(0)), Path::new("wl")).unwrap_err().to_string();
        assert!(err.contains("wl:1: cluster \"Dev\""), "{err}");

        let text = format!("a x {}\nb y {}\n", fp(0), fp(0));
        let err = Whitelist::parse(&text, Path::new("wl")).unwrap_err().to_string();
        assert!(err.contains("wl:2: fingerprint") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn register_adds_once_and_refuses_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whitelist");
        let entry = Entry { cluster: "dev".into(), name: "agent-0".into(), fingerprint: fp(0) };
        assert_eq!(register(&path, &entry).unwrap(), Registered::Added);
        assert_eq!(register(&path, &entry).unwrap(), Registered::AlreadyPresent);
        let other = Entry { cluster: "prod".into(), ..entry.clone() };
        assert!(matches!(register(&path, &other), Err(WhitelistError::Conflict { .. })));
        let second = Entry { name: "agent-1".into(), fingerprint: fp(1), ..entry.clone() };
        assert_eq!(register(&path, &second).unwrap(), Registered::Added);
        let list = Whitelist::load(&path).unwrap();
        assert_eq!(list.entries(), &[entry, second]);
    }

    fn entry() -> impl Strategy<Value = Entry> {
        ("[a-z][a-z0-9-]{0,20}[a-z0-9]", "[a-z0-9]{1,10}", any::<[u8; 8]>()).prop_map(|(cluster, name, seed)| Entry {
            cluster,
            name,
            fingerprint: Fingerprint::of_der(&seed),
        })
    }

    proptest! {
        #[test]
        fn written_entries_parse_back(entries in proptest::collection::vec(entry(), 0..20)) {
            let mut unique = HashMap::new();
            let entries: Vec<Entry> = entries.into_iter().filter(|e| unique.insert(e.fingerprint, ()).is_none()).collect();
            let mut text = HEADER.to_owned();
            for e in &entries {
                text.push_str(&format!("{e}\n"));
            }
            let list = Whitelist::parse(&text, Path::new("wl")).unwrap();
            prop_assert_eq!(list.entries(), entries.as_slice());
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = Whitelist::parse(&text, Path::new("wl"));
        }
    }
}

/// The whitelist in force, shared by the TLS verifier and the stub's router. Replacing it (on
/// reload) takes effect for the next handshake.
#[derive(Debug, Clone, Default)]
pub struct WhitelistHandle(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Whitelist>>>);

impl WhitelistHandle {
    pub fn new(list: Whitelist) -> WhitelistHandle {
        WhitelistHandle(std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(list))))
    }

    /// The current list (a cheap snapshot).
    pub fn get(&self) -> std::sync::Arc<Whitelist> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a new list in force.
    pub fn replace(&self, list: Whitelist) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(list);
    }
}
