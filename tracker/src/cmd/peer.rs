//! Daemons announcing themselves and what they hold (soft state).

use super::Caller;
use crate::shared::Shared;
use crate::state::State;
use fileshare_protocol::ids::{Bitfield, FileId};
use fileshare_protocol::messages::tracker::{Announce, LeaveNetwork, ReportPieces};
use fileshare_protocol::messages::tracker::{Holding, MAX_ALSO_ADDRS};
use fileshare_protocol::messages::{ClusterMsg, TrackerReply, TrackerResult};
use fileshare_protocol::{ErrorCode, Limit};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The address other peers should dial: the announced port at the
/// address the announce came from. A daemon cannot know how others see it
/// (it may listen on every interface, or sit behind a router that
/// translates its address), and a member must not send other daemons to
/// dial a third host. The announced address stands only where the tracker
/// sees no better one: a daemon on the tracker's own machine (loopback),
/// or a tracker told to trust announced addresses.
fn dialable(addr: &str, caller: &Caller, trust: bool) -> Result<String, ErrorCode> {
    let mut parsed: SocketAddr = addr
        .parse()
        .map_err(|_| ErrorCode::BadRequest(format!("{addr:?} is not an ip:port address")))?;
    if parsed.port() == 0 {
        return Err(ErrorCode::BadRequest(format!("{addr} has no port")));
    }
    if let Some(from) = caller.addr {
        let from = from.ip().to_canonical();
        let keep = trust || (from.is_loopback() && !parsed.ip().is_unspecified());
        if !keep || parsed.ip().is_unspecified() {
            parsed.set_ip(from);
        }
    }
    Ok(parsed.to_string())
}

/// The announced addresses of families other than `offered`'s that
/// another host could dial (not unspecified, multicast or link-local;
/// loopback only from a daemon on this machine, `local`), at most
/// [`MAX_ALSO_ADDRS`], one per family. They are offered only once this
/// tracker has dialled the daemon there itself, so a member cannot send
/// others to a third host.
fn other_families(also: &[String], offered: &str, local: bool) -> Vec<String> {
    let Ok(offered) = offered.parse::<SocketAddr>() else {
        return Vec::new();
    };
    let mut families = vec![offered.is_ipv4()];
    let mut out = Vec::new();
    for a in also.iter().take(MAX_ALSO_ADDRS * 2) {
        let Ok(a) = a.parse::<SocketAddr>() else {
            continue;
        };
        let ip = a.ip().to_canonical();
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        let dialable = a.port() != 0
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && !link_local
            && (local || !ip.is_loopback());
        if dialable && !families.contains(&ip.is_ipv4()) && out.len() < MAX_ALSO_ADDRS {
            families.push(ip.is_ipv4());
            out.push(SocketAddr::new(ip, a.port()).to_string());
        }
    }
    out
}

/// Replaces what the tracker knows of `peer`. Holdings of files the user
/// cannot see, or with a bitfield of the wrong length, are ignored.
pub fn announce(shared: &Shared, caller: &Caller, req: Announce) -> TrackerResult {
    let Announce {
        session,
        peer,
        addr,
        also,
        holdings,
    } = req;
    let (session, addr, also) = (&session, addr.as_str(), also.as_slice());
    let user = shared.session_user(session)?;
    caller.speaks_for(&peer)?;
    let addr = dialable(addr, caller, shared.settings.trust_announced_addrs)?;
    let local = (caller.addr).is_none_or(|a| a.ip().to_canonical().is_loopback());
    let also = other_families(also, &addr, local);
    let now = Instant::now();
    let state = shared.state.read();
    let visible = visible_holdings(&state, &user, holdings);
    let gossip = ClusterMsg::PeerAnnounced {
        peer,
        user: user.clone(),
        addr: addr.clone(),
        also: also.clone(),
        holdings: visible
            .iter()
            .map(|(file, have)| Holding {
                file: *file,
                have: have.clone(),
            })
            .collect(),
    };
    {
        let mut peers = shared.peers.write();
        let quota = shared.settings.limits.peers_per_user;
        if !peers.knows(&peer) {
            let online = peers.count_of(&user);
            if online >= quota {
                return Err(ErrorCode::LimitReached {
                    limit: Limit::PeersPerUser,
                    message: format!(
                        "{user} has {online} daemons online, the most one user may have \
                         (--max-peers-per-user {quota}); stop one or wait until it times out"
                    ),
                });
            }
        }
        peers.announce(now, peer, &user, (addr.clone(), also.clone()), visible)?;
    }
    drop(state);
    shared.gossip(&gossip);
    let interval_secs = u32::try_from(shared.settings.announce_interval.as_secs())
        .unwrap_or(u32::MAX)
        .max(1);
    let reach = shared.reach.check(peer, &addr);
    for a in &also {
        shared.reach.check(peer, a);
    }
    let seen = caller.addr.map(|a| a.to_string()).unwrap_or_default();
    Ok(TrackerReply::Announced {
        interval_secs,
        offered: addr,
        seen,
        reach,
    })
}

