//! The commands served by the running daemon: `upload-file`,
//! `download-file`, `show-downloads` and `stop-share`. Each is one or a few
//! requests over the control socket; this side only checks arguments,
//! shows progress and prints results.

use crate::cli::Command;
use crate::control::{
    ControlClient, ControlError, ControlReply, ControlRequest, DownloadState, DownloadStatus,
    WirePath,
};
use crate::home::Home;
use crate::units::human_bytes;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// The pause between two progress requests of a waiting `download-file`:
/// the daemon holds each one until the download ends or a progress hold
/// has passed, so the end shows within this much of happening.
const POLL: Duration = Duration::from_millis(20);

/// Without a terminal, a progress line at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// Runs `upload-file`, `download-file`, `show-downloads` or `stop-share`.
pub async fn run(cmd: &Command, home: &Home) -> anyhow::Result<()> {
    match cmd {
        Command::UploadFile { path, group } => upload_file(home, path, group).await,
        Command::DownloadFile { group, name, dest } => download_file(home, group, name, dest).await,
        Command::ShowDownloads => show_downloads(home).await,
        Command::StopShare { group, name } => stop_share(home, group, name).await,
        _ => bail!("not a daemon command"),
    }
}

pub async fn upload_file(home: &Home, path: &Path, group: &str) -> anyhow::Result<()> {
    // Absolute but not canonical: a symlink is shared under its own name.
    let abs = std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))?;
    let md = std::fs::metadata(&abs).with_context(|| format!("cannot read {}", path.display()))?;
    if !md.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut c = ControlClient::connect(home).await?;
    let req = ControlRequest::UploadFile {
        path: WirePath::from(abs.as_path()),
        group: group.to_string(),
    };
    match c.call(req).await? {
        ControlReply::Shared {
            group,
            name,
            size,
            pieces,
        } => {
            println!(
                "shared {name} in {group} ({}, {pieces} pieces)",
                human_bytes(size)
            );
            Ok(())
        }
        _ => Err(ControlError::Unexpected.into()),
    }
}

pub async fn stop_share(home: &Home, group: &str, name: &str) -> anyhow::Result<()> {
    let mut c = ControlClient::connect(home).await?;
    c.call(ControlRequest::StopShare {
        group: group.to_string(),
        name: name.to_string(),
    })
    .await?;
    println!("stopped sharing {name} in {group}");
    Ok(())
}

pub async fn show_downloads(home: &Home) -> anyhow::Result<()> {
    let mut c = ControlClient::connect(home).await?;
    match c.call(ControlRequest::Downloads).await? {
        ControlReply::Downloads(all) => {
            for s in &all {
                println!("{}", download_line(s));
            }
            Ok(())
        }
        _ => Err(ControlError::Unexpected.into()),
    }
}

/// Starts the download in the daemon and follows it to the end. Ctrl-C
/// stops following, not the download.
pub async fn download_file(
    home: &Home,
    group: &str,
    name: &str,
    dest: &Path,
) -> anyhow::Result<()> {
    let dest = std::path::absolute(dest).with_context(|| format!("bad path {}", dest.display()))?;
    let mut c = ControlClient::connect(home).await?;
    let first = match c
        .call(ControlRequest::Download {
            group: group.to_string(),
            name: name.to_string(),
            dest: WirePath::from(dest.as_path()),
        })
        .await?
    {
        ControlReply::Download(s) => s,
        _ => return Err(ControlError::Unexpected.into()),
    };
    let mut view = ProgressView::new(&first);
    let mut status = first;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        view.update(&status);
        match &status.state {
            DownloadState::Complete { millis } => {
                view.finish();
                println!(
                    "downloaded {}/{} to {} ({} in {:.1} s, {}/s)",
                    status.group,
                    status.name,
                    status.dest.display(),
                    human_bytes(status.size),
                    *millis as f64 / 1000.0,
                    human_bytes(average_rate(status.size, *millis))
                );
                return Ok(());
            }
            DownloadState::Failed(why) => {
                view.finish();
                bail!("{why}");
            }
            DownloadState::Fetching | DownloadState::Writing => {}
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = &mut interrupt => {
                view.finish();
                bail!("interrupted; the download goes on in the daemon (see `fsd show-downloads`)");
            }
        }
        status = c.download_status(status.id).await?;
    }
}

/// A progress bar on a terminal, plain lines on stderr otherwise.
enum ProgressView {
    Bar(ProgressBar),
    Plain { last: Option<(Instant, u64)> },
}

