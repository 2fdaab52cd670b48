//! Where the dashboard's download action may write. Whoever holds the page's
//! token can ask for a download, and the daemon writes as its user (maybe
//! root), so a destination must lie inside that user's home directory and
//! its directory must exist already: the action never creates directories
//! and never writes elsewhere. Symbolic links are judged by where they
//! lead. `fsd download-file` on the command line has no such limit: there
//! the user names the path themselves.

use std::path::{Path, PathBuf};

/// Why a destination was refused.
#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error("{0} is not an absolute path")]
    NotAbsolute(PathBuf),
    #[error("{0} is not an existing directory")]
    NoDirectory(PathBuf),
    #[error("{dest} is outside your home directory {home}")]
    OutsideHome { dest: PathBuf, home: PathBuf },
    #[error("cannot resolve {path}: {source}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HOME is not set: the dashboard downloads into the home directory only")]
    NoHome,
}

/// The home directory of the user the daemon runs as.
pub fn user_home() -> Result<PathBuf, DestError> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or(DestError::NoHome)
}

/// `dest` resolved (symbolic links followed), if it is an existing
/// directory inside `home`, or a file name in one.
pub fn check(dest: &Path, home: &Path) -> Result<PathBuf, DestError> {
    if !dest.is_absolute() {
        return Err(DestError::NotAbsolute(dest.to_path_buf()));
    }
    let resolve = |p: &Path| {
        p.canonicalize().map_err(|source| DestError::Resolve {
            path: p.to_path_buf(),
            source,
        })
    };
    let home = resolve(home)?;
    let resolved = if dest.is_dir() {
        resolve(dest)?
    } else {
        let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Err(DestError::NoDirectory(dest.to_path_buf()));
        };
        if !dir.is_dir() {
            return Err(DestError::NoDirectory(dir.to_path_buf()));
        }
        let file = resolve(dir)?.join(name);
        // A link there is written through: judge where it leads.
        match std::fs::symlink_metadata(&file) {
            Ok(m) if m.file_type().is_symlink() => resolve(&file)?,
            _ => file,
        }
    };
    if !resolved.starts_with(&home) {
        return Err(DestError::OutsideHome {
            dest: dest.to_path_buf(),
            home,
        });
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_existing_directories_inside_the_home() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        let downloads = home.join("Downloads");
        std::fs::create_dir_all(&downloads).unwrap();
        let outside = root.path().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        let canon = |p: &Path| p.canonicalize().unwrap();

        assert_eq!(check(&downloads, &home).unwrap(), canon(&downloads));
        assert_eq!(
            check(&downloads.join("a.iso"), &home).unwrap(),
            canon(&downloads).join("a.iso")
        );
        assert!(matches!(
            check(&outside.join("a.iso"), &home),
            Err(DestError::OutsideHome { .. })
        ));
        assert!(matches!(
            check(Path::new("/etc/passwd"), &home),
            Err(DestError::OutsideHome { .. })
        ));
        assert!(matches!(
            check(&home.join("missing/a.iso"), &home),
            Err(DestError::NoDirectory(_))
        ));
        assert!(matches!(
            check(Path::new("Downloads/a.iso"), &home),
            Err(DestError::NotAbsolute(_))
        ));
        // `..` climbs out: judged after resolving.
        assert!(matches!(
            check(&downloads.join("../../elsewhere/a.iso"), &home),
            Err(DestError::OutsideHome { .. })
        ));
        // Links inside the home that lead out are refused, as files and
        // as directories.
        std::os::unix::fs::symlink(outside.join("x"), downloads.join("link")).unwrap();
        std::fs::write(outside.join("x"), b"").unwrap();
        assert!(matches!(
            check(&downloads.join("link"), &home),
            Err(DestError::OutsideHome { .. })
        ));
        std::os::unix::fs::symlink(&outside, home.join("out")).unwrap();
        assert!(matches!(
            check(&home.join("out/a.iso"), &home),
            Err(DestError::OutsideHome { .. })
        ));
    }
}
