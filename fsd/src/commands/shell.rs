//! `fsd shell`: a prompt with line editing and history that takes the
//! classic command lines as written (`login alice secret`,
//! `download_file g1 a.iso /tmp`), passwords included, and runs them
//! through the same functions as the command line.
//!
//! Lines that carry a password never reach the history file. Without a
//! terminal the shell reads lines from standard input, prints no prompt,
//! and exits with the status of the last command, like `sh`.

use crate::cli::{Command, Global, MountArgs};
use crate::home::Home;
use anyhow::Context;
use rustyline::error::ReadlineError;
use std::io::IsTerminal;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unclosed quote")]
    UnclosedQuote,
    #[error("trailing backslash")]
    TrailingBackslash,
    #[error("unknown command `{0}`; type `help` for the list")]
    Unknown(String),
    #[error("usage: {0}")]
    Usage(String),
}

/// One parsed line.
#[derive(Debug)]
pub enum Line {
    Empty,
    Help,
    Quit,
    Run {
        cmd: Command,
        /// Given on the line (`login alice secret`), never prompted for.
        password: Option<String>,
    },
}

/// A command of the shell: its seed spelling and argument names.
struct Spec {
    name: &'static str,
    args: &'static [&'static str],
    /// Trailing arguments that may be left out.
    optional: usize,
    about: &'static str,
}

const SPECS: &[Spec] = &[
    spec("create_user", &["USER", "PASSWORD"], "create an account"),
    spec("login", &["USER", "PASSWORD"], "log in"),
    spec("logout", &[], "stop sharing, unmount, end the session"),
    spec("create_group", &["GROUP"], "create a group you own"),
    spec("join_group", &["GROUP"], "ask to join a group"),
    spec("leave_group", &["GROUP"], "leave a group"),
    spec(
        "list_requests",
        &["GROUP"],
        "pending requests to join your group",
    ),
    spec(
        "accept_request",
        &["GROUP", "USER"],
        "let USER into your group",
    ),
    spec(
        "reject_request",
        &["GROUP", "USER"],
        "turn USER's request down",
    ),
    spec(
        "remove_member",
        &["GROUP", "USER"],
        "take USER out of your group",
    ),
    spec("list_groups", &[], "every group in the network"),
    spec("list_files", &["GROUP"], "the files shared in a group"),
    spec("search", &["PATTERN"], "files by name in your groups"),
    spec("upload_file", &["PATH", "GROUP"], "share PATH in place"),
    spec(
        "download_file",
        &["GROUP", "NAME", "DEST"],
        "download NAME to DEST (a file or a directory)",
    ),
    spec("show_downloads", &[], "downloads running and complete"),
    spec("stop_share", &["GROUP", "NAME"], "stop sharing NAME"),
    Spec {
        name: "mount",
        args: &["MOUNTPOINT"],
        optional: 1,
        about: "start the daemon in the background (default /mnt/fileshare)",
    },
    spec("help", &[], "this list"),
    spec("quit", &[], "leave the shell (also `exit` or Ctrl-D)"),
];

