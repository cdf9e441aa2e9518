//! The state directory: one sub-directory per VM, `<state>/<cvm_id>/`, holding `vm.json` (the
//! record a restarted manager re-adopts from), `spec.json` (the VmSpec, mode 0600: it carries
//! the client key), `console.log` (the VM process's output), `control.sock` (the VM
//! process's control socket) and, for UEFI-booted VMs, `OVMF_VARS.fd` (its variable store).
//! Removing the directory removes everything a VM left on disk. File errors read as the Go
//! manager's do (spec §4.8: the OS error text, `open /path: no space left on device`).

use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What is persisted about a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The cvm_id.
    pub id: String,
    /// The VM process.
    pub pid: i32,
    /// Its start time (`/proc/PID/stat` field 22), to reject a reused PID.
    pub start_time: u64,
    /// The forwarded host port.
    pub port: u16,
    /// When the TTL expires, in milliseconds since the Unix epoch.
    pub ttl_deadline_ms: Option<u64>,
}

/// Paths of one VM's files.
#[derive(Debug, Clone)]
pub struct VmDir(pub PathBuf);

impl VmDir {
    /// The VmSpec handed to the VM process.
    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }
    /// The record.
    pub fn record(&self) -> PathBuf {
        self.0.join("vm.json")
    }
    /// stdout/stderr of the VM process.
    pub fn console(&self) -> PathBuf {
        self.0.join("console.log")
    }
    /// The VM's copy of the UEFI variable store (UEFI-booted plain VMs).
    pub fn ovmf_vars(&self) -> PathBuf {
        self.0.join("OVMF_VARS.fd")
    }
    /// Boot timeline the VM writes at exit.
    pub fn timeline(&self) -> PathBuf {
        self.0.join("timeline.json")
    }
    /// The VM process's control socket (status, stop), when its path fits a socket address
    /// (`sun_path` holds 107 bytes); `None` for a state directory too deep for one.
    pub fn control(&self) -> Option<PathBuf> {
        let p = self.0.join("control.sock");
        (p.as_os_str().len() <= MAX_SOCKET_PATH).then_some(p)
    }
}

/// A file-system call on a VM's files that failed, shown as Go shows its `*PathError` (the
/// text the Go manager returned for these failures): `<op> <path>: <OS error text>`.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {}", path.display(), go_error_text(source))]
pub struct FsError {
    /// The call (`mkdir`, `open`, `write`, ...).
    pub op: &'static str,
    /// The file it was made on.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl FsError {
    /// Wraps `source` from `op` on `path`.
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An error's text as Go prints it: for an OS error the C library's message with a lower-case
/// first letter and without Rust's `(os error N)` suffix (`no space left on device`); other
/// errors unchanged.
pub fn go_error_text(e: &io::Error) -> String {
    let text = e.to_string();
    let Some(code) = e.raw_os_error() else {
        return text;
    };
    let bare = text
        .strip_suffix(&format!(" (os error {code})"))
        .unwrap_or(&text);
    let mut chars = bare.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => bare.to_string(),
    }
}

/// Longest path a unix socket can be bound at.
pub const MAX_SOCKET_PATH: usize = 107;

/// Creates the state directory (mode 0700).
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Creates the directory of a new VM.
pub fn create_vm_dir(state: &Path, id: &str) -> Result<VmDir, FsError> {
    let dir = state.join(id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| FsError::new("mkdir", &dir, e))?;
    Ok(VmDir(dir))
}

/// Writes `data` to `path` with mode 0600, atomically (temp file + rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), FsError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| FsError::new("open", &tmp, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| FsError::new("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FsError::new("rename", &tmp, e))
}

/// Removes a VM's directory; a missing one is fine.
pub fn remove_vm_dir(dir: &VmDir) -> io::Result<()> {
    match std::fs::remove_dir_all(&dir.0) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A VM directory found at start-up and what its record said.
pub struct Found {
    /// The directory.
    pub dir: VmDir,
    /// The parsed record, `None` when missing or unreadable.
    pub record: Option<VmRecord>,
}

/// Lists the VM directories under `state` (only names that are uuids, so nothing else is touched).
pub fn scan(state: &Path) -> io::Result<Vec<Found>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(state)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if uuid::Uuid::parse_str(name).is_err() || !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = VmDir(entry.path());
        let record = std::fs::read(dir.record())
            .ok()
            .and_then(|b| serde_json::from_slice::<VmRecord>(&b).ok())
            .filter(|r| r.id == name);
        found.push(Found { dir, record });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_errors_read_as_gos() {
        let full = FsError::new(
            "open",
            Path::new("/s/x/spec.tmp"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(
            full.to_string(),
            "open /s/x/spec.tmp: no space left on device"
        );
        let denied = FsError::new(
            "mkdir",
            Path::new("/s/x"),
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(denied.to_string(), "mkdir /s/x: permission denied");
        assert_eq!(
            go_error_text(&io::Error::other("not JSON")),
            "not JSON",
            "non-OS errors are kept"
        );
    }

    #[test]
    fn a_write_into_a_missing_directory_names_the_file() {
        let path = Path::new("/nonexistent-cvmm-dir/vm.json");
        let e = write_private(path, b"{}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "open /nonexistent-cvmm-dir/vm.tmp: no such file or directory"
        );
    }

    #[test]
    fn records_round_trip_and_scan_ignores_foreign_names() {
        let root = std::env::temp_dir().join(format!("cvmm-state-test-{}", std::process::id()));
        ensure_dir(&root).unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let dir = create_vm_dir(&root, &id).unwrap();
        let rec = VmRecord {
            id: id.clone(),
            pid: 1,
            start_time: 2,
            port: 6100,
            ttl_deadline_ms: None,
        };
        write_private(&dir.record(), &serde_json::to_vec(&rec).unwrap()).unwrap();
        let mode = std::fs::metadata(dir.record())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::create_dir(root.join("not-a-vm")).unwrap();
        let found = scan(&root).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].record.as_ref(), Some(&rec));
        remove_vm_dir(&dir).unwrap();
        remove_vm_dir(&dir).unwrap();
        assert!(scan(&root).unwrap().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
