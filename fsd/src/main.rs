use clap::Parser;
use fsd::cli::{Cli, Command};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Mount(_) => "info",
        _ => "warn",
    };
    // A detached daemon writes to its log file, never in colour.
    let detached = matches!(&cli.command, Command::Mount(m) if m.daemon);
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_ansi(std::io::stderr().is_terminal() && !detached);
    // A command's notes (a tracker key remembered) are read by people: no
    // timestamps or module paths, and held until it ends, so a failure is
    // still the one line that says what went wrong. The daemon and the
    // shell log as they go.
    let held = Held::default();
    match cli.command {
        Command::Mount(_) => log.with_writer(std::io::stderr).init(),
        Command::Shell => log
            .with_writer(std::io::stderr)
            .without_time()
            .with_target(false)
            .init(),
        _ => {
            let writer = held.clone();
            log.with_writer(move || writer.clone())
                .without_time()
                .with_target(false)
                .init()
        }
    }
    match run(cli) {
        Ok(()) => {
            held.show();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log output kept in memory until the command ends.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<Vec<u8>>>);

impl Held {
    /// Writes what was held to stderr.
    fn show(&self) {
        let text = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        if !text.is_empty() {
            use std::io::Write;
            let _ = std::io::stderr().write_all(&text);
        }
    }
}

impl std::io::Write for Held {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Generated from the command line alone: no home needed.
    match &cli.command {
        Command::Completions { shell } => return fsd::commands::docs::completions(*shell),
        Command::Man => return fsd::commands::docs::man(),
        _ => {}
    }
    let home = cli.global.home()?;
    match &cli.command {
        Command::Mount(args) => fsd::mount::run(&home, args),
        Command::Shell => fsd::commands::shell::run(&cli.global, &home),
        cmd => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(fsd::commands::run(cmd, &cli.global, &home))
        }
    }
}
