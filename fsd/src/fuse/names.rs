//! Names in the mount: which are valid (and the errno of those that are
//! not), and which look temporary.
//!
//! A file written under a temporary-looking name is not shared when it is
//! closed: tools that save through a temporary file (rsync, editors) rename
//! it a moment later, and the other members should see only the final name.
//! It is shared when it is renamed to a name that does not look temporary,
//! or, if it stays closed under its name for [`TEMPORARY_GRACE`], under
//! that name (so a file really called `notes.tmp` is shared too, late).

use fileshare_protocol::ids::{check_name, MAX_NAME_LEN};
use fuser::Errno;
use std::ffi::OsStr;
use std::time::Duration;

/// How long a closed file under a temporary-looking name waits to be
/// renamed before it is shared under that name.
pub const TEMPORARY_GRACE: Duration = Duration::from_secs(30);

/// A name the mount can hold, or why not: `ENAMETOOLONG` past 255 bytes,
/// `EINVAL` for what no name may contain (`/`, NUL, control characters) or
/// is not UTF-8.
pub fn valid_name(name: &OsStr) -> Result<&str, Errno> {
    if name.len() > MAX_NAME_LEN {
        return Err(Errno::ENAMETOOLONG);
    }
    let s = name.to_str().ok_or(Errno::EINVAL)?;
    check_name(s).map_err(|_| Errno::EINVAL)?;
    Ok(s)
}

/// Whether `name` looks like a temporary file of a tool that saves by
/// writing a temporary file and renaming it:
/// - `.NAME.XXXXXX`: a dot, a name, a dot and 6 letters or digits (rsync's
///   temporary files, and `mkstemp` templates like them);
/// - ending in `~` (backups), or in `.swp`, `.swx`, `.tmp` or `.part`
///   (editors' swap files, temporary and partial files; any case);
/// - starting with `.goutputstream-` (GNOME's safe save) or `.#`, or both
///   starting and ending with `#` (Emacs).
pub fn is_temporary(name: &str) -> bool {
    if let Some(rest) = name.strip_prefix('.') {
        if let Some((stem, suffix)) = rest.rsplit_once('.') {
            if !stem.is_empty()
                && suffix.len() == 6
                && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return true;
            }
        }
    }
    if name.ends_with('~') {
        return true;
    }
    if let Some((_, ext)) = name.rsplit_once('.') {
        if ["swp", "swx", "tmp", "part"]
            .iter()
            .any(|e| ext.eq_ignore_ascii_case(e))
        {
            return true;
        }
    }
    name.starts_with(".goutputstream-")
        || name.starts_with(".#")
        || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names() {
        for t in [
            ".file.bin.a1B2c3",
            ".report.pdf.XXXXXX",
            ".a.zzzzzz",
            "notes.txt~",
            ".notes.txt.swp",
            "draft.TMP",
            "video.mkv.part",
            ".goutputstream-ABC123",
            ".#notes.txt",
            "#notes.txt#",
        ] {
            assert!(is_temporary(t), "{t}");
        }
        for f in [
            "file.bin",
            ".bashrc",
            ".config.json",
            "archive.tar.gz",
            ".x.backup1.txt",
            "a.abcdef",
            "..abcdef",
            "#",
            "tmp",
            "partial",
        ] {
            assert!(!is_temporary(f), "{f}");
        }
    }

    #[test]
    fn long_names_are_too_long_and_bad_ones_invalid() {
        let ok = "x".repeat(255);
        assert_eq!(valid_name(OsStr::new(&ok)), Ok(ok.as_str()));
        let long = "x".repeat(256);
        assert_eq!(valid_name(OsStr::new(&long)), Err(Errno::ENAMETOOLONG));
        assert_eq!(valid_name(OsStr::new("a\nb")), Err(Errno::EINVAL));
        assert_eq!(valid_name(OsStr::new("..")), Err(Errno::EINVAL));
    }
}
