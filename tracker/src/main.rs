use clap::{CommandFactory, FromArgMatches, Parser};
use fileshare_tracker::{Config, Limits, Settings};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A FileShare tracker: accounts, groups and the file index.
#[derive(Debug, Parser)]
#[command(name = "fileshare-tracker", version)]
struct Args {
    /// One `host:port [sha256:HEX]` per line; all of them form one cluster
    trackers_file: PathBuf,
    /// This tracker's 1-based position in TRACKERS_FILE
    tracker_no: u32,
    /// Where the state and this tracker's key are kept [default: ./tracker-data-N]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print this tracker's key fingerprint (sha256:HEX, made if missing) and exit
    #[arg(long)]
    fingerprint: bool,
    /// Print the man page (roff) and exit: `fileshare-tracker --man | man -l -`
    #[arg(long, exclusive = true)]
    man: bool,
    /// Seconds a ticket lasts: how long a group's access on the peers
    /// outlives a membership (at most 3600: daemons refuse longer tickets)
    #[arg(long, default_value_t = 300, value_parser = ticket_ttl)]
    ticket_ttl: u64,
    /// Connections (clients and the other trackers) served at once; more
    /// are closed when accepted
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Connections served at once from one source address
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_address: u64,
    /// Seconds a client connection may send nothing before it is closed
    /// (daemons ping within it)
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Groups one user may own
    #[arg(long, default_value_t = 100)]
    max_groups_per_user: u64,
    /// Daemons (peer ids) one user may have online at once
    #[arg(long, default_value_t = 32)]
    max_peers_per_user: u64,
    /// Files one user may share in one group
    #[arg(long, default_value_t = 10_000)]
    max_files_per_user: u64,
    /// Join requests that may wait in one group
    #[arg(long, default_value_t = 1000)]
    max_pending_requests: u64,
    /// Logins that may wait for a password check; more are answered
    /// "busy, retry later" at once (sign-ups wait in a queue of their own)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    max_login_queue: u64,
    /// Sign-ups one source address (an IPv6 /64 counts as one) may make per
    /// hour, over the whole cluster
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    max_sign_ups_per_address: u32,
    /// Login sessions one user may have open at once
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    max_sessions_per_user: u64,
    /// MiB of file metadata (piece hashes, 32 bytes per 512 KiB piece) one
    /// user may share over all groups
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_metadata_per_user: u64,
    /// Peers one Locate answers with: a sample biased to those holding
    /// what the asker lacks, drawn afresh for each request
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    locate_peers: u64,
    /// Offer daemons at the address they announce, not the one their
    /// connection comes from (only behind a proxy that hides the latter:
    /// otherwise a member could send other daemons to dial any host)
    #[arg(long)]
    trust_announced_addresses: bool,
    /// Also accept connections on ADDR (repeatable), e.g. `[::]:7000` to
    /// serve IPv6 beside the IPv4 address the trackers file lists; the
    /// trackers file's address is always listened on
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// Bytes per second each user's daemons may send through this
    /// tracker's relay (for daemons that cannot reach each other), over
    /// all their relayed connections; 0 turns the relay off
    #[arg(long, default_value_t = 10_000_000)]
    relay_rate: u64,
    /// Relayed connections one user may have at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    relay_pairs_per_user: u64,
    /// Seconds between a daemon's announces (testing)
    #[arg(long, hide = true, default_value_t = 5)]
    announce_interval: u64,
    /// Seconds a login session lasts (testing)
    #[arg(long, hide = true, default_value_t = 7 * 24 * 3600)]
    session_ttl: u64,
}

