//! The trackers file: one `host:port` per line; `#` starts a comment; blank
//! lines are ignored. Line numbers of trackers are 1-based.

use std::path::Path;

/// Each message contains its cause's text, so no variant also exposes it as
/// a `source`: an error chain (`{e:#}`) names the cause once.
#[derive(Debug, thiserror::Error)]
pub enum TrackersFileError {
    #[error("cannot read trackers file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("trackers file {path}, line {line}: {text:?} is not host:port")]
    BadLine {
        path: String,
        line: usize,
        text: String,
    },
    #[error("trackers file {0} lists no tracker")]
    Empty(String),
}

/// Parses the file's text; `path` is only for messages.
pub fn parse(text: &str, path: &str) -> Result<Vec<String>, TrackersFileError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let ok = entry
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(TrackersFileError::BadLine {
                path: path.into(),
                line: i + 1,
                text: entry.into(),
            });
        }
        out.push(entry.to_string());
    }
    if out.is_empty() {
        return Err(TrackersFileError::Empty(path.into()));
    }
    Ok(out)
}

pub fn load(path: &Path) -> Result<Vec<String>, TrackersFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| TrackersFileError::Read {
        path: shown.clone(),
        error,
    })?;
    parse(&text, &shown)
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
}
