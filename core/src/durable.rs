//! Replacing a small file so that a power cut leaves the old file or the
//! new one, whole: a temporary file beside it (created with its final
//! mode), written and fsynced, renamed over the old one, and the directory
//! fsynced so the rename itself survives. The agent's state, its
//! attestation key, the image builder's keys, channel metadata and the
//! payloads it publishes all go through here.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// A step of [`replace`] failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct Error {
    /// What was being done.
    pub what: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// Why it failed.
    pub source: std::io::Error,
}

fn at(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error { what, path, source }
}

/// Replaces `path` with `bytes` (permission bits `mode`), durably; creates
/// the directory if need be. A failure leaves the old file and no
/// temporary file behind.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    replace_with(path, mode, |f| f.write_all(bytes))
}

/// Replaces `to` with a copy of the file `from` (a payload published, an
/// image of hundreds of MiB: streamed, not read into memory), as
/// [`replace`] does.
pub fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), Error> {
    let mut src = std::fs::File::open(from).map_err(at("opening", from))?;
    replace_with(to, mode, |f| std::io::copy(&mut src, f).map(drop))
}

/// [`replace`] with the new file's content written by `write`.
fn replace_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(at("creating", dir))?;
    let name = path.file_name().ok_or_else(|| Error {
        what: "no file name in",
        path: path.to_owned(),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(at("creating", &tmp))?;
        write(&mut f).map_err(at("writing", &tmp))?;
        f.sync_all().map_err(at("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(at("renaming a new file to", path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at("syncing the directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn copies_a_file_over_another_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::write(&from, vec![7u8; 3 << 20]).unwrap();
        let to = dir.path().join("out/to");
        replace(&to, b"old", 0o600).unwrap();
        copy(&from, &to, 0o644).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), vec![7u8; 3 << 20]);
        let mode = std::fs::metadata(&to).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
        assert_eq!(names.len(), 1, "a temporary file was left");
        let err = copy(&dir.path().join("absent"), &to, 0o644).unwrap_err();
        assert!(err.to_string().starts_with("opening "), "{err}");
        assert_eq!(std::fs::read(&to).unwrap().len(), 3 << 20);
    }

    #[test]
    fn replaces_whole_with_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        replace(&p, b"one", 0o600).unwrap();
        replace(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_failure_names_the_path_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        replace(&p, b"old", 0o644).unwrap();
        // A directory where the new file's directory should be.
        let blocked = p.join("child");
        let e = replace(&blocked, b"new", 0o644).unwrap_err();
        assert!(e.to_string().contains("creating"), "{e}");
        assert!(e.to_string().contains(dir.path().to_str().unwrap()), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }
}
