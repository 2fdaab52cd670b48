//! Commands that talk only to the trackers: accounts, sessions, groups and
//! file listings.
//!
//! Output is for people and scripts alike: one item per line, fields
//! separated by two spaces, nothing else on stdout. Errors become the one
//! line `main` prints.

use crate::cli::{Command, Global};
use crate::home::{Home, Session};
use anyhow::{bail, Context};
use fileshare_protocol::client::{ClientError, TrackerClient};
use fileshare_protocol::messages::tracker::{
    AcceptRequest, CreateGroup, CreateUser, FileEntry, GroupInfo, JoinGroup, LeaveGroup, ListFiles,
    ListGroups, ListRequests, Login, Logout, RejectRequest, RemoveMember, Search,
};
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::ErrorCode;
use std::io::{BufRead, Write};

/// Runs one tracker-only command and prints its result.
pub async fn run(cmd: &Command, global: &Global, home: &Home) -> anyhow::Result<()> {
    run_with_password(cmd, global, home, None).await
}

/// [`run`], with the password of `create-user` or `login` given by the
/// caller (the shell's `login alice secret`) instead of asked for.
pub async fn run_with_password(
    cmd: &Command,
    global: &Global,
    home: &Home,
    given: Option<&str>,
) -> anyhow::Result<()> {
    let lines = match cmd {
        Command::CreateUser { user } => create_user(global, home, user, given).await?,
        Command::Login { user } => login(global, home, user, given).await?,
        Command::Logout => logout(home).await?,
        Command::CreateGroup { group } => {
            let (client, session) = as_user(home)?;
            client
                .call(CreateGroup {
                    session,
                    group: group.clone(),
                })
                .await?;
            vec![format!("created group {group}; you own it")]
        }
        Command::ListGroups => {
            let (client, session) = as_user(home)?;
            let groups = client.call(ListGroups { session }).await?;
            groups.iter().map(group_line).collect()
        }
        Command::JoinGroup { group } => {
            let (client, session) = as_user(home)?;
            client
                .call(JoinGroup {
                    session,
                    group: group.clone(),
                })
                .await?;
            vec![format!(
                "asked to join {group}; you are a member once its owner accepts"
            )]
        }
        Command::LeaveGroup { group } => {
            let (client, session) = as_user(home)?;
            client
                .call(LeaveGroup {
                    session,
                    group: group.clone(),
                })
                .await?;
            vec![format!("left group {group}")]
        }
        Command::ListRequests { group } => {
            let (client, session) = as_user(home)?;
            client
                .call(ListRequests {
                    session,
                    group: group.clone(),
                })
                .await?
        }
        Command::AcceptRequest { group, user } => {
            let (client, session) = as_user(home)?;
            let (group, user) = (group.clone(), user.clone());
            let accept = AcceptRequest {
                session,
                group: group.clone(),
                user: user.clone(),
            };
            client.call(accept).await?;
            vec![format!("{user} is now a member of {group}")]
        }
        Command::RejectRequest { group, user } => {
            let (client, session) = as_user(home)?;
            let (group, user) = (group.clone(), user.clone());
            let reject = RejectRequest {
                session,
                group: group.clone(),
                user: user.clone(),
            };
            client.call(reject).await?;
            vec![format!("rejected {user}'s request to join {group}")]
        }
        Command::RemoveMember { group, user } => {
            let (client, session) = as_user(home)?;
            let (group, user) = (group.clone(), user.clone());
            let remove = RemoveMember {
                session,
                group: group.clone(),
                user: user.clone(),
            };
            client.call(remove).await?;
            vec![format!("removed {user} from {group}")]
        }
        Command::ListFiles { group } => {
            let (client, session) = as_user(home)?;
            let files = client
                .call(ListFiles {
                    session,
                    group: group.clone(),
                })
                .await?;
            files.iter().map(file_line).collect()
        }
        Command::Search { pattern } => {
            let (client, session) = as_user(home)?;
            let files = client
                .call(Search {
                    session,
                    pattern: pattern.clone(),
                })
                .await?;
            files
                .iter()
                .map(|f| format!("[{}] {}", f.group, file_line(f)))
                .collect()
        }
        Command::UploadFile { .. }
        | Command::DownloadFile { .. }
        | Command::ShowDownloads
        | Command::StopShare { .. } => return crate::commands::daemon::run(cmd, home).await,
        Command::Status => return crate::commands::status::status(home).await,
        Command::Ui => return crate::commands::status::ui(home).await,
        Command::Completions { .. } | Command::Man => {
            bail!("bug: completions and the man page need no home")
        }
        Command::Shell => bail!("bug: `fsd shell` is not a tracker command"),
        Command::Mount(_) => bail!("bug: `fsd mount` is not a tracker command"),
    };
    print_lines(&lines)
}

/// The trackers, and the logged-in user's session to call them with.
/// What the trackers tell the user on the way is printed as a note.
fn as_user(home: &Home) -> anyhow::Result<(TrackerClient, SessionToken)> {
    let session = home.session()?;
    let client = home
        .tracker_client()?
        .on_notice(|n| eprintln!("fsd: note: {n}"));
    Ok((client, session.token))
}

async fn create_user(
    global: &Global,
    home: &Home,
    user: &str,
    given: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let password = match given {
        Some("") => bail!("the password is empty"),
        Some(p) => p.to_string(),
        None => password(global, &format!("New password for {user}: "), true)?,
    };
    let user = user.to_string();
    let create = CreateUser {
        user: user.clone(),
        password,
    };
    home.tracker_client()?.call(create).await?;
    Ok(vec![format!(
        "created user {user}; log in with `fsd login {user}`"
    )])
}

