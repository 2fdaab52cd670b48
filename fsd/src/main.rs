use clap::Parser;
use fsd::cli::{Cli, Command};
use fsd::home::Home;
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Mount(_) => "info",
        _ => "warn",
    };
    // A detached daemon writes to its log file, never in colour.
    let detached = matches!(&cli.command, Command::Mount(m) if m.daemon);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !detached)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::resolve(&cli.global)?;
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