fn main() -> ExitCode {
    return_big_allocations();
    // Parsed in two steps: `--man` stands alone, without the positionals
    // that the fields below require.
    let matches = Args::command().get_matches();
    if matches.get_flag("man") {
        return man();
    }
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("./tracker-data-{}", args.tracker_no)));
    if args.fingerprint {
        return match fileshare_tracker::identity(&data_dir) {
            Ok(identity) => {
                println!("{}", identity.fingerprint());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "fileshare-tracker: {}",
                    fileshare_protocol::error::chain(&e)
                );
                ExitCode::FAILURE
            }
        };
    }
    let config = Config {
        data_dir,
        trackers_file: args.trackers_file,
        settings: Settings {
            tracker_no: args.tracker_no,
            announce_interval: Duration::from_secs(args.announce_interval.max(1)),
            session_ttl: Duration::from_secs(args.session_ttl),
            ticket_ttl: Duration::from_secs(args.ticket_ttl),
            limits: Limits {
                connections: count(args.max_connections),
                connections_per_address: count(args.max_connections_per_address),
                idle_timeout: Duration::from_secs(args.idle_timeout),
                groups_per_user: count(args.max_groups_per_user),
                peers_per_user: count(args.max_peers_per_user),
                files_per_user: count(args.max_files_per_user),
                pending_requests: count(args.max_pending_requests),
                login_queue: count(args.max_login_queue),
                sign_ups_per_address: args.max_sign_ups_per_address,
                sessions_per_user: count(args.max_sessions_per_user),
                metadata_per_user: args.max_metadata_per_user.saturating_mul(1 << 20),
                locate_peers: count(args.locate_peers),
            },
            trust_announced_addrs: args.trust_announced_addresses,
            also_listen: args.listen,
            relay: fileshare_tracker::reach::relay::RelayLimits {
                rate: args.relay_rate,
                pairs_per_user: count(args.relay_pairs_per_user),
            },
            ..Settings::default()
        },
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fileshare-tracker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    watch_stdin(stop.clone());
    let result = rt.block_on(async {
        tokio::spawn(watch_signals(stop.clone()));
        fileshare_tracker::run(config, stop.cancelled_owned()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "fileshare-tracker: {}",
                fileshare_protocol::error::chain(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// Every Argon2 check allocates about 19 MiB on one of the blocking pool's
/// threads. glibc raises its mmap threshold past that size after the first
/// free, and each thread's arena would then keep its own 19 MiB resident:
/// a stream of logins grew a tracker by hundreds of MiB. A fixed threshold
/// maps such blocks and returns them on free. Called before any thread
/// starts.
fn return_big_allocations() {
    // SAFETY: mallopt only sets an allocator parameter; no thread runs yet.
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
}

/// Writes the man page, generated from the command line's own definition
/// so it never falls behind it, to standard output.
fn man() -> ExitCode {
    use std::io::Write;
    let mut buf = Vec::new();
    let written = clap_mangen::Man::new(Args::command())
        .render(&mut buf)
        .and_then(|()| {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf).and_then(|()| out.flush())
        });
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("fileshare-tracker: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// `--ticket-ttl`: whole seconds, from 1 to what daemons accept.
fn ticket_ttl(s: &str) -> Result<u64, String> {
    let max = fileshare_protocol::ticket::MAX_TICKET_LIFETIME.as_secs();
    let secs: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(1..=max).contains(&secs) {
        return Err(format!(
            "a ticket lasts 1 to {max} seconds; daemons refuse tickets that last longer, \
             so members would be refused everywhere"
        ));
    }
    Ok(secs)
}

/// A count flag as a `usize`, saturating.
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `quit` on standard input stops the tracker. A plain thread, because a
/// blocking read of stdin cannot be cancelled and would hold up the
/// runtime's shutdown; the process exits without waiting for it.
fn watch_stdin(stop: CancellationToken) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) if l.trim() == "quit" => {
                        stop.cancel();
                        return;
                    }
                    Ok(l) if !l.trim().is_empty() => {
                        eprintln!("fileshare-tracker: unknown command {l:?}; type `quit` to stop");
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch standard input: {e}");
    }
}

async fn watch_signals(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
        () = stop.cancelled() => {}
    }
    stop.cancel();
}
