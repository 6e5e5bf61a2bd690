//! A temporary directory removed on drop, and PEM material given as a path or as text.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::BrokerError;

/// Directories created by this process so far; part of every directory name.
static DIRS_CREATED: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under [`std::env::temp_dir`], removed with everything in it on drop.
///
/// The name is `<prefix>-<pid>-<sequence>-<nanoseconds>`, created with
/// [`fs::create_dir`] so two live directories never share a name.
pub struct TempDir {
    path: Option<PathBuf>,
    files_created: AtomicU64,
}

impl TempDir {
    /// Creates a new empty directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> io::Result<TempDir> {
        let base = std::env::temp_dir();
        let mut last_error = None;
        for _ in 0..64 {
            let sequence = DIRS_CREATED.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!("{prefix}-{}-{sequence}-{nanos:08x}", std::process::id());
            let path = base.join(name);
            match fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(TempDir {
                        path: Some(path),
                        files_created: AtomicU64::new(0),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free temporary directory name")))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// A path in the directory that no earlier call returned: `<stem>-<n>.<ext>`.
    /// The file is not created.
    pub fn unique_path(&self, stem: &str, ext: &str) -> PathBuf {
        let n = self.files_created.fetch_add(1, Ordering::Relaxed);
        self.path().join(format!("{stem}-{n}.{ext}"))
    }

    /// Keeps the directory on disk (for looking at it after a test) and returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl fmt::Debug for TempDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TempDir").field(&self.path()).finish()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Best effort: a failure to clean up a temporary directory must not fail a test.
            let _ = fs::remove_dir_all(path);
        }
    }
}

/// A PEM file for the broker or a client: an existing file, or PEM text that the harness
/// writes into its temporary directory (handy with certificates generated in memory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PemFile {
    /// An existing file, used as it is.
    Path(PathBuf),
    /// PEM text, written to a file (mode 0600) in the harness's temporary directory.
    Contents(String),
}

impl PemFile {
    /// An existing file.
    pub fn path(path: impl Into<PathBuf>) -> PemFile {
        PemFile::Path(path.into())
    }

    /// PEM text to be written to a file.
    pub fn contents(pem: impl Into<String>) -> PemFile {
        PemFile::Contents(pem.into())
    }

    /// The file to hand to mosquitto: the path itself, or a new file in `dir` named after
    /// `stem` holding the text.
    pub(crate) fn materialize(&self, dir: &TempDir, stem: &str) -> Result<PathBuf, BrokerError> {
        match self {
            PemFile::Path(path) => Ok(path.clone()),
            PemFile::Contents(pem) => {
                let path = dir.unique_path(stem, "pem");
                write_private(&path, pem.as_bytes())?;
                Ok(path)
            }
        }
    }
}

impl From<PathBuf> for PemFile {
    fn from(path: PathBuf) -> PemFile {
        PemFile::Path(path)
    }
}

impl From<&Path> for PemFile {
    fn from(path: &Path) -> PemFile {
        PemFile::Path(path.to_path_buf())
    }
}

/// Writes `bytes` to a new file readable only by its owner.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BrokerError> {
    fs::write(path, bytes)
        .map_err(|e| BrokerError::io(format!("writing {}", path.display()), e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| BrokerError::io(format!("setting the mode of {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_fresh_and_removed_on_drop() -> Result<(), Box<dyn std::error::Error>> {
        let a = TempDir::new("gateway-testkit-unit")?;
        let b = TempDir::new("gateway-testkit-unit")?;
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir());
        fs::write(a.path().join("f"), b"x")?;
        let p = a.unique_path("x", "pem");
        let q = a.unique_path("x", "pem");
        assert_ne!(p, q);
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
        let kept = b.keep();
        assert!(kept.is_dir());
        fs::remove_dir_all(kept)?;
        Ok(())
    }

    #[test]
    fn pem_contents_are_written_privately() -> Result<(), Box<dyn std::error::Error>> {
        let dir = TempDir::new("gateway-testkit-unit")?;
        let path = PemFile::contents("PEM").materialize(&dir, "ca")?;
        assert_eq!(fs::read_to_string(&path)?, "PEM");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        let given = PemFile::path("/x/y.pem").materialize(&dir, "ca")?;
        assert_eq!(given, PathBuf::from("/x/y.pem"));
        Ok(())
    }
}
