//! `fsd shell`: a prompt with line editing and history that takes the
//! classic command lines as written (`login alice secret`,
//! `download_file g1 a.iso /tmp`), passwords included, and runs them
//! through the same functions as the command line.
//!
//! A line is parsed by the command line's own definitions (`cli.rs`): the
//! same commands, spellings, arguments and defaults. The shell adds only
//! the password argument of `create_user` and `login`, and `mount` always
//! starts the daemon in the background.
//!
//! Lines that carry a password never reach the history file. Without a
//! terminal the shell reads lines from standard input, prints no prompt,
//! and exits with the status of the last command, like `sh`.

use crate::cli::{Command, Global};
use crate::home::Home;
use anyhow::Context;
use clap::error::ErrorKind;
use clap::{Arg, FromArgMatches, Subcommand};
use rustyline::error::ReadlineError;
use std::io::IsTerminal;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unclosed quote")]
    UnclosedQuote,
    #[error("trailing backslash")]
    TrailingBackslash,
    #[error("unknown command `{0}`; type `help` for the list")]
    Unknown(String),
    /// What is wrong with the line, then how the command is used.
    #[error("{0}")]
    Usage(String),
}

/// One parsed line.
#[derive(Debug)]
pub enum Line {
    Empty,
    /// Text to show: the command list, or one command's help.
    Help(String),
    Quit,
    Run {
        cmd: Command,
        /// Given on the line (`login alice secret`), never prompted for.
        password: Option<String>,
        /// The words after the command's name, as typed: `mount` passes
        /// them on to the daemon it starts.
        args: Vec<String>,
    },
}

/// The argument the shell adds to `create_user` and `login`.
const PASSWORD: &str = "password";

/// The shell's grammar: the command line's subcommands, with a password
/// argument where the classic lines have one.
fn grammar() -> clap::Command {
    let root = clap::Command::new("fsd")
        .no_binary_name(true)
        .subcommand_required(true)
        .disable_help_subcommand(true)
        .color(clap::ColorChoice::Never);
    let with_password = |c: clap::Command| {
        c.arg(
            Arg::new(PASSWORD)
                .value_name("PASSWORD")
                .required(true)
                .help("The password (the command line asks for it instead)"),
        )
    };
    Command::augment_subcommands(root)
        .mut_subcommand("create-user", with_password)
        .mut_subcommand("login", with_password)
        .mut_subcommand("shell", |c| c.hide(true))
}

/// How a command is written in the shell: its classic snake_case name
/// where it has one, then its arguments.
fn usage(c: &clap::Command) -> String {
    let name = c
        .get_all_aliases()
        .find(|a| a.contains('_'))
        .unwrap_or(c.get_name());
    let mut s = name.to_string();
    for a in c.get_positionals() {
        let v = a
            .get_value_names()
            .and_then(|v| v.first())
            .map_or_else(|| a.get_id().as_str().to_uppercase(), |v| v.to_string());
        if a.is_required_set() {
            s.push_str(&format!(" {v}"));
        } else {
            s.push_str(&format!(" [{v}]"));
        }
    }
    let options = c
        .get_arguments()
        .any(|a| !a.is_positional() && !a.is_hide_set() && a.get_id() != "help");
    if options {
        s.push_str(" [OPTIONS]");
    }
    s
}

/// The help text: one line per command.
pub fn help() -> String {
    let g = grammar();
    // In the command line's order (the shell's additions moved some).
    let order = Command::augment_subcommands(clap::Command::new("fsd"));
    let mut rows: Vec<(String, String)> = (order.get_subcommands())
        .filter_map(|c| g.find_subcommand(c.get_name()))
        .filter(|c| !c.is_hide_set())
        .map(|c| {
            let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
            (usage(c), about)
        })
        .collect();
    rows.push((
        "help [COMMAND]".into(),
        "This list, or one command's help".into(),
    ));
    rows.push((
        "quit".into(),
        "Leave the shell (also `exit` or Ctrl-D)".into(),
    ));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(u, about)| format!("  {u:width$}  {about}\n"))
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

