//! The dashboard's access token: 32 random bytes in hex, made once and kept
//! owner-only in the home, so the URL `fsd ui` prints stays valid across
//! restarts and nobody else on the machine can read it.
//!
//! The URL carries it in its fragment (`#token=`), which browsers never
//! send to a server; the page's script keeps it in the tab's session
//! storage (kept apart per origin, port included) and sends it as an
//! `Authorization: Bearer` header. Comparisons take the same time wherever
//! the first difference is.

use crate::home::{write_private, Home};
use anyhow::Context;
use fileshare_protocol::ids::hex;

/// The token of `home`, made on first use.
pub fn load_or_create(home: &Home) -> anyhow::Result<String> {
    let path = home.ui_token_path();
    match std::fs::read_to_string(&path) {
        Ok(t) if is_well_formed(t.trim()) => return Ok(t.trim().to_string()),
        Ok(_) => tracing::warn!(path = %path.display(), "replacing a damaged dashboard token"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    let token = hex(&bytes);
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

fn is_well_formed(t: &str) -> bool {
    t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `given` is `expected`, in time independent of where they differ.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_kept_owner_only_and_compared_whole() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(&dir.path().join("h")), None).unwrap();
        let t = load_or_create(&home).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(
            load_or_create(&home).unwrap(),
            t,
            "the same token after a restart"
        );
        let mode = std::fs::metadata(home.ui_token_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches(&t, &t));
        assert!(!matches(&t, &t[..63]));
        let mut other = t.clone().into_bytes();
        other[63] = if other[63] == b'0' { b'1' } else { b'0' };
        assert!(!matches(&t, std::str::from_utf8(&other).unwrap()));
    }
}
