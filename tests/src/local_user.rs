//! Another local user, made with `useradd`, for what someone else on the
//! same machine can do: commands run under its uid with `setpriv`.

use std::process::{Command, Output};

/// The test user's name; created once per machine and kept.
pub const NAME: &str = "fileshare-stranger";

/// A local user other than the one running the tests.
pub struct LocalUser {
    pub uid: u32,
}

impl LocalUser {
    /// Creates the user if it does not exist yet; panics with the reason
    /// when it cannot be made (tests need root).
    pub fn ensure() -> LocalUser {
        if let Some(uid) = uid_of(NAME) {
            return LocalUser { uid };
        }
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                NAME,
            ])
            .output()
            .expect("run useradd (the passwd package)");
        assert!(
            out.status.success() || uid_of(NAME).is_some(),
            "useradd {NAME}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LocalUser {
            uid: uid_of(NAME).expect("the user useradd made"),
        }
    }

    /// Runs `program args` as this user (its uid and gid, no supplementary
    /// groups).
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.uid_gid()))
            .arg("--clear-groups")
            .arg("--")
            .arg(program)
            .args(args)
            .output()
            .expect("run setpriv")
    }

    fn uid_gid(&self) -> u32 {
        let out = Command::new("id")
            .args(["-g", NAME])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the test user's gid")
    }
}

fn uid_of(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