const fn spec(name: &'static str, args: &'static [&'static str], about: &'static str) -> Spec {
    Spec {
        name,
        args,
        optional: 0,
        about,
    }
}

impl Spec {
    fn usage(&self) -> String {
        let mut s = self.name.to_string();
        for (i, a) in self.args.iter().enumerate() {
            if i >= self.args.len() - self.optional {
                s.push_str(&format!(" [{a}]"));
            } else {
                s.push(' ');
                s.push_str(a);
            }
        }
        s
    }
}

/// The help text: one line per command.
pub fn help() -> String {
    let width = SPECS.iter().map(|s| s.usage().len()).max().unwrap_or(0);
    SPECS
        .iter()
        .map(|s| format!("  {:width$}  {}\n", s.usage(), s.about))
        .collect()
}

/// Splits a line into words like a POSIX shell would for simple words:
/// whitespace separates, `'…'` and `"…"` quote, backslash escapes.
pub fn split_words(line: &str) -> Result<Vec<String>, ParseError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(ParseError::UnclosedQuote),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(ParseError::UnclosedQuote),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(ParseError::UnclosedQuote),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next().ok_or(ParseError::TrailingBackslash)?);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Parses one line of the shell. Names take the seed's snake_case or the
/// command line's kebab-case.
pub fn parse_line(line: &str) -> Result<Line, ParseError> {
    let words = split_words(line)?;
    let Some((head, rest)) = words.split_first() else {
        return Ok(Line::Empty);
    };
    if head.starts_with('#') {
        return Ok(Line::Empty);
    }
    let name = head.replace('-', "_");
    let name = match name.as_str() {
        "exit" => "quit",
        "?" => "help",
        n => n,
    };
    let spec = SPECS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ParseError::Unknown(head.clone()))?;
    let max = spec.args.len();
    if rest.len() > max || rest.len() < max - spec.optional {
        return Err(ParseError::Usage(spec.usage()));
    }
    let a = |i: usize| rest.get(i).cloned().unwrap_or_default();
    let run = |cmd| {
        Ok(Line::Run {
            cmd,
            password: None,
        })
    };
    match spec.name {
        "help" => Ok(Line::Help),
        "quit" => Ok(Line::Quit),
        "create_user" => Ok(Line::Run {
            cmd: Command::CreateUser { user: a(0) },
            password: Some(a(1)),
        }),
        "login" => Ok(Line::Run {
            cmd: Command::Login { user: a(0) },
            password: Some(a(1)),
        }),
        "logout" => run(Command::Logout),
        "create_group" => run(Command::CreateGroup { group: a(0) }),
        "join_group" => run(Command::JoinGroup { group: a(0) }),
        "leave_group" => run(Command::LeaveGroup { group: a(0) }),
        "list_requests" => run(Command::ListRequests { group: a(0) }),
        "accept_request" => run(Command::AcceptRequest {
            group: a(0),
            user: a(1),
        }),
        "reject_request" => run(Command::RejectRequest {
            group: a(0),
            user: a(1),
        }),
        "remove_member" => run(Command::RemoveMember {
            group: a(0),
            user: a(1),
        }),
        "list_groups" => run(Command::ListGroups),
        "list_files" => run(Command::ListFiles { group: a(0) }),
        "search" => run(Command::Search { pattern: a(0) }),
        "upload_file" => run(Command::UploadFile {
            path: PathBuf::from(a(0)),
            group: a(1),
        }),
        "download_file" => run(Command::DownloadFile {
            group: a(0),
            name: a(1),
            dest: PathBuf::from(a(2)),
        }),
        "show_downloads" => run(Command::ShowDownloads),
        "stop_share" => run(Command::StopShare {
            group: a(0),
            name: a(1),
        }),
        "mount" => run(Command::Mount(MountArgs {
            mountpoint: rest
                .first()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/mnt/fileshare")),
            listen: "0.0.0.0:0".into(),
            daemon: true,
            read_timeout: 60,
            max_upload_rate: None,
            max_download_rate: None,
            corrupt_uploads: false,
        })),
        other => Err(ParseError::Unknown(other.to_string())),
    }
}

/// Runs the shell until `quit` or end of input.
pub fn run(global: &Global, home: &Home) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let mut rl = rustyline::DefaultEditor::new().context("cannot start the line editor")?;
    let history = home.dir().join("shell_history");
    // Created owner-only before rustyline ever writes it.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&history);
    let _ = std::fs::set_permissions(&history, std::fs::Permissions::from_mode(0o600));
    let _ = rl.load_history(&history);
    // Like sh: only lines typed at a terminal go to the history.
    let interactive = std::io::stdin().is_terminal();
    let mut last: anyhow::Result<()> = Ok(());
    loop {
        let line = match rl.readline("fsd> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("cannot read the command line"),
        };
        let parsed = parse_line(&line);
        let keep = matches!(
            &parsed,
            Ok(Line::Run { password: None, .. } | Line::Help | Line::Quit)
        );
        if keep && interactive && rl.add_history_entry(line.as_str()).unwrap_or(false) {
            let _ = rl.append_history(&history);
        }
        last = match parsed {
            Ok(Line::Empty) => continue,
            Ok(Line::Help) => {
                print!("{}", help());
                Ok(())
            }
            Ok(Line::Quit) => break,
            Ok(Line::Run { cmd, password }) => rt.block_on(dispatch(&cmd, password, global, home)),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = &last {
            eprintln!("fsd: {e:#}");
        }
    }
    last
}

/// Runs one command as the command line would, with the password given.
async fn dispatch(
    cmd: &Command,
    password: Option<String>,
    global: &Global,
    home: &Home,
) -> anyhow::Result<()> {
    match cmd {
        Command::Mount(args) => start_daemon(home, args),
        Command::Shell => anyhow::bail!("already in the shell"),
        _ => {
            crate::commands::tracker::run_with_password(cmd, global, home, password.as_deref())
                .await
        }
    }
}

