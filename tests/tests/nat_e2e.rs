//! Daemons behind home routers that translate addresses (nftables
//! masquerade) and drop connections from outside, with no port
//! forwarding: the tracker and a public user on the public bridge, users
//! in homes of their own (see `fileshare_tests::netns::nat`). Every read
//! is checked byte for byte, and the path it took is read back from
//! `getfattr` and `fsd status`. The same for hosts with IPv6 only, behind
//! stateful firewalls that translate nothing
//! (`fileshare_tests::netns::nat6`), and for both families on loopback.

use fileshare_tests::mount::{wait_for, xattr, Mount};
use fileshare_tests::netns::nat::{HomeSpec, Internet, Mapping, Nat};
use fileshare_tests::netns::nat6::Internet6;
use fileshare_tests::netns::Host;
use fileshare_tests::world::{User, World};
use fileshare_tests::{cmp, random_file, reserve_port};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const MIB: usize = 1 << 20;

/// A tracker on `host`, and the users `names`, all in group `g` owned by
/// the first.
fn world(host: &Host, names: &[&str]) -> (World, Vec<User>) {
    let w = World::on(host);
    let users: Vec<User> = names.iter().map(|n| w.user(n)).collect();
    let (owner, rest) = users.split_first().expect("an owner");
    w.group("g", owner, &rest.iter().collect::<Vec<_>>());
    (w, users)
}

fn mount(w: &World, net: &Internet, host: &Host, user: &User) -> Mount {
    let m = w.mount_on(host, user, &[]);
    net.track_mount(&m.mountpoint);
    m
}