fn layout_pieces(meta: &fileshare_protocol::ids::FileMeta) -> u32 {
    // Shared metadata was checked to be consistent, so this is its layout.
    u32::try_from(meta.hashes.len()).unwrap_or(u32::MAX)
}

/// The holdings of files `user` may see, with bitfields of their length.
fn visible_holdings(state: &State, user: &str, holdings: Vec<Holding>) -> Vec<(FileId, Bitfield)> {
    holdings
        .into_iter()
        .filter(|h| {
            state
                .visible_file(user, &h.file)
                .is_some_and(|f| h.have.is_valid_for(layout_pieces(&f.meta)))
        })
        .map(|h| (h.file, h.have))
        .collect()
}

/// Applies another tracker's news about a daemon, so every tracker offers
/// every online peer whichever tracker it announced to. What comes from
/// another tracker is checked like a daemon's own word (same visibility
/// and layout rules), so a bad message changes no more than a bad announce
/// could; refusals are dropped quietly.
pub fn apply_gossip(shared: &Shared, msg: ClusterMsg) {
    let now = Instant::now();
    let state = shared.state.read();
    let result = match msg {
        ClusterMsg::PeerAnnounced {
            peer,
            user,
            addr,
            also,
            holdings,
        } => {
            if addr.parse::<SocketAddr>().is_err() {
                return;
            }
            shared.reach.check(peer, &addr);
            // Checked as an announce from another machine would be.
            let also = other_families(&also, &addr, false);
            for a in &also {
                shared.reach.check(peer, a);
            }
            let visible = visible_holdings(&state, &user, holdings);
            shared
                .peers
                .write()
                .announce(now, peer, &user, (addr, also), visible)
        }
        ClusterMsg::PiecesReported {
            peer,
            user,
            file,
            pieces,
        } => match state.visible_file(&user, &file) {
            Some(f) => {
                let n = layout_pieces(&f.meta);
                let valid: Vec<u32> = pieces.into_iter().filter(|&i| i < n).collect();
                shared
                    .peers
                    .write()
                    .report(now, peer, &user, file, n, &valid)
            }
            None => Ok(()),
        },
        ClusterMsg::PeerLeft { peer, user } => shared.peers.write().leave(&peer, &user),
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!("gossip not applied: {e}");
    }
}

/// Pieces `peer` verified since its last announce.
pub fn report_pieces(shared: &Shared, caller: &Caller, req: ReportPieces) -> TrackerResult {
    let ReportPieces {
        session,
        peer,
        file,
        pieces,
    } = &req;
    let (peer, file) = (*peer, *file);
    let user = shared.session_user(session)?;
    caller.speaks_for(&peer)?;
    let now = Instant::now();
    let state = shared.state.read();
    let f = state
        .visible_file(&user, &file)
        .ok_or_else(|| ErrorCode::BadRequest(format!("no file {file} in your groups")))?;
    let n = layout_pieces(&f.meta);
    if let Some(bad) = pieces.iter().find(|&&i| i >= n) {
        return Err(ErrorCode::BadRequest(format!(
            "piece {bad} is out of range: the file has {n}"
        )));
    }
    shared
        .peers
        .write()
        .report(now, peer, &user, file, n, pieces)?;
    drop(state);
    shared.gossip(&ClusterMsg::PiecesReported {
        peer,
        user,
        file,
        pieces: pieces.to_vec(),
    });
    Ok(TrackerReply::Done)
}