/// `mount` inside the shell: `fsd mount --daemon` as a child process, so
/// this process (which runs a runtime) never forks itself.
fn start_daemon(home: &Home, args: &MountArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the fsd executable")?;
    let status = std::process::Command::new(exe)
        .arg("--home")
        .arg(home.dir())
        .arg("--trackers")
        .arg(home.trackers_file())
        .arg("mount")
        .arg(&args.mountpoint)
        .arg("--daemon")
        .status()
        .context("cannot start the daemon")?;
    if !status.success() {
        anyhow::bail!("the daemon did not start");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(split_words("  a  b\tc ").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_words(r#"upload_file "/tmp/my file.iso" g1"#).unwrap(),
            ["upload_file", "/tmp/my file.iso", "g1"]
        );
        assert_eq!(split_words(r"a\ b 'c d' e''").unwrap(), ["a b", "c d", "e"]);
        assert_eq!(split_words(r#""say \"hi\"""#).unwrap(), [r#"say "hi""#]);
        assert_eq!(split_words("''").unwrap(), [""]);
        assert!(split_words("").unwrap().is_empty());
        assert_eq!(split_words("'open").unwrap_err(), ParseError::UnclosedQuote);
        assert_eq!(
            split_words("x\\").unwrap_err(),
            ParseError::TrailingBackslash
        );
    }

    #[test]
    fn seed_lines_parse_verbatim() {
        match parse_line("create_user alice secret").unwrap() {
            Line::Run {
                cmd: Command::CreateUser { user },
                password: Some(p),
            } => assert_eq!((user.as_str(), p.as_str()), ("alice", "secret")),
            other => panic!("{other:?}"),
        }
        match parse_line("login alice secret").unwrap() {
            Line::Run {
                cmd: Command::Login { user },
                password: Some(p),
            } => assert_eq!((user.as_str(), p.as_str()), ("alice", "secret")),
            other => panic!("{other:?}"),
        }
        match parse_line("download_file g1 a.iso /tmp").unwrap() {
            Line::Run {
                cmd: Command::DownloadFile { group, name, dest },
                password: None,
            } => {
                assert_eq!((group.as_str(), name.as_str()), ("g1", "a.iso"));
                assert_eq!(dest, PathBuf::from("/tmp"));
            }
            other => panic!("{other:?}"),
        }
        match parse_line("accept_request g1 bob").unwrap() {
            Line::Run {
                cmd: Command::AcceptRequest { group, user },
                ..
            } => assert_eq!((group.as_str(), user.as_str()), ("g1", "bob")),
            other => panic!("{other:?}"),
        }
        for line in ["remove_member g1 bob", "remove-member g1 bob"] {
            match parse_line(line).unwrap() {
                Line::Run {
                    cmd: Command::RemoveMember { group, user },
                    password: None,
                } => assert_eq!((group.as_str(), user.as_str()), ("g1", "bob")),
                other => panic!("{line}: {other:?}"),
            }
        }
        match parse_line("upload_file /path g1").unwrap() {
            Line::Run {
                cmd: Command::UploadFile { path, group },
                ..
            } => {
                assert_eq!(path, PathBuf::from("/path"));
                assert_eq!(group, "g1");
            }
            other => panic!("{other:?}"),
        }
        for (line, ok) in [
            ("create_group g1", true),
            ("join_group g1", true),
            ("leave_group g1", true),
            ("list_requests g1", true),
            ("list_groups", true),
            ("list_files g1", true),
            ("logout", true),
            ("show_downloads", true),
            ("stop_share g1 a.iso", true),
            ("search iso", true),
            ("show-downloads", true),
            ("list-files g1", true),
        ] {
            assert_eq!(
                matches!(parse_line(line), Ok(Line::Run { password: None, .. })),
                ok,
                "{line}"
            );
        }
        assert!(matches!(parse_line("quit"), Ok(Line::Quit)));
        assert!(matches!(parse_line("exit"), Ok(Line::Quit)));
        assert!(matches!(parse_line("help"), Ok(Line::Help)));
        assert!(matches!(parse_line("   "), Ok(Line::Empty)));
        assert!(matches!(parse_line("# note"), Ok(Line::Empty)));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert_eq!(
            parse_line("login alice").unwrap_err(),
            ParseError::Usage("login USER PASSWORD".into())
        );
        assert_eq!(
            parse_line("list_groups extra").unwrap_err(),
            ParseError::Usage("list_groups".into())
        );
        assert_eq!(
            parse_line("frobnicate").unwrap_err(),
            ParseError::Unknown("frobnicate".into())
        );
        assert_eq!(
            parse_line("mount a b").unwrap_err(),
            ParseError::Usage("mount [MOUNTPOINT]".into())
        );
        match parse_line("mount").unwrap() {
            Line::Run {
                cmd: Command::Mount(m),
                ..
            } => assert!(m.daemon && m.mountpoint == Path::new("/mnt/fileshare")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_lists_every_command() {
        let h = help();
        for s in SPECS {
            assert!(h.contains(&s.usage()), "{}", s.name);
        }
    }
}
