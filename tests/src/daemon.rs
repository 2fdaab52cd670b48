//! Helpers for the tests of the daemon-served commands: `fsd` commands run
//! in the background, detached daemons (`fsd mount --daemon`) and small
//! filesystems that are read-only or full. Each guard cleans up on drop.

use crate::mount::is_mounted;
use crate::world::{User, World};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `fsd` as `user`, ready to run or spawn (stdin closed, output piped).
pub fn fsd_command(w: &World, user: &User, args: &[&str]) -> Command {
    let mut c = Command::new(&w.fsd);
    c.arg("--home")
        .arg(&user.home)
        .arg("--trackers")
        .arg(w.trackers_file())
        .args(args)
        .env("FILESHARE_PASSWORD", format!("pw-{}", user.name))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Standard output and error of a finished command, for messages.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether a process is still running (and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // The state follows the parenthesised command name.
            s.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// A daemon started with `fsd mount --daemon`; on drop it is stopped by
/// the PID in its pid file and its mount point unmounted.
pub struct Detached {
    pub home: PathBuf,
    pub mountpoint: PathBuf,
}

impl Detached {
    /// Runs `fsd mount MOUNTPOINT --daemon --listen 127.0.0.1:0` and returns
    /// its output and a guard (armed even if the command failed).
    pub fn start(w: &World, user: &User, mountpoint: &Path) -> (Output, Detached) {
        std::fs::create_dir_all(mountpoint).expect("create mount point");
        let mp = mountpoint.to_str().expect("utf-8 mount point");
        let out = fsd_command(
            w,
            user,
            &["mount", mp, "--daemon", "--listen", "127.0.0.1:0"],
        )
        .output()
        .expect("run fsd mount --daemon");
        (
            out,
            Detached {
                home: user.home.clone(),
                mountpoint: mountpoint.to_path_buf(),
            },
        )
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.home.join("fsd.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("fsd.log")).unwrap_or_default()
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            if alive(pid) {
                if let Ok(pid) = i32::try_from(pid) {
                    // SAFETY: signalling a process id we read from our own
                    // daemon's pid file.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    let start = Instant::now();
                    while alive(pid.unsigned_abs()) && start.elapsed() < Duration::from_secs(5) {
                        std::thread::sleep(Duration::from_millis(25));
                    }
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if is_mounted(&self.mountpoint) {
            crate::mount::fusermount(&self.mountpoint, true);
        }
    }
}

/// A small tmpfs (`mount -t tmpfs -o size=…`), unmounted on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `1m`) at `dir`, read-only if asked.
    pub fn mount(dir: &Path, size: &str, read_only: bool) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("create tmpfs mount point");
        let mut opts = format!("size={size},mode=0777");
        if read_only {
            opts.push_str(",ro");
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    /// Names in the filesystem's root, hidden ones included.
    pub fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
