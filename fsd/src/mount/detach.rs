//! `fsd mount --daemon`: the process forks before any runtime or thread
//! exists; the parent waits on a pipe until the child reports that the
//! mount is up (exit 0) or why it failed (exit 1), so scripts and
//! `systemd` (Type=forking) can rely on the mount once the command returns.

use anyhow::{anyhow, bail, Context};
use parking_lot::Mutex;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Which side of the fork this is.
pub enum Side {
    /// The command that was run; it ends with the child's report.
    Parent(anyhow::Result<()>),
    /// The daemon, with the pipe to report on.
    Child(Ready),
}

/// The child's end of the pipe: one report, then closed.
pub struct Ready {
    pipe: Mutex<Option<File>>,
}

impl Ready {
    fn send(&self, line: &str) {
        if let Some(mut f) = self.pipe.lock().take() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// The mount is up: the parent exits 0.
    pub fn mounted(&self) {
        self.send("ok\n");
    }

    /// Starting failed: the parent prints `msg` and exits 1. Does nothing
    /// once `mounted` was sent.
    pub fn failed(&self, msg: &str) {
        self.send(&format!("err {}\n", msg.replace('\n', " ")));
    }
}

/// Forks; must run before any thread is started. The child becomes a
/// session leader with its output appended to `log`.
pub fn daemonize(log: &Path, mountpoint: &Path) -> anyhow::Result<Side> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Open the log before forking so a bad home fails in the foreground.
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    // SAFETY: the process is single-threaded here (no runtime exists yet),
    // so the child may go on running ordinary Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot fork");
    }
    if pid > 0 {
        drop(write_end);
        return Ok(Side::Parent(wait_for_child(
            File::from(read_end),
            pid,
            log,
            mountpoint,
        )));
    }
    drop(read_end);
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            if null > 2 {
                libc::close(null);
            }
        }
        libc::dup2(log_file.as_raw_fd(), 1);
        libc::dup2(log_file.as_raw_fd(), 2);
    }
    drop(log_file);
    // Do not keep the directory we were started in busy.
    let _ = std::env::set_current_dir("/");
    Ok(Side::Child(Ready {
        pipe: Mutex::new(Some(File::from(write_end))),
    }))
}

fn wait_for_child(
    pipe: File,
    pid: libc::pid_t,
    log: &Path,
    mountpoint: &Path,
) -> anyhow::Result<()> {
    let mut line = String::new();
    let n = BufReader::new(pipe)
        .read_line(&mut line)
        .context("cannot hear from the daemon")?;
    let line = line.trim_end();
    if n == 0 {
        bail!("the daemon exited before mounting; see {}", log.display());
    }
    if line == "ok" {
        println!(
            "mounted at {} (daemon pid {pid}, log {})",
            mountpoint.display(),
            log.display()
        );
        return Ok(());
    }
    Err(anyhow!("{}", line.strip_prefix("err ").unwrap_or(line)))
}
