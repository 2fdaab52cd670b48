//! The trackers file: one `host:port` per line, optionally followed by the
//! tracker's key fingerprint (`host:port sha256:HEX`); `#` starts a comment;
//! blank lines are ignored. Line numbers of trackers are 1-based.

use crate::identity::Fingerprint;
use std::path::Path;

/// One tracker: where it listens and, if the file pins it, its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerEntry {
    pub addr: String,
    pub fingerprint: Option<Fingerprint>,
}

/// Each message contains its cause's text, so no variant also exposes it as
/// a `source`: an error chain (`{e:#}`) names the cause once.
#[derive(Debug, thiserror::Error)]
pub enum TrackersFileError {
    #[error("cannot read trackers file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("trackers file {path}, line {line}: {text:?} is not host:port [sha256:HEX]")]
    BadLine {
        path: String,
        line: usize,
        text: String,
    },
    #[error(
        "trackers file {path}, line {line}: {text:?} is not a key fingerprint \
         (expected sha256: followed by 64 hex digits)"
    )]
    BadFingerprint {
        path: String,
        line: usize,
        text: String,
    },
    #[error("trackers file {0} lists no tracker")]
    Empty(String),
}

/// Parses the file's text; `path` is only for messages.
pub fn parse_entries(text: &str, path: &str) -> Result<Vec<TrackerEntry>, TrackersFileError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let bad_line = || TrackersFileError::BadLine {
            path: path.into(),
            line: i + 1,
            text: entry.into(),
        };
        let mut fields = entry.split_whitespace();
        let addr = fields.next().ok_or_else(bad_line)?;
        let fingerprint = fields.next();
        if fields.next().is_some() {
            return Err(bad_line());
        }
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(bad_line());
        }
        let fingerprint = fingerprint
            .map(|f| {
                f.parse::<Fingerprint>()
                    .map_err(|_| TrackersFileError::BadFingerprint {
                        path: path.into(),
                        line: i + 1,
                        text: f.into(),
                    })
            })
            .transpose()?;
        out.push(TrackerEntry {
            addr: addr.to_string(),
            fingerprint,
        });
    }
    if out.is_empty() {
        return Err(TrackersFileError::Empty(path.into()));
    }
    Ok(out)
}

/// Reads and parses the trackers file.
pub fn load_entries(path: &Path) -> Result<Vec<TrackerEntry>, TrackersFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| TrackersFileError::Read {
        path: shown.clone(),
        error,
    })?;
    parse_entries(&text, &shown)
}

/// The addresses alone, for callers that do not pin keys.
pub fn parse(text: &str, path: &str) -> Result<Vec<String>, TrackersFileError> {
    Ok(addrs(parse_entries(text, path)?))
}

/// The addresses alone, for callers that do not pin keys.
pub fn load(path: &Path) -> Result<Vec<String>, TrackersFileError> {
    Ok(addrs(load_entries(path)?))
}

fn addrs(entries: Vec<TrackerEntry>) -> Vec<String> {
    entries.into_iter().map(|e| e.addr).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blanks_are_skipped() {
        let t = "# cluster\n127.0.0.1:7001\n\n  127.0.0.1:7002  # second\n";
        assert_eq!(
            parse(t, "f").unwrap(),
            vec!["127.0.0.1:7001", "127.0.0.1:7002"]
        );
    }

    #[test]
    fn a_missing_file_names_the_os_error_once() {
        let err = load(Path::new("/nonexistent/trackers.txt")).unwrap_err();
        // What `{e:#}` prints: each error of the chain, joined by ": ".
        let mut chain = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            chain = format!("{chain}: {c}");
            cause = c.source();
        }
        assert_eq!(chain.matches("os error 2").count(), 1, "{chain}");
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse("127.0.0.1:7001\nnonsense\n", "f").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse("# nothing\n", "f").is_err());
    }

    #[test]
    fn fingerprints_follow_the_address() {
        let fp = "sha256:".to_string() + &"ab".repeat(32);
        let t = format!("127.0.0.1:7001 {fp}  # pinned\n127.0.0.1:7002\n");
        let entries = parse_entries(&t, "f").unwrap();
        assert_eq!(entries[0].addr, "127.0.0.1:7001");
        assert_eq!(entries[0].fingerprint, Some(fp.parse().unwrap()));
        assert_eq!(
            entries[1],
            TrackerEntry {
                addr: "127.0.0.1:7002".into(),
                fingerprint: None
            }
        );
        assert_eq!(
            parse(&t, "f").unwrap(),
            vec!["127.0.0.1:7001", "127.0.0.1:7002"]
        );
    }

    #[test]
    fn bad_fingerprints_are_named_with_their_line() {
        for bad in ["sha256:abc", "ab".repeat(32).as_str(), "md5:00"] {
            let t = format!("# c\n127.0.0.1:7001\n127.0.0.1:7002 {bad}\n");
            let err = parse_entries(&t, "trackers.txt").unwrap_err();
            assert!(
                matches!(err, TrackersFileError::BadFingerprint { line: 3, .. }),
                "{err}"
            );
            let text = err.to_string();
            assert!(text.contains("line 3") && text.contains(bad), "{text}");
            assert!(text.contains("trackers.txt"), "{text}");
        }
        let extra = format!("127.0.0.1:7001 sha256:{} junk\n", "ab".repeat(32));
        let err = parse_entries(&extra, "f").unwrap_err();
        assert!(
            matches!(err, TrackersFileError::BadLine { line: 1, .. }),
            "{err}"
        );
    }
}
