//! Daemons behind home routers that translate addresses (nftables
//! masquerade) and drop connections from outside, with no port
//! forwarding: the tracker and a public user on the public bridge, users
//! in homes of their own (see `fileshare_tests::netns::nat`). Every read
//! is checked byte for byte, and the path it took is read back from
//! `getfattr` and `fsd status`.

use fileshare_tests::netns::nat::{HomeSpec, Internet, Nat};
use fileshare_tests::netns::Host;
use std::time::Duration;

#[test]
fn home_routers_let_connections_out_and_none_in() {
    let net = Internet::new(
        2,
        &[HomeSpec {
            hosts: 1,
            nat: Nat::Masquerade,
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
    assert_eq!(seen.ip(), std::net::IpAddr::V4(net.home(0).router.addr));
    assert!(
        !connects(&public, (net.home(0).router.addr, in_port).into()),
        "nothing forwards the router's port to the home"
    );
    assert!(
        !connects(&public, (home.addr, in_port).into()),
        "the home's private address must not be routed from outside"
    );
}
