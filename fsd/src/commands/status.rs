//! `fsd status`, everything on one screen, and `fsd ui`, the dashboard's
//! URL. Both ask the running daemon over the control socket; `status` also
//! asks each tracker itself, and still says what it can when no daemon
//! runs.

use crate::control::{ControlClient, ControlError, ControlReply, ControlRequest};
use crate::home::Home;
use crate::ui::snapshot::Snapshot;
use crate::units::human_bytes;
use anyhow::{bail, Context};
use fileshare_protocol::client::TrackerClient;
use fileshare_protocol::messages::tracker::AskTicketKey;
use fileshare_protocol::trackers_file;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How long each tracker has to answer `fsd status`.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// `fsd ui`: the URL with its token, on a line of its own.
pub async fn ui(home: &Home) -> anyhow::Result<()> {
    let mut c = ControlClient::connect(home).await?;
    let addr = match c.call(ControlRequest::Ui).await? {
        ControlReply::Ui { addr: Some(a) } => a,
        ControlReply::Ui { addr: None } => {
            bail!("the daemon runs without a dashboard (`--ui off`); remount with `--ui ADDR`")
        }
        _ => return Err(ControlError::Unexpected.into()),
    };
    let path = home.ui_token_path();
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the dashboard token {}", path.display()))?;
    // In the fragment: the browser keeps it from the server and its logs.
    println!("{addr}#token={}", token.trim());
    Ok(())
}

/// `fsd status`.
pub async fn status(home: &Home) -> anyhow::Result<()> {
    let daemon = match ControlClient::connect(home).await {
        Ok(mut c) => match c.call(ControlRequest::Overview).await? {
            ControlReply::Overview(s) => {
                let ui = match c.call(ControlRequest::Ui).await? {
                    ControlReply::Ui { addr } => addr,
                    _ => None,
                };
                Some((*s, ui))
            }
            _ => return Err(ControlError::Unexpected.into()),
        },
        Err(ControlError::NotRunning) => None,
        Err(e) => return Err(e.into()),
    };
    let trackers = ping_trackers(home).await;
    let mut out = String::new();
    match &daemon {
        Some((s, ui)) => {
            let _ = writeln!(
                out,
                "mounted    {} (user {}, daemon pid {})",
                s.mountpoint, s.user, s.pid
            );
            match ui {
                Some(a) => {
                    let _ = writeln!(out, "dashboard  {a} (`fsd ui` prints it with its token)");
                }
                None => out.push_str("dashboard  off\n"),
            }
        }
        None => {
            let who = home.load_session()?.map(|s| s.user);
            let _ = writeln!(
                out,
                "mounted    no: the daemon is not running (start it with `fsd mount`){}",
                who.map(|u| format!("; logged in as {u}"))
                    .unwrap_or_else(|| "; not logged in".into())
            );
        }
    }
    out.push_str(&trackers);
    if let Some((s, _)) = &daemon {
        out.push_str(&daemon_lines(s));
    }
    print!("{out}");
    Ok(())
}

/// The trackers file and, for each tracker, whether it answers.
async fn ping_trackers(home: &Home) -> String {
    let file = home.trackers_file();
    let mut out = format!("trackers   {}\n", file.display());
    let entries = match trackers_file::load_entries(file) {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(out, "  cannot read it: {e}");
            return out;
        }
    };
    let identity = home.identity().ok();
    let pings = entries.into_iter().map(|entry| {
        let addr = entry.addr.clone();
        let client = TrackerClient::new(
            vec![entry],
            home.known_keys(),
            identity.clone(),
            PING_TIMEOUT,
        );
        async move {
            let start = Instant::now();
            let r = tokio::time::timeout(PING_TIMEOUT, client.call(AskTicketKey)).await;
            let ms = start.elapsed().as_millis();
            match r {
                Ok(Ok(_)) => format!("  {addr}  answers ({ms} ms)\n"),
                Ok(Err(e)) => format!("  {addr}  does not answer: {e:#}\n"),
                Err(_) => format!(
                    "  {addr}  does not answer within {} s\n",
                    PING_TIMEOUT.as_secs()
                ),
            }
        }
    });
    for line in futures_util::future::join_all(pings).await {
        out.push_str(&line);
    }
    out
}