pub fn leave_network(shared: &Shared, caller: &Caller, req: LeaveNetwork) -> TrackerResult {
    let LeaveNetwork { session, peer } = req;
    let session = &session;
    let user = shared.session_user(session)?;
    caller.speaks_for(&peer)?;
    shared.peers.write().leave(&peer, &user)?;
    shared.gossip(&ClusterMsg::PeerLeft { peer, user });
    Ok(TrackerReply::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::dispatch;
    use crate::cmd::file::tests::{group, meta};
    use crate::cmd::testing::{key_of, Fixture};
    use fileshare_protocol::messages::tracker::*;
    use fileshare_protocol::Bitfield;
    use fileshare_protocol::PeerId;

    #[test]
    fn other_families_are_dialable_and_one_per_family() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let far = v(&["[2001:db8::5]:7", "[2001:db8::6]:7", "198.51.100.1:7"]);
        assert_eq!(
            other_families(&far, "198.51.100.9:7", false),
            v(&["[2001:db8::5]:7"])
        );
        let useless = v(&[
            "[::]:7",
            "[fe80::1]:7",
            "[ff02::1]:7",
            "[::1]:7",
            "[2001:db8::5]:0",
            "junk",
        ]);
        assert!(other_families(&useless, "198.51.100.9:7", false).is_empty());
        // Loopback only from a daemon on the tracker's machine.
        assert_eq!(
            other_families(&v(&["[::1]:7"]), "127.0.0.1:7", true),
            v(&["[::1]:7"])
        );
    }

    #[test]
    fn unspecified_addresses_take_the_caller_ip() {
        let caller = Caller {
            addr: Some("10.1.2.3:5555".parse().unwrap()),
            key: None,
        };
        let d = |addr, trust| dialable(addr, &caller, trust);
        assert_eq!(d("0.0.0.0:7000", false).unwrap(), "10.1.2.3:7000");
        assert!(d("localhost:7000", false).is_err());
        assert!(d("127.0.0.1:0", false).is_err());
    }

    /// A member cannot send other daemons to dial a third host: the
    /// address offered is the one the announce came from, unless the
    /// tracker trusts announced addresses or the daemon is on its machine.
    #[test]
    fn announced_addresses_take_the_address_the_announce_came_from() {
        let from = |a: &str| Caller {
            addr: Some(a.parse().unwrap()),
            key: None,
        };
        let (remote, local) = (from("198.51.100.7:40000"), from("127.0.0.1:40000"));
        assert_eq!(
            dialable("192.0.2.1:7000", &remote, false).unwrap(),
            "198.51.100.7:7000"
        );
        assert_eq!(
            dialable("192.0.2.1:7000", &remote, true).unwrap(),
            "192.0.2.1:7000"
        );
        assert_eq!(
            dialable("10.213.0.5:7000", &local, false).unwrap(),
            "10.213.0.5:7000"
        );
        // A dual-stack listener sees IPv4 clients as mapped addresses.
        assert_eq!(
            dialable("0.0.0.0:7000", &from("[::ffff:198.51.100.7]:1"), false).unwrap(),
            "198.51.100.7:7000"
        );
    }

    #[tokio::test]
    async fn bad_reports_are_refused() {
        let fx = Fixture::new().await;
        let [alice, _, carol] = group(&fx).await;
        let m = meta("a", b"abc");
        fx.call(ShareFile {
            session: alice,
            group: "g".into(),
            meta: m.clone(),
        })
        .await
        .unwrap();
        let peer = PeerId([1; 16]);
        let report = |session, pieces| ReportPieces {
            session,
            peer,
            file: m.id(),
            pieces,
        };
        // Not announced yet.
        assert!(fx.call(report(alice, vec![0])).await.is_err());
        let r = fx
            .call(Announce {
                session: alice,
                peer,
                addr: "127.0.0.1:9".into(),
                also: vec![],
                holdings: vec![Holding {
                    file: m.id(),
                    // Wrong length: ignored.
                    have: Bitfield::full(5),
                }],
            })
            .await;
        assert!(matches!(
            r,
            Ok(TrackerReply::Announced {
                interval_secs: 5,
                ..
            })
        ));
        assert!(
            fx.call(report(alice, vec![1])).await.is_err(),
            "out of range"
        );
        assert!(
            fx.call(report(carol, vec![0])).await.is_err(),
            "not visible"
        );
        fx.call(report(alice, vec![0])).await.unwrap();
    }

    /// A user's daemons beyond `--max-peers-per-user` are refused, naming
    /// the limit; those online keep announcing, and other users are not
    /// counted against it.
    #[tokio::test]
    async fn peers_per_user_are_capped() {
        let fx = Fixture::with(crate::shared::Settings {
            limits: crate::shared::Limits {
                peers_per_user: 2,
                files_per_user: 1,
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let [alice, bob, _] = group(&fx).await;
        let announce = |session, n: u8| Announce {
            session,
            peer: PeerId([n; 16]),
            addr: "127.0.0.1:9".into(),
            also: vec![],
            holdings: vec![],
        };
        fx.call(announce(alice, 1)).await.unwrap();
        fx.call(announce(alice, 2)).await.unwrap();
        let Err(ErrorCode::LimitReached {
            limit: Limit::PeersPerUser,
            message: why,
        }) = fx.call(announce(alice, 3)).await
        else {
            panic!("a third daemon must be refused");
        };
        assert!(why.contains("--max-peers-per-user 2"), "{why}");
        fx.call(announce(alice, 1)).await.unwrap();
        fx.call(announce(bob, 4)).await.unwrap();
        // One file each per group: a second name is refused, the same
        // file shared again is not.
        let share = |session, m: &fileshare_protocol::ids::FileMeta| ShareFile {
            session,
            group: "g".into(),
            meta: m.clone(),
        };
        let (a, b) = (meta("a", b"abc"), meta("b", b"def"));
        fx.call(share(alice, &a)).await.unwrap();
        fx.call(share(alice, &a)).await.unwrap();
        let Err(ErrorCode::LimitReached {
            limit: Limit::FilesPerUser,
            message: why,
        }) = fx.call(share(alice, &b)).await
        else {
            panic!("a second file must be refused");
        };
        assert!(why.contains("--max-files-per-user 1"), "{why}");
        fx.call(share(bob, &b)).await.unwrap();
    }

    /// A daemon announces, reports and withdraws only the peer id its own
    /// key derives from.
    #[tokio::test]
    async fn only_the_key_holder_speaks_for_a_peer() {
        let fx = Fixture::new().await;
        let [alice, ..] = group(&fx).await;
        let (mine, theirs) = (PeerId([1; 16]), PeerId([2; 16]));
        let announce = |peer| Announce {
            session: alice,
            peer,
            addr: "127.0.0.1:9".into(),
            also: vec![],
            holdings: vec![],
        };
        let as_key = |key| Caller { addr: None, key };
        let mine_key = as_key(Some(key_of(mine)));
        for (caller, peer, ok) in [
            (&mine_key, mine, true),
            (&mine_key, theirs, false),
            (&as_key(None), mine, false),
        ] {
            let r = dispatch(&fx.shared, caller, announce(peer).into()).await;
            assert_eq!(r.is_ok(), ok, "{caller:?} announcing {peer}: {r:?}");
            if !ok {
                assert!(matches!(r, Err(ErrorCode::BadRequest(_))), "{r:?}");
            }
        }
        let leave = |peer| LeaveNetwork {
            session: alice,
            peer,
        };
        assert!(dispatch(&fx.shared, &mine_key, leave(theirs).into())
            .await
            .is_err());
        assert!(dispatch(&fx.shared, &mine_key, leave(mine).into())
            .await
            .is_ok());
    }
}