/// Parses one line of the shell with the command line's definitions.
/// Names take the seed's snake_case or the command line's kebab-case.
pub fn parse_line(line: &str) -> Result<Line, ParseError> {
    let words = split_words(line)?;
    let Some((head, rest)) = words.split_first() else {
        return Ok(Line::Empty);
    };
    if head.starts_with('#') {
        return Ok(Line::Empty);
    }
    match (head.as_str(), rest) {
        ("help" | "?", []) => Ok(Line::Help(help())),
        ("help" | "?", [topic]) => parse_words(&[topic.clone(), "--help".into()]),
        ("quit" | "exit", []) => Ok(Line::Quit),
        _ => parse_words(&words),
    }
}

/// Parses the words of a command line (not empty).
fn parse_words(words: &[String]) -> Result<Line, ParseError> {
    let (head, rest) = words
        .split_first()
        .ok_or(ParseError::Unknown(String::new()))?;
    let matches = match grammar().try_get_matches_from(words) {
        Ok(m) => m,
        Err(e) => return clap_error(&e, head),
    };
    let password = (matches.subcommand())
        .and_then(|(_, m)| m.try_get_one::<String>(PASSWORD).ok().flatten().cloned());
    let mut cmd = Command::from_arg_matches(&matches).map_err(|e| one_line(&e))?;
    if let Command::Mount(m) = &mut cmd {
        m.daemon = true;
    }
    Ok(Line::Run {
        cmd,
        password,
        args: rest.to_vec(),
    })
}

/// A parse failure as the shell shows it.
fn clap_error(e: &clap::Error, head: &str) -> Result<Line, ParseError> {
    match e.kind() {
        ErrorKind::InvalidSubcommand => Err(ParseError::Unknown(head.to_string())),
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            Ok(Line::Help(format!("{}\n", e.to_string().trim_end())))
        }
        _ => Err(one_line(e)),
    }
}

