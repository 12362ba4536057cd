//! Carrying out a plan: directories, then atomic file writes, then links.

use std::path::{Path, PathBuf};

use super::Action;
use crate::Error;

/// Applies `actions` under `root`: directories, then atomic file writes
/// (temporary file, owner, mode, fsync, rename), then links; the
/// directories written to are synced at the end.
pub fn apply(actions: &[Action], root: &Path) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let io = |path: &Path, e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut touched: Vec<PathBuf> = Vec::new();
    for a in actions {
        let p = root.join(a.path().trim_start_matches('/'));
        match a {
            Action::Mkdir { mode, uid, gid, .. } => {
                match std::fs::create_dir(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
                    Err(e) => return Err(io(&p, e)),
                }
                std::os::unix::fs::chown(&p, Some(*uid), Some(*gid)).map_err(|e| io(&p, e))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| io(&p, e))?;
            }
            Action::Write {
                mode,
                uid,
                gid,
                contents,
                ..
            } => {
                let dir = p.parent().expect("absolute path has a parent");
                let tmp = dir.join(format!(
                    ".{}.drover-tmp",
                    p.file_name().expect("file name").to_string_lossy()
                ));
                let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
                f.write_all(contents).map_err(|e| io(&tmp, e))?;
                std::os::unix::fs::fchown(&f, Some(*uid), Some(*gid)).map_err(|e| io(&tmp, e))?;
                f.set_permissions(std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| io(&tmp, e))?;
                f.sync_all().map_err(|e| io(&tmp, e))?;
                std::fs::rename(&tmp, &p).map_err(|e| io(&p, e))?;
                touched.push(dir.to_path_buf());
            }
            Action::Symlink { target, .. } => {
                let _ = std::fs::remove_file(&p);
                std::os::unix::fs::symlink(target, &p).map_err(|e| io(&p, e))?;
                touched.push(p.parent().expect("parent").to_path_buf());
            }
        }
    }
    touched.sort();
    touched.dedup();
    for d in touched {
        std::fs::File::open(&d)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&d, e))?;
    }
    Ok(())
}
