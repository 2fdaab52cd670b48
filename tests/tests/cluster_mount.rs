//! Daemons with real FUSE mounts over a cluster of trackers: they keep
//! listing, sharing and reading while the tracker they use is killed and
//! another takes over, and are offered by the survivor.

use fileshare_protocol::messages::tracker::Locate;
use fileshare_protocol::messages::SessionToken;
use fileshare_tests::mount::{wait_for, Mount};
use fileshare_tests::random_file;
use fileshare_tests::world::{User, World};
use std::process::Command;
use std::time::Duration;

const MIB: usize = 1 << 20;

fn ls(m: &Mount, group: &str) -> String {
    let out = Command::new("ls")
        .arg("-l")
        .arg(m.path(group))
        .output()
        .expect("ls");
    assert!(
        out.status.success(),
        "ls -l failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_listed(m: &Mount, group: &str, name: &str, size: usize) {
    wait_for(
        &format!("{name} listed in {group}"),
        Duration::from_secs(20),
        || {
            ls(m, group)
                .lines()
                .any(|l| l.ends_with(&format!(" {name}")) && l.contains(&format!(" {size} ")))
                .then_some(())
        },
    );
}

fn read_back(m: &Mount, group: &str, name: &str, want: &[u8]) {
    let got = std::fs::read(m.path(&format!("{group}/{name}")))
        .unwrap_or_else(|e| panic!("read {name}: {e}\n{}", m.log()));
    assert!(got == want, "{name}: the bytes read differ");
}

fn session_of(user: &User) -> SessionToken {
    let text = std::fs::read_to_string(user.home.join("session")).unwrap();
    let bytes = fileshare_protocol::ids::unhex(text.lines().nth(1).unwrap()).unwrap();
    SessionToken(bytes.try_into().unwrap())
}

/// The users whose daemons tracker `i` offers for `name` in `g`.
fn offered_by(w: &mut World, i: u32, session: SessionToken, name: &str) -> Vec<String> {
    let client = w.cluster_mut().client(i);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let found = rt
        .block_on(client.call(Locate {
            session,
            group: "g".into(),
            name: name.to_string(),
        }))
        .unwrap_or_else(|e| panic!("locate through tracker {i}: {e:?}"));
    let mut users: Vec<String> = found.peers.into_iter().map(|p| p.user).collect();
    users.sort();
    users.dedup();
    users
}

#[test]
fn mounts_keep_working_while_their_tracker_is_killed_and_another_takes_over() {
    let mut w = World::cluster(2);
    let alice = w.user("alice");
    let bob = w.user("bob");
    w.group("g", &alice, &[&bob]);
    let ma = w.mount(&alice, &[]);
    let mb = w.mount(&bob, &[]);

    let one = w.path("one.bin");
    let one_data = random_file(&one, 3 * MIB, 1);
    ma.cp_in(&one, "g");
    wait_listed(&mb, "g", "one.bin", 3 * MIB);
    read_back(&mb, "g", "one.bin", &one_data);
    // Both trackers offer both daemons, whichever they announced to.
    let s = session_of(&bob);
    wait_for(
        "both daemons offered by tracker 2",
        Duration::from_secs(10),
        || (offered_by(&mut w, 2, s, "one.bin") == ["alice", "bob"]).then_some(()),
    );

    // Every daemon uses tracker 1 (the first of the file): kill it.
    w.cluster_mut().kill9(1);
    assert!(ls(&mb, "g").contains("one.bin"), "listing lost");
    // Sharing goes through tracker 2 once it has taken over.
    let two = w.path("two.bin");
    let two_data = random_file(&two, 2 * MIB, 2);
    ma.cp_in(&two, "g");
    wait_listed(&mb, "g", "two.bin", 2 * MIB);
    read_back(&mb, "g", "two.bin", &two_data);
    // A newcomer mounted now finds everything through tracker 2.
    let carol = w.user("carol");
    w.fsd_ok(&carol, &["join-group", "g"]);
    w.fsd_ok(&alice, &["accept-request", "g", "carol"]);
    let mc = w.mount(&carol, &[]);
    wait_listed(&mc, "g", "one.bin", 3 * MIB);
    read_back(&mc, "g", "one.bin", &one_data);
    read_back(&mc, "g", "two.bin", &two_data);
    // The daemons announce to tracker 2 now: they stay offered longer than
    // the gossip they were first known by would last (3 intervals).
    std::thread::sleep(Duration::from_secs(4));
    let offered = offered_by(&mut w, 2, s, "two.bin");
    assert!(
        offered.contains(&"alice".to_string()) && offered.contains(&"bob".to_string()),
        "tracker 2 offers {offered:?}"
    );

    // Tracker 1 comes back, catches up, and answers as tracker 2 does.
    w.cluster_mut().restart(1);
    w.cluster_mut().wait_serving(1);
    wait_for(
        "tracker 1 offers the daemons",
        Duration::from_secs(10),
        || {
            (offered_by(&mut w, 1, s, "two.bin") == offered_by(&mut w, 2, s, "two.bin"))
                .then_some(())
        },
    );
    assert!(ls(&mc, "g").contains("two.bin"));
}
