//! The command line. Doc comments on the variants are the help text.

use crate::home::Home;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "fsd",
    version,
    about = "FileShare: a peer-to-peer swarm you use as a directory"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Where the session, the piece store and the control socket live
    /// [default: ~/.local/share/fileshare]
    #[arg(long, env = "FILESHARE_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// The trackers file, one host:port per line [default: the one given at
    /// login, else HOME/trackers.txt]
    #[arg(long, env = "FILESHARE_TRACKERS", global = true)]
    pub trackers: Option<PathBuf>,
    /// Read the password from the first line of standard input
    #[arg(long, global = true)]
    pub password_stdin: bool,
}

impl Global {
    /// The home these options name, created owner-only if missing.
    pub fn home(&self) -> anyhow::Result<Home> {
        Home::resolve(self.home.as_deref(), self.trackers.as_deref())
    }
}

/// Where the dashboard listens: `--ui ADDR`, or `--ui off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiAddr {
    Off,
    At(std::net::SocketAddr),
}

impl UiAddr {
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            UiAddr::Off => None,
            UiAddr::At(a) => Some(*a),
        }
    }
}

/// Parses `--ui`: `off`, or an address to listen on such as
/// `127.0.0.1:8080`.
pub fn parse_ui_addr(s: &str) -> Result<UiAddr, String> {
    match s {
        "off" | "none" => Ok(UiAddr::Off),
        _ => s
            .parse::<std::net::SocketAddr>()
            .map(UiAddr::At)
            .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:8080, nor `off`")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// Where to mount the swarm (created if missing)
    #[arg(default_value = "/mnt/fileshare")]
    pub mountpoint: PathBuf,
    /// Address the peer server listens on; `[::]` takes IPv6 and IPv4
    /// alike, `0.0.0.0` IPv4 only
    #[arg(long, default_value = "[::]:0")]
    pub listen: String,
    /// Detach once the mount is up
    #[arg(long)]
    pub daemon: bool,
    /// Seconds a read waits for a piece no peer can serve before EIO
    #[arg(long, default_value_t = 60)]
    pub read_timeout: u64,
    /// Cap on upload rate over all peers, e.g. 8M (bytes per second)
    #[arg(long, value_parser = crate::units::parse_rate)]
    pub max_upload_rate: Option<u64>,
    /// Cap on download rate over all peers, e.g. 8M (bytes per second)
    #[arg(long, value_parser = crate::units::parse_rate)]
    pub max_download_rate: Option<u64>,
    /// Bytes of files fetched from others kept on disk, e.g. 500M or 8G;
    /// the least recently read pieces are evicted beyond it. Files you
    /// shared never are [default: 10% of the home's file system, at most
    /// 50G]
    #[arg(long, value_parser = crate::units::parse_size)]
    pub cache_size: Option<u64>,
    /// Peers one file is fetched from at once; beyond it, a peer that
    /// gives nothing makes room for one not tried yet
    #[arg(long, default_value_t = crate::net::fetch::LINKS_PER_FILE)]
    pub max_peers_per_file: usize,
    /// Peers fetched from at once over all files
    #[arg(long, default_value_t = crate::net::fetch::LINKS_TOTAL)]
    pub max_peers: usize,
    /// Where the dashboard listens (`fsd ui` prints its URL), or `off`
    #[arg(long, default_value = "127.0.0.1:0", value_parser = parse_ui_addr)]
    pub ui: UiAddr,
    /// Testing only: corrupt every piece this daemon serves
    #[arg(long, hide = true)]
    pub corrupt_uploads: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create an account
    #[command(alias = "create_user")]
    CreateUser { user: String },
    /// Log in and store the session in the home directory
    Login { user: String },
    /// Stop sharing everything, unmount and end the session
    Logout,
    /// Mount the swarm and serve peers until unmounted
    Mount(MountArgs),
    /// Create a group that you own
    #[command(alias = "create_group")]
    CreateGroup { group: String },
    /// List every group in the network
    #[command(alias = "list_groups")]
    ListGroups,
    /// Ask to join a group
    #[command(alias = "join_group")]
    JoinGroup { group: String },
    /// Leave a group
    #[command(alias = "leave_group")]
    LeaveGroup { group: String },
    /// List pending requests to join a group you own
    #[command(alias = "list_requests")]
    ListRequests { group: String },
    /// Accept a request to join a group you own
    #[command(alias = "accept_request")]
    AcceptRequest { group: String, user: String },
    /// Reject a request to join a group you own
    #[command(alias = "reject_request")]
    RejectRequest { group: String, user: String },
    /// Remove a member from a group you own: listings are refused at once,
    /// pieces within the ticket lifetime
    #[command(alias = "remove_member")]
    RemoveMember { group: String, user: String },
    /// List the files shared in a group
    #[command(alias = "list_files")]
    ListFiles { group: String },
    /// Find files by name in every group you belong to
    Search { pattern: String },
    /// Share a file in place (no copy), through the running daemon
    #[command(alias = "upload_file")]
    UploadFile { path: PathBuf, group: String },
    /// Download a file through the running daemon
    #[command(alias = "download_file")]
    DownloadFile {
        group: String,
        name: String,
        dest: PathBuf,
    },
    /// Show downloads in progress and complete
    #[command(alias = "show_downloads")]
    ShowDownloads,
    /// Stop sharing a file
    #[command(alias = "stop_share")]
    StopShare { group: String, name: String },
    /// An interactive prompt that takes the classic command lines
    Shell,
    /// One screen: the mount, the daemon, the trackers, groups, shared
    /// files and transfers
    Status,
    /// Print the running daemon's dashboard URL, with its access token
    Ui,
    /// Print shell completions: `fsd completions bash > /etc/bash_completion.d/fsd`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `fsd man | man -l -`
    Man,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ui_addresses() {
        assert_eq!(parse_ui_addr("off"), Ok(UiAddr::Off));
        assert_eq!(
            parse_ui_addr("127.0.0.1:0"),
            Ok(UiAddr::At("127.0.0.1:0".parse().unwrap()))
        );
        assert!(parse_ui_addr("localhost").is_err());
    }
}