/// clap's message in one line: what is wrong, then the usage.
fn one_line(e: &clap::Error) -> ParseError {
    let text = e.to_string();
    let lines: Vec<&str> = (text.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    let mut out = String::new();
    for l in lines {
        let l = l.strip_prefix("error: ").unwrap_or(l);
        if let Some(u) = l.strip_prefix("Usage: ") {
            out.push_str(&format!("; usage: {u}"));
        } else {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(l);
        }
    }
    ParseError::Usage(out)
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
            Ok(Line::Run { password: None, .. } | Line::Help(_) | Line::Quit)
        );
        if keep && interactive && rl.add_history_entry(line.as_str()).unwrap_or(false) {
            let _ = rl.append_history(&history);
        }
        last = match parsed {
            Ok(Line::Empty) => continue,
            Ok(Line::Help(text)) => {
                print!("{text}");
                Ok(())
            }
            Ok(Line::Quit) => break,
            Ok(Line::Run {
                cmd,
                password,
                args,
            }) => rt.block_on(dispatch(&cmd, password, &args, global, home)),
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
    args: &[String],
    global: &Global,
    home: &Home,
) -> anyhow::Result<()> {
    match cmd {
        Command::Mount(_) => start_daemon(home, args),
        Command::Shell => anyhow::bail!("already in the shell"),
        Command::Completions { shell } => crate::commands::docs::completions(*shell),
        Command::Man => crate::commands::docs::man(),
        _ => {
            crate::commands::tracker::run_with_password(cmd, global, home, password.as_deref())
                .await
        }
    }
}

/// `mount` inside the shell: `fsd mount ARGS --daemon` as a child
/// process, so this process (which runs a runtime) never forks itself.
fn start_daemon(home: &Home, args: &[String]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the fsd executable")?;
    let status = std::process::Command::new(exe)
        .arg("--home")
        .arg(home.dir())
        .arg("--trackers")
        .arg(home.trackers_file())
        .arg("mount")
        .args(args)
        .args((!args.iter().any(|a| a == "--daemon")).then_some("--daemon"))
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
    use clap::Parser;
    use std::path::{Path, PathBuf};

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
                ..
            } => assert_eq!((user.as_str(), p.as_str()), ("alice", "secret")),
            other => panic!("{other:?}"),
        }
        match parse_line("login alice secret").unwrap() {
            Line::Run {
                cmd: Command::Login { user },
                password: Some(p),
                ..
            } => assert_eq!((user.as_str(), p.as_str()), ("alice", "secret")),
            other => panic!("{other:?}"),
        }
        match parse_line("download_file g1 a.iso /tmp").unwrap() {
            Line::Run {
                cmd: Command::DownloadFile { group, name, dest },
                password: None,
                ..
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
                    ..
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
        assert!(matches!(parse_line("help"), Ok(Line::Help(_))));
        assert!(matches!(parse_line("   "), Ok(Line::Empty)));
        assert!(matches!(parse_line("# note"), Ok(Line::Empty)));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let usage = |line: &str| match parse_line(line) {
            Err(ParseError::Usage(u)) => u,
            other => panic!("{line}: {other:?}"),
        };
        let u = usage("login alice");
        assert!(
            u.contains("<PASSWORD>") && u.ends_with("usage: login <USER> <PASSWORD>"),
            "{u}"
        );
        let u = usage("list_groups extra");
        assert!(
            u.contains("'extra'") && u.ends_with("usage: list-groups"),
            "{u}"
        );
        assert!(usage("mount a b").contains("'b'"));
        assert!(usage("mount --read-timeout soon").contains("soon"));
        assert!(!usage("download_file g1").contains('\n'));
        assert_eq!(
            parse_line("frobnicate").unwrap_err(),
            ParseError::Unknown("frobnicate".into())
        );
        assert_eq!(
            parse_line("help frobnicate").unwrap_err(),
            ParseError::Unknown("frobnicate".into())
        );
    }

    #[test]
    fn defaults_and_options_are_the_command_lines() {
        let mount = |line: &str| match parse_line(line).unwrap() {
            Line::Run {
                cmd: Command::Mount(m),
                args,
                ..
            } => (m, args),
            other => panic!("{other:?}"),
        };
        let (m, args) = mount("mount");
        let cli = crate::cli::Cli::try_parse_from(["fsd", "mount"]).unwrap();
        let Command::Mount(default) = cli.command else {
            panic!("{cli:?}")
        };
        assert!(m.daemon, "the shell's mount always detaches");
        assert_eq!(m.mountpoint, default.mountpoint);
        assert_eq!(m.listen, default.listen);
        assert_eq!(m.read_timeout, default.read_timeout);
        assert!(args.is_empty());
        let (m, args) = mount("mount /mnt/x --listen 127.0.0.1:0 --max-upload-rate 1M");
        assert_eq!(m.mountpoint, Path::new("/mnt/x"));
        assert_eq!(
            (m.listen.as_str(), m.max_upload_rate),
            ("127.0.0.1:0", Some(1 << 20))
        );
        assert_eq!(
            args,
            [
                "/mnt/x",
                "--listen",
                "127.0.0.1:0",
                "--max-upload-rate",
                "1M"
            ]
        );
    }

    #[test]
    fn help_lists_every_command() {
        let h = help();
        for line in [
            "create_user USER PASSWORD",
            "login USER PASSWORD",
            "download_file GROUP NAME DEST",
            "mount [MOUNTPOINT] [OPTIONS]",
            "show_downloads",
            "quit",
        ] {
            assert!(h.contains(line), "{line}:\n{h}");
        }
        assert!(
            !h.lines().any(|l| l.trim_start().starts_with("shell")),
            "{h}"
        );
        match parse_line("help login").unwrap() {
            Line::Help(text) => assert!(text.contains("<PASSWORD>"), "{text}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_line("?"), Ok(Line::Help(_))));
    }
}
