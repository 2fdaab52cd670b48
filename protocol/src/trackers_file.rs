//! The trackers file: one `host:port` per line; `#` starts a comment; blank
//! lines are ignored. Line numbers of trackers are 1-based.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TrackersFileError {
    #[error("cannot read trackers file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
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
    let text = std::fs::read_to_string(path).map_err(|source| TrackersFileError::Read {
        path: shown.clone(),
        source,
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
    fn bad_lines_are_named() {
        let err = parse("127.0.0.1:7001\nnonsense\n", "f").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse("# nothing\n", "f").is_err());
    }
}