/// `user`'s `fsd status`, run in `host`'s namespace.
fn status(w: &World, host: &Host, user: &User) -> String {
    let out = host
        .command(&w.fsd)
        .arg("--home")
        .arg(&user.home)
        .arg("status")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("fsd status");
    assert!(
        out.status.success(),
        "fsd status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `user`'s `fsd status` says `what`.
fn await_status(w: &World, host: &Host, user: &User, what: &str) {
    let mut last = String::new();
    let found = (0..100).any(|_| {
        last = status(w, host, user);
        let found = last.contains(what);
        if !found {
            std::thread::sleep(Duration::from_millis(200));
        }
        found
    });
    assert!(found, "`fsd status` never said {what:?}:\n{last}");
}

/// Shares `size` random bytes as `g/NAME` from `seeder` and waits until
/// `reader` lists them.
fn share(w: &World, seeder: &Mount, reader: &Mount, name: &str, size: usize) -> Vec<u8> {
    let src = w.path(name);
    let data = random_file(&src, size, size as u64 ^ 0x5eed);
    seeder.cp_in(&src, "g");
    let listed = reader.path(&format!("g/{name}"));
    wait_for("the file listed", Duration::from_secs(20), || {
        listed.exists().then_some(())
    });
    data
}

#[test]
fn home_routers_let_connections_out_and_none_in() {
    let net = Internet::new(
        2,
        &[HomeSpec {
            hosts: 1,
            nat: Nat::Masquerade,
            mapping: Mapping::None,
        }],
    );
    let (public, home) = (net.public(1).clone(), net.home_host(0, 0).clone());
    let listener = |h: &Host| h.run_in(|| std::net::TcpListener::bind("0.0.0.0:0").expect("bind"));
    let (outside, inside) = (listener(&public), listener(&home));
    let (out_port, in_port) = (
        outside.local_addr().unwrap().port(),
        inside.local_addr().unwrap().port(),
    );
    let connects = |from: &Host, to: std::net::SocketAddr| {
        from.run_in(move || {
            std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_ok()
        })
    };
    assert!(
        connects(&home, (public.addr, out_port).into()),
        "a home host must reach the public side"
    );
    // The public host sees the router's address, not the home's.
    let (_, seen) = outside.accept().expect("accept");
    assert_eq!(seen.ip(), net.home(0).router.addr);
    assert!(
        !connects(&public, (net.home(0).router.addr, in_port).into()),
        "nothing forwards the router's port to the home"
    );
    assert!(
        !connects(&public, (home.addr, in_port).into()),
        "the home's private address must not be routed from outside"
    );
}

#[test]
fn a_reader_behind_nat_reads_from_a_public_seeder() {
    let net = Internet::new(
        2,
        &[HomeSpec {
            hosts: 1,
            nat: Nat::Masquerade,
            mapping: Mapping::None,
        }],
    );
    let (w, users) = world(net.public(0), &["carol", "bob"]);
    let seeder = mount(&w, &net, net.public(1), &users[0]);
    let reader = mount(&w, &net, net.home_host(0, 0), &users[1]);
    let data = share(&w, &seeder, &reader, "p.bin", 8 * MIB);
    let got = std::fs::read(reader.path("g/p.bin")).expect("read through the mount");
    assert!(got == data, "wrong bytes\n{}", reader.log());
    let paths = reader.xattr("g/p.bin", "user.fileshare.paths");
    assert!(paths.contains("direct"), "{paths}");
    // The tracker dials each daemon's offered address once it announces.
    await_status(&w, net.home_host(0, 0), &users[1], "behind NAT");
    let public = format!("reachable at {}:", net.public(1).addr);
    await_status(&w, net.public(1), &users[0], &public);
}

#[test]
fn a_public_reader_reads_from_a_seeder_behind_nat() {
    let net = Internet::new(
        2,
        &[HomeSpec {
            hosts: 1,
            nat: Nat::Masquerade,
            mapping: Mapping::None,
        }],
    );
    let (w, users) = world(net.public(0), &["alice", "carol"]);
    let seeder = mount(&w, &net, net.home_host(0, 0), &users[0]);
    let reader = mount(&w, &net, net.public(1), &users[1]);
    let data = share(&w, &seeder, &reader, "a.bin", 32 * MIB);
    let got = std::fs::read(reader.path("g/a.bin")).expect("read through the mount");
    assert!(
        got == data,
        "wrong bytes\nreader:\n{}\nseeder:\n{}",
        reader.log(),
        seeder.log()
    );
    // The seeder dialled the reader: a reverse connection.
    let paths = reader.xattr("g/a.bin", "user.fileshare.paths");
    assert!(paths.contains("reverse"), "{paths}");
    assert!(!paths.contains("direct"), "{paths}");
    let st = status(&w, net.public(1), &users[1]);
    assert!(st.contains("(reverse)"), "{st}");
}

#[test]
fn a_reader_behind_nat_reads_through_the_relay_from_a_seeder_behind_another() {
    // Random ports on both routers: no path between the homes can be
    // punched, so the tracker's relay is the only way.
    let home = HomeSpec {
        hosts: 1,
        nat: Nat::Random,
        mapping: Mapping::None,
    };
    let net = Internet::new(1, &[home, home]);
    let (w, users) = world(net.public(0), &["alice", "bob"]);
    let seeder = mount(&w, &net, net.home_host(0, 0), &users[0]);
    let reader = mount(&w, &net, net.home_host(1, 0), &users[1]);
    let data = share(&w, &seeder, &reader, "r.bin", 32 * MIB);
    let got = std::fs::read(reader.path("g/r.bin")).expect("read through the mount");
    assert!(
        got == data,
        "wrong bytes\nreader:\n{}\nseeder:\n{}",
        reader.log(),
        seeder.log()
    );
    let paths = reader.xattr("g/r.bin", "user.fileshare.paths");
    assert!(paths.contains("relayed"), "{paths}");
    assert!(!paths.contains("direct"), "{paths}");
}

#[test]
fn a_reader_behind_nat_punches_a_path_to_a_seeder_behind_another() {
    // Routers that keep source ports, as most home routers do: both
    // daemons dial each other at once and their SYNs cross.
    let home = HomeSpec {
        hosts: 1,
        nat: Nat::Masquerade,
        mapping: Mapping::None,
    };
    let net = Internet::new(1, &[home, home]);
    let (w, users) = world(net.public(0), &["alice", "bob"]);
    let seeder = mount(&w, &net, net.home_host(0, 0), &users[0]);
    let reader = mount(&w, &net, net.home_host(1, 0), &users[1]);
    let data = share(&w, &seeder, &reader, "h.bin", 32 * MIB);
    let got = std::fs::read(reader.path("g/h.bin")).expect("read through the mount");
    assert!(
        got == data,
        "wrong bytes\nreader:\n{}\nseeder:\n{}",
        reader.log(),
        seeder.log()
    );
    let paths = reader.xattr("g/h.bin", "user.fileshare.paths");
    assert!(
        paths.contains("punched"),
        "{paths}\nreader:\n{}\nseeder:\n{}",
        reader.log(),
        seeder.log()
    );
    let st = status(&w, net.home_host(1, 0), &users[1]);
    assert!(st.contains("(punched)"), "{st}");
}

/// A seeder behind a router whose real `miniupnpd` offers `mapping`: her
/// daemon maps a port by one of `by`, the reader dials her router's
/// public address through it and reads her file byte for byte; her
/// unmount removes the router's forward.
fn seeder_maps_a_port_and_is_read_directly(mapping: Mapping, by: &[&str]) {
    let net = Internet::new(
        2,
        &[HomeSpec {
            hosts: 1,
            nat: Nat::Masquerade,
            mapping,
        }],
    );
    let (w, users) = world(net.public(0), &["alice", "bob"]);
    let mut seeder = mount(&w, &net, net.home_host(0, 0), &users[0]);
    let reader = mount(&w, &net, net.public(1), &users[1]);
    // Offered at the router's public address, through the mapped port.
    let mapped = format!("reached    reachable at {}:", net.home(0).router.addr);
    let labels: Vec<String> = by.iter().map(|p| format!("(port mapped by {p})")).collect();
    let mut last = String::new();
    let found = (0..100).any(|_| {
        last = status(&w, net.home_host(0, 0), &users[0]);
        let found = last.contains(&mapped) && labels.iter().any(|l| last.contains(l));
        if !found {
            std::thread::sleep(Duration::from_millis(200));
        }
        found
    });
    assert!(
        found,
        "no port mapping by {by:?}:\n{last}\n{}\nminiupnpd:\n{}",
        seeder.log(),
        net.upnp_log(0)
    );
    let data = share(&w, &seeder, &reader, "m.bin", 8 * MIB);
    assert_eq!(data.len(), 8 * MIB);
    cmp(&w.path("m.bin"), &reader.path("g/m.bin"));
    let paths = reader.xattr("g/m.bin", "user.fileshare.paths");
    // Dialled at the router's public address, through the mapping.
    let direct = format!("{}:", net.home(0).router.addr);
    assert!(
        paths.contains(&direct) && paths.ends_with(" direct"),
        "{paths}"
    );
    // The router's forward of the mapped port goes with the unmount.
    let port = last
        .split(&mapped)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no mapped port in:\n{last}"));
    let forward = format!("dport {port} ");
    let router = &net.home(0).router;
    let forwards = || {
        let out = router
            .command("nft")
            .args(["list", "chain", "inet", "nat", "prerouting_miniupnpd"])
            .output()
            .expect("nft list chain");
        assert!(out.status.success(), "nft: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = forwards();
    assert!(before.contains(&forward), "no {forward:?} in\n{before}");
    seeder.unmount();
    wait_for(
        "the router's forward removed",
        Duration::from_secs(10),
        || (!forwards().contains(&forward)).then_some(()),
    );
}

#[test]
fn a_seeder_behind_a_upnp_router_maps_a_port_and_is_read_directly() {
    seeder_maps_a_port_and_is_read_directly(Mapping::Upnp, &["UPnP"]);
}

#[test]
fn a_seeder_behind_a_pcp_or_nat_pmp_router_maps_a_port_and_is_read_directly() {
    // UPnP is off: only PCP (or NAT-PMP, if PCP is refused) can map.
    seeder_maps_a_port_and_is_read_directly(Mapping::PcpPmp, &["PCP", "NAT-PMP"]);
}

#[test]
fn ipv6_hosts_behind_stateful_firewalls_punch_a_path() {
    // IPv6 only, nothing translated: each home is closed by its router's
    // firewall alone. The daemons run on their default listen address.
    let net = Internet6::new(1, &[1, 1]);
    let (w, users) = world(net.public(0), &["alice", "bob"]);
    let on = |host: &Host, user: &User| {
        let m = w.mount_on(host, user, &[]);
        net.track_mount(&m.mountpoint);
        m
    };
    let (alice, bob) = (net.home_host(0, 0), net.home_host(1, 0));
    let seeder = on(alice, &users[0]);
    let reader = on(bob, &users[1]);
    // The tracker sees each at its own address, and cannot dial it.
    for (host, user) in [(alice, &users[0]), (bob, &users[1])] {
        let closed = format!("not reachable at [{}]:", host.addr);
        await_status(&w, host, user, &closed);
    }
    share(&w, &seeder, &reader, "v6.bin", 32 * MIB);
    cmp(&w.path("v6.bin"), &reader.path("g/v6.bin"));
    let paths = reader.xattr("g/v6.bin", "user.fileshare.paths");
    let punched = format!("[{}]:", alice.addr);
    assert!(
        paths.contains(&punched) && paths.ends_with(" punched"),
        "{paths}\nreader:\n{}\nseeder:\n{}",
        reader.log(),
        seeder.log()
    );
    let st = status(&w, bob, &users[1]);
    assert!(st.contains("(punched)"), "{st}");
}

#[test]
fn a_daemon_on_the_default_listen_address_takes_both_families_on_loopback() {
    // The tracker takes IPv6 on its own port too; alice's daemon reaches
    // it there, so it is offered at [::1], and bob reads from it there.
    let six = reserve_port();
    let six = format!("[::1]:{}", six.get());
    let w = World::with_tracker_args(&["--listen", &six]);
    let (w, users) = w.with_users(&["alice", "bob"]);
    let trackers6 = w.path("trackers6.txt");
    std::fs::write(&trackers6, format!("{six}\n")).expect("write trackers file");
    let seeder = Mount::start(
        &w.fsd,
        &users[0].home,
        &trackers6,
        &w.path("mnt-alice"),
        &["--listen", "[::]:0"],
    );
    let reader = w.mount(&users[1], &[]);
    let at: SocketAddr = seeder.listen.parse().expect("the seeder's address");
    assert!(at.ip().is_ipv6(), "offered at {at}, not at [::1]");
    for ip in ["::1", "127.0.0.1"] {
        let to = SocketAddr::new(ip.parse().unwrap(), at.port());
        let ok = TcpStream::connect_timeout(&to, Duration::from_secs(2));
        assert!(ok.is_ok(), "the daemon does not accept on {to}: {ok:?}");
    }
    share(&w, &seeder, &reader, "both.bin", 4 * MIB);
    cmp(&w.path("both.bin"), &reader.path("g/both.bin"));
    let paths = reader.xattr("g/both.bin", "user.fileshare.paths");
    assert_eq!(paths, format!("{at} direct"), "{}", reader.log());
}

#[test]
fn a_relayed_reader_moves_to_a_direct_path_once_the_seeder_can_be_dialled() {
    // Random ports on both routers, so the read starts on the relay; a
    // slow relay keeps it going while alice's router starts forwarding.
    let home = HomeSpec {
        hosts: 1,
        nat: Nat::Random,
        mapping: Mapping::None,
    };
    let net = Internet::new(1, &[home, home]);
    let w = World::on_with_args(net.public(0), &["--relay-rate", "1000000"]);
    let (w, users) = w.with_users(&["alice", "bob"]);
    let seeder = mount(&w, &net, net.home_host(0, 0), &users[0]);
    let reader = mount(&w, &net, net.home_host(1, 0), &users[1]);
    let data = share(&w, &seeder, &reader, "m.bin", 32 * MIB);
    let file = reader.path("g/m.bin");
    let reading = std::thread::spawn(move || std::fs::read(file));
    wait_for("a relayed link", Duration::from_secs(30), || {
        let paths = xattr(&reader.path("g/m.bin"), "user.fileshare.paths").ok()?;
        paths.ends_with(" relayed").then_some(())
    });
    // alice's router forwards her daemon's port from now on. The tracker
    // still lists her as unreachable (its probe stands for minutes).
    let inside = net.home_host(0, 0).addr;
    let port: SocketAddr = seeder.listen.parse().expect("the seeder's address");
    let port = port.port();
    net.router_nft(
        0,
        &format!(
            "table ip forward_in {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority -101;\n\
             \t\tiifname \"eth0\" tcp dport {port} dnat to {inside}\n\
             \t}}\n\
             }}\n\
             add rule inet filter miniupnpd ip daddr {inside} tcp dport {port} accept\n"
        ),
    );
    let got = reading.join().expect("the reading thread").expect("read");
    assert!(
        got == data,
        "wrong bytes\nreader:\n{}\nseeder:\n{}",
        reader.log(),
        seeder.log()
    );
    let paths = reader.xattr("g/m.bin", "user.fileshare.paths");
    let direct = format!("{}:{port} direct", net.home(0).router.addr);
    assert_eq!(paths, direct, "reader:\n{}", reader.log());
    assert!(
        reader
            .log()
            .contains("moved from the relay to a direct path"),
        "{}",
        reader.log()
    );
}
