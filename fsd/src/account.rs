//! Commands that talk only to the trackers: accounts, sessions, groups and
//! file listings.

use crate::cli::{Command, Global};
use crate::session::Home;

/// Runs one tracker-only command and prints its result.
pub async fn run(cmd: &Command, global: &Global, home: &Home) -> anyhow::Result<()> {
    let _ = (cmd, global, home);
    anyhow::bail!("not implemented yet")
}