/// Groups, shared files and transfers, as the daemon sees them.
fn daemon_lines(s: &Snapshot) -> String {
    let mut out = String::new();
    if let Some(e) = &s.tracker_error {
        let _ = writeln!(out, "note       no tracker answered the daemon: {e}");
    }
    let groups: Vec<String> = s
        .groups
        .iter()
        .map(|g| {
            let role = if g.is_owner {
                "owner"
            } else if g.pending {
                "pending"
            } else {
                "member"
            };
            let mut t = format!("{} ({role}, {} members", g.name, g.members);
            if !g.requests.is_empty() {
                let _ = write!(t, ", {} waiting to join", g.requests.len());
            }
            t.push(')');
            t
        })
        .collect();
    if !s.reachability.is_empty() {
        let _ = writeln!(out, "reached    {}", s.reachability);
    }
    let _ = writeln!(
        out,
        "groups     {}",
        if groups.is_empty() {
            "none".to_string()
        } else {
            groups.join(", ")
        }
    );
    let local: Vec<_> = s
        .groups
        .iter()
        .flat_map(|g| g.files.iter().map(move |f| (g, f)))
        .filter_map(|(g, f)| f.local.as_ref().map(|l| (g, f, l)))
        .collect();
    let bytes: u64 = local.iter().map(|(_, f, _)| f.size).sum();
    let _ = writeln!(
        out,
        "files      {} held here, {}",
        local.len(),
        human_bytes(bytes)
    );
    for (g, f, l) in &local {
        let _ = writeln!(
            out,
            "  {}/{}  {}  {}/{} pieces  down {}/s  up {}/s  {} online",
            g.name,
            f.name,
            human_bytes(f.size),
            l.verified,
            l.pieces,
            human_bytes(l.down),
            human_bytes(l.up),
            count(f.peers_online, "peer")
        );
    }
    let _ = writeln!(
        out,
        "transfers  down {}/s  up {}/s  {}",
        human_bytes(s.total.down),
        human_bytes(s.total.up),
        count(u32::try_from(s.peers.len()).unwrap_or(u32::MAX), "peer")
    );
    for p in s.peers.iter().filter(|p| !p.path.is_empty()) {
        let _ = writeln!(
            out,
            "  from {} ({})  {}/{}  {}/s",
            p.addr,
            p.path,
            p.group,
            p.file,
            human_bytes(p.down)
        );
    }
    for d in s.downloads.iter().filter(|d| d.state != "complete") {
        let pct = if d.size == 0 {
            100.0
        } else {
            d.done as f64 * 100.0 / d.size as f64
        };
        let _ = writeln!(
            out,
            "  download {}/{}  {pct:.1}%  {}/s  {}  -> {}",
            d.group,
            d.name,
            human_bytes(d.rate),
            d.error.as_deref().unwrap_or(&d.state),
            d.dest
        );
    }
    let _ = writeln!(
        out,
        "store      {} of pieces fetched or copied in; cache {} of {} (files fetched from others)",
        human_bytes(s.stored),
        human_bytes(s.cache_used),
        human_bytes(s.cache_budget)
    );
    let k = &s.kernel_reads;
    let _ = write!(out, "reads      files held whole: {}", k.how);
    if k.passthrough {
        let _ = write!(
            out,
            "; {} so far, {} now",
            count(clamp(k.passthrough_opens), "open"),
            k.passthrough_open_now
        );
    }
    let _ = writeln!(
        out,
        "\n           through the daemon: {}, {} read",
        count(clamp(k.daemon_opens), "open"),
        human_bytes(k.daemon_read_bytes)
    );
    out
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `1 peer`, `3 peers`.
fn count(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::passthrough::{self, KernelReadsView};
    use crate::ui::snapshot::{FileView, GroupView, LocalFile};

    #[test]
    fn daemon_lines_show_groups_files_and_transfers() {
        let s = Snapshot {
            groups: vec![GroupView {
                name: "g".into(),
                owner: "alice".into(),
                members: 2,
                is_owner: true,
                requests: vec!["carol".into()],
                files: vec![FileView {
                    name: "a.iso".into(),
                    size: 2 << 20,
                    peers_online: 2,
                    local: Some(LocalFile {
                        pieces: 4,
                        verified: 4,
                        up: 1 << 20,
                        ..LocalFile::default()
                    }),
                }],
                ..GroupView::default()
            }],
            ..Snapshot::default()
        };
        let text = daemon_lines(&s);
        assert!(
            text.contains("groups     g (owner, 2 members, 1 waiting to join)"),
            "{text}"
        );
        assert!(text.contains("files      1 held here, 2.0 MiB"), "{text}");
        assert!(
            text.contains("  g/a.iso  2.0 MiB  4/4 pieces  down 0 B/s  up 1.0 MiB/s"),
            "{text}"
        );
        assert!(
            text.contains("transfers  down 0 B/s  up 0 B/s  0 peers"),
            "{text}"
        );
        assert!(text.contains("store      0 B of pieces"), "{text}");
    }

    #[test]
    fn daemon_lines_say_whether_the_kernel_reads_files_held_whole() {
        let mut s = Snapshot {
            kernel_reads: KernelReadsView {
                passthrough: true,
                how: passthrough::ON.into(),
                passthrough_opens: 3,
                passthrough_open_now: 1,
                daemon_opens: 1,
                daemon_read_bytes: 1 << 20,
            },
            ..Snapshot::default()
        };
        let text = daemon_lines(&s);
        assert!(
            text.contains(
                "reads      files held whole: read by the kernel directly (passthrough); \
                 3 opens so far, 1 now\n           through the daemon: 1 open, 1.0 MiB read"
            ),
            "{text}"
        );
        s.kernel_reads = KernelReadsView {
            how: passthrough::NEEDS_CAP.into(),
            ..KernelReadsView::default()
        };
        let text = daemon_lines(&s);
        assert!(
            text.contains(
                "reads      files held whole: read through the daemon: passthrough needs CAP_SYS_ADMIN\n"
            ),
            "{text}"
        );
    }
}
