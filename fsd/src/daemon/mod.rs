//! The daemon behind `fsd mount`.

use crate::cli::MountArgs;
use crate::session::Home;

/// Mounts the swarm and serves until unmounted.
pub fn run(home: &Home, args: &MountArgs) -> anyhow::Result<()> {
    let _ = (home, args);
    anyhow::bail!("not implemented yet")
}