async fn login(
    global: &Global,
    home: &Home,
    user: &str,
    given: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let password = match given {
        Some("") => bail!("the password is empty"),
        Some(p) => p.to_string(),
        None => password(global, &format!("Password for {user}: "), false)?,
    };
    let login = Login {
        user: user.into(),
        password,
    };
    let login = home.tracker_client()?.call(login).await?;
    let user = login.user;
    home.save_session(&Session {
        user: user.clone(),
        token: login.token,
        expires_unix_ms: login.expires_unix_ms,
    })
    .context("logged in, but cannot save the session")?;
    home.remember_trackers()
        .context("logged in, but cannot remember the trackers file")?;
    Ok(vec![format!("logged in as {user}")])
}

async fn logout(home: &Home) -> anyhow::Result<Vec<String>> {
    let Some(session) = home.load_session()? else {
        bail!("not logged in");
    };
    let stopped = crate::control::stop_daemon_if_running(home).await?;
    let told = match home.tracker_client() {
        Ok(client) => client
            .call(Logout {
                session: session.token,
            })
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    // The local session ends whatever the tracker says: the user asked.
    home.clear_session()?;
    match told {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.downcast_ref::<ClientError>(),
                Some(ClientError::Refused(ErrorCode::InvalidSession))
            ) => {}
        Err(e) => {
            return Err(e.context("logged out on this machine, but the tracker could not be told"))
        }
    }
    let mut lines = Vec::new();
    if stopped {
        lines.push("stopped sharing and unmounted".to_string());
    }
    lines.push(format!("logged out {}", session.user));
    Ok(lines)
}

/// `NAME  owner=USER  members=N` and the caller's standing, if any.
fn group_line(g: &GroupInfo) -> String {
    let mark = if g.is_owner {
        "  [owner]"
    } else if g.is_member {
        "  [member]"
    } else if g.pending {
        "  [pending]"
    } else {
        ""
    };
    format!("{}  owner={}  members={}{mark}", g.name, g.owner, g.members)
}

/// `NAME  SIZE  peers=N`, the size in bytes.
fn file_line(f: &FileEntry) -> String {
    format!("{}  {}  peers={}", f.name, f.size, f.peers_online)
}

/// Writes the lines; a reader that went away (`| head`) is not an error.
fn print_lines(lines: &[String]) -> anyhow::Result<()> {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

/// The password from `--password-stdin`, `FILESHARE_PASSWORD` or a prompt
/// on the terminal, in that order. `confirm` asks twice at a prompt.
fn password(global: &Global, prompt: &str, confirm: bool) -> anyhow::Result<String> {
    let pw = if global.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(pw) = std::env::var_os("FILESHARE_PASSWORD") {
        pw.into_string()
            .map_err(|_| anyhow::anyhow!("FILESHARE_PASSWORD is not valid UTF-8"))?
    } else {
        let pw = tty::prompt_password(prompt)?;
        if confirm && tty::prompt_password("Repeat the password: ")? != pw {
            bail!("the passwords do not match");
        }
        pw
    };
    if pw.is_empty() {
        bail!("the password is empty");
    }
    Ok(pw)
}

mod tty {
    //! Reading a password from the terminal with echo off, through termios.

    use anyhow::{bail, Context};
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::AsRawFd;

    /// Restores the terminal's settings when dropped, even on error.
    struct EchoOff {
        fd: i32,
        saved: libc::termios,
    }

    impl EchoOff {
        fn new(fd: i32) -> anyhow::Result<EchoOff> {
            // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
            let mut term: libc::termios = unsafe { std::mem::zeroed() };
            if unsafe { libc::tcgetattr(fd, &mut term) } != 0 {
                bail!(
                    "cannot read the terminal settings: {}",
                    std::io::Error::last_os_error()
                );
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            term.c_lflag |= libc::ECHONL;
            // SAFETY: `term` came from tcgetattr on the same fd.
            if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) } != 0 {
                bail!("cannot turn off echo: {}", std::io::Error::last_os_error());
            }
            Ok(EchoOff { fd, saved })
        }
    }

    impl Drop for EchoOff {
        fn drop(&mut self) {
            // SAFETY: restores settings read from the same, still open, fd.
            unsafe {
                libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
            }
        }
    }

    pub fn prompt_password(prompt: &str) -> anyhow::Result<String> {
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .context(
                "no password given: use --password-stdin or FILESHARE_PASSWORD, or run on a \
                 terminal",
            )?;
        let _echo = EchoOff::new(tty.as_raw_fd())?;
        let mut w = &tty;
        w.write_all(prompt.as_bytes())
            .and_then(|()| w.flush())
            .context("cannot write to the terminal")?;
        let mut line = String::new();
        BufReader::new(&tty)
            .read_line(&mut line)
            .context("cannot read the password from the terminal")?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_are_stable() {
        let g = GroupInfo {
            name: "g1".into(),
            owner: "alice".into(),
            members: 3,
            is_owner: false,
            is_member: true,
            pending: false,
        };
        assert_eq!(group_line(&g), "g1  owner=alice  members=3  [member]");
        let outsider = GroupInfo {
            is_member: false,
            ..g
        };
        assert_eq!(group_line(&outsider), "g1  owner=alice  members=3");
        let f = FileEntry {
            group: "g1".into(),
            name: "a.iso".into(),
            size: 1234,
            id: fileshare_protocol::FileId([0; 32]),
            peers_online: 2,
            holders: 1,
        };
        assert_eq!(file_line(&f), "a.iso  1234  peers=2");
    }
}