impl ProgressView {
    fn new(s: &DownloadStatus) -> Self {
        if !std::io::stderr().is_terminal() {
            return ProgressView::Plain { last: None };
        }
        let bar = ProgressBar::new(s.size);
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .map(|st| st.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(s.name.clone());
        bar.enable_steady_tick(Duration::from_millis(250));
        ProgressView::Bar(bar)
    }

    fn update(&mut self, s: &DownloadStatus) {
        match self {
            ProgressView::Bar(bar) => {
                bar.set_position(s.done);
                bar.set_message(match s.state {
                    DownloadState::Writing => "writing".to_string(),
                    _ => peers(s.peers),
                });
            }
            ProgressView::Plain { last } => {
                // The last line is the whole download's own rate, never the
                // 0 B/s of a status taken after the last piece came in.
                if let DownloadState::Complete { millis } = s.state {
                    if last.is_some_and(|(_, done)| done == s.size) {
                        return;
                    }
                    eprintln!("{}", plain_line(s, average_rate(s.size, millis), "average"));
                    *last = Some((Instant::now(), s.size));
                    return;
                }
                if s.state != DownloadState::Fetching || s.done == s.size {
                    return;
                }
                let due = match last {
                    None => true,
                    Some((at, done)) => at.elapsed() >= PLAIN_EVERY && *done != s.done,
                };
                if due {
                    eprintln!("{}", plain_line(s, s.rate, &peers(s.peers)));
                    *last = Some((Instant::now(), s.done));
                }
            }
        }
    }

    fn finish(&self) {
        if let ProgressView::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// `a.iso: 25.0% (1.0 MiB of 4.0 MiB), 3.0 MiB/s, 2 peers`.
fn plain_line(s: &DownloadStatus, rate: u64, tail: &str) -> String {
    let (done, percent) = match s.state {
        DownloadState::Complete { .. } => (s.size, 100.0),
        _ => (s.done, s.percent()),
    };
    format!(
        "{}: {percent:.1}% ({} of {}), {}/s, {tail}",
        s.name,
        human_bytes(done),
        human_bytes(s.size),
        human_bytes(rate),
    )
}

/// Bytes per second over a whole download.
fn average_rate(size: u64, millis: u64) -> u64 {
    size.saturating_mul(1000) / millis.max(1)
}

/// `1 peer`, `3 peers`.
fn peers(n: u32) -> String {
    if n == 1 {
        "1 peer".to_string()
    } else {
        format!("{n} peers")
    }
}

/// One `show-downloads` line: `[D] [G] NAME`, then percent, rate and peers.
fn download_line(s: &DownloadStatus) -> String {
    match &s.state {
        DownloadState::Fetching => format!(
            "[D] [{}] {} {:.1}% {}/s {}",
            s.group,
            s.name,
            s.percent(),
            human_bytes(s.rate),
            peers(s.peers)
        ),
        DownloadState::Writing => format!(
            "[D] [{}] {} 100% writing {}",
            s.group,
            s.name,
            s.dest.display()
        ),
        DownloadState::Complete { millis } => {
            let avg = average_rate(s.size, *millis);
            format!(
                "[C] [{}] {} 100% {}/s from {} -> {}",
                s.group,
                s.name,
                human_bytes(avg),
                peers(s.peers),
                s.dest.display()
            )
        }
        DownloadState::Failed(why) => format!(
            "[F] [{}] {} {:.1}% failed: {why}",
            s.group,
            s.name,
            s.percent()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: DownloadState) -> DownloadStatus {
        DownloadStatus::sample(state)
    }

    #[test]
    fn lines_of_show_downloads() {
        assert_eq!(
            download_line(&status(DownloadState::Fetching)),
            "[D] [g1] a.iso 25.0% 3.0 MiB/s 2 peers"
        );
        let mut done = status(DownloadState::Complete { millis: 2000 });
        done.done = done.size;
        done.peers = 1;
        assert_eq!(
            download_line(&done),
            "[C] [g1] a.iso 100% 2.0 MiB/s from 1 peer -> /tmp/a.iso"
        );
        assert!(download_line(&status(DownloadState::Failed("x".into()))).starts_with("[F] [g1]"));
    }

    #[test]
    fn the_last_plain_line_has_the_real_rate() {
        let mut done = status(DownloadState::Complete { millis: 2000 });
        done.rate = 0;
        assert_eq!(
            plain_line(&done, average_rate(done.size, 2000), "average"),
            "a.iso: 100.0% (4.0 MiB of 4.0 MiB), 2.0 MiB/s, average"
        );
    }
}
