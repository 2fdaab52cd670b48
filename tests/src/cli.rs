//! Runs `fsd` commands as one user: its own temporary `--home`, the
//! tracker's trackers file, and the password in `FILESHARE_PASSWORD`.

use crate::bin;
use crate::tracker::Tracker;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// What one `fsd` run did.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

pub struct Fsd {
    home: tempfile::TempDir,
    trackers: PathBuf,
    password: Option<String>,
}

impl Fsd {
    /// A user of `tracker` with the password `pw`.
    pub fn new(tracker: &Tracker) -> Fsd {
        Fsd::with_trackers(tracker.trackers_file())
    }

    /// A user of whatever trackers the file lists.
    pub fn with_trackers(trackers: &Path) -> Fsd {
        Fsd {
            home: tempfile::Builder::new()
                .prefix("fileshare-home-")
                .tempdir()
                .expect("temp home"),
            trackers: trackers.to_path_buf(),
            password: Some("pw".into()),
        }
    }

    /// The password later commands send (`None`: no `FILESHARE_PASSWORD`).
    pub fn password(mut self, pw: Option<&str>) -> Fsd {
        self.password = pw.map(str::to_string);
        self
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The saved session file of this home.
    pub fn session_file(&self) -> PathBuf {
        self.home().join("session")
    }

    /// Runs `fsd ARGS` and returns what happened, whatever it was.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with(self.password.as_deref(), args)
    }

    /// Runs `fsd ARGS` with `password` instead of this user's.
    pub fn run_with(&self, password: Option<&str>, args: &[&str]) -> Out {
        let mut cmd = Command::new(bin("fsd"));
        cmd.arg("--home")
            .arg(self.home())
            .arg("--trackers")
            .arg(&self.trackers)
            .args(args)
            .env_remove("FILESHARE_HOME")
            .env_remove("FILESHARE_TRACKERS")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        match password {
            Some(pw) => cmd.env("FILESHARE_PASSWORD", pw),
            None => cmd.env_remove("FILESHARE_PASSWORD"),
        };
        let out = cmd.output().expect("run fsd");
        Out {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `fsd ARGS`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.ok(),
            "fsd {args:?} failed with {}: {}",
            out.status,
            out.stderr
        );
        out.stdout
    }

    /// Runs `fsd ARGS`, which must fail with one line on stderr and
    /// nothing on stdout; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.ok(), "fsd {args:?} succeeded: {}", out.stdout);
        assert_one_line_error(args, &out);
        out.stderr
    }

    /// Creates the user `name` and logs in.
    pub fn user(&self, name: &str) {
        self.ok(&["create-user", name]);
        self.ok(&["login", name]);
    }
}

/// A failed command printed exactly one `fsd: ...` line and no panic.
pub fn assert_one_line_error(args: &[&str], out: &Out) {
    assert!(
        out.stderr.starts_with("fsd: ") && out.stderr.trim_end().lines().count() == 1,
        "fsd {args:?}: expected one `fsd: ` line on stderr, got {:?}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_eq!(out.status.code(), Some(1), "fsd {args:?}: {}", out.stderr);
}
