//! The IPv6 counterpart of [`super::nat`]: hosts with IPv6 only. One
//! public bridge (`fd00:0:113::/64`) with the public hosts on it, and per
//! home a router namespace with a public side on that bridge and a private
//! bridge (`fd00:0:K::/64`, K from 1) with the home's hosts behind it.
//! These are unique local addresses, used only inside these namespaces.
//!
//! Nothing translates addresses, as in an IPv6 home: every public host and
//! every other router has a route to each home. What keeps the homes
//! closed is the router's nftables stateful firewall, the same as
//! [`super::nat`]'s ([`super::nat::Nat::None`]): connections opened from
//! the home pass, and their replies; nothing opened from outside does.
//!
//! Clean-up as for [`super::nat::Internet`]. Needs root, `ip` and `nft`.

use super::nat::{nft, plug, require_nft, router_rules, sysctl, Nat};
use super::{new_prefix, register, require_netns, run, track_mount_under, unregister, Host, Owned};
use std::net::Ipv6Addr;
use std::path::Path;

/// A home as built: its router and its hosts.
#[derive(Debug, Clone)]
pub struct Home6 {
    /// The router's namespace; its public side is `eth0`, its private
    /// bridge `lan`.
    pub router: Host,
    pub hosts: Vec<Host>,
}

/// The public bridge, its hosts and the homes; everything is removed on
/// drop.
pub struct Internet6 {
    owned: Owned,
    public: Vec<Host>,
    homes: Vec<Home6>,
}

/// Public host `i`'s address, `fd00:0:113::(i+1)`.
fn public_addr(i: usize) -> Ipv6Addr {
    let last = u16::try_from(i + 1).expect("public host number");
    Ipv6Addr::new(0xfd00, 0, 0x113, 0, 0, 0, 0, last)
}

/// Router `k`'s public address, `fd00:0:113::(101+k)` (hexadecimal).
fn router_addr(k: usize) -> Ipv6Addr {
    let last = u16::try_from(0x101 + k).expect("home number");
    Ipv6Addr::new(0xfd00, 0, 0x113, 0, 0, 0, 0, last)
}

/// Home `k`'s network, `fd00:0:(k+1)::/64`: the router is `::1`, host `j`
/// is `::(j+2)`.
fn home_addr(k: usize, last: usize) -> Ipv6Addr {
    let net = u16::try_from(k + 1).expect("home number");
    let last = u16::try_from(last).expect("host number");
    Ipv6Addr::new(0xfd00, 0, net, 0, 0, 0, 0, last)
}

impl Internet6 {
    /// `public` hosts on the public bridge and `homes` homes of `hosts`
    /// hosts each.
    pub fn new(public: usize, homes: &[usize]) -> Internet6 {
        assert!((1..=99).contains(&public), "1 to 99 public hosts");
        assert!(homes.len() <= 150, "at most 150 homes");
        require_netns();
        require_nft();
        super::install_signal_watch();
        super::remove_stale();
        let prefix = new_prefix("s");
        let mut net = Internet6 {
            owned: Owned {
                prefix: prefix.clone(),
                ..Default::default()
            },
            public: Vec::new(),
            homes: Vec::new(),
        };
        register(&net.owned);
        let br = format!("{prefix}pb");
        net.owned.add_link(&br);
        run(&["ip", "link", "add", &br, "type", "bridge"]);
        run(&["ip", "link", "set", &br, "up"]);
        for i in 0..public {
            let ns = format!("{prefix}-p{i}");
            let veth = format!("{prefix}p{i}");
            net.owned.add_ns(&ns);
            net.owned.add_link(&veth);
            let addr = public_addr(i);
            plug(&ns, &veth, &br, "eth0", &format!("{addr}/64"));
            net.public.push(Host {
                ns,
                addr: addr.into(),
            });
        }
        for (k, &hosts) in homes.iter().enumerate() {
            let home = net.build_home(&br, k, hosts);
            net.homes.push(home);
        }
        // Every public host and every other router learns the way into
        // each home (the home's firewall still decides).
        for k in 0..net.homes.len() {
            let dest = format!("{}/64", home_addr(k, 0));
            let via = router_addr(k).to_string();
            let others = (net.public.iter().map(|h| h.ns.clone()))
                .chain(
                    (net.homes.iter().enumerate())
                        .filter(|(j, _)| *j != k)
                        .map(|(_, h)| h.router.ns.clone()),
                )
                .collect::<Vec<_>>();
            for ns in others {
                run(&["ip", "-n", &ns, "-6", "route", "add", &dest, "via", &via]);
            }
        }
        net
    }

    /// Home `k`: its router on the public bridge `br`, a private bridge
    /// inside the router's namespace, and `count` hosts on it.
    fn build_home(&mut self, br: &str, k: usize, count: usize) -> Home6 {
        assert!((1..=200).contains(&count), "1 to 200 hosts per home");
        let prefix = self.owned.prefix.clone();
        let rns = format!("{prefix}-r{k}");
        let rveth = format!("{prefix}r{k}");
        self.owned.add_ns(&rns);
        self.owned.add_link(&rveth);
        let outside = router_addr(k);
        plug(&rns, &rveth, br, "eth0", &format!("{outside}/64"));
        run(&["ip", "-n", &rns, "link", "add", "lan", "type", "bridge"]);
        let gateway = home_addr(k, 1);
        let cidr = format!("{gateway}/64");
        run(&[
            "ip", "-n", &rns, "addr", "add", &cidr, "dev", "lan", "nodad",
        ]);
        run(&["ip", "-n", &rns, "link", "set", "lan", "up"]);
        sysctl(&rns, "net.ipv6.conf.all.forwarding", "1");
        nft(&rns, &router_rules(Nat::None));
        let mut hosts = Vec::new();
        for j in 0..count {
            let ns = format!("{prefix}-r{k}h{j}");
            self.owned.add_ns(&ns);
            let addr = home_addr(k, j + 2);
            let end = format!("h{j}");
            run(&[
                "ip", "-n", &rns, "link", "add", &end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            run(&["ip", "-n", &rns, "link", "set", &end, "master", "lan", "up"]);
            let cidr = format!("{addr}/64");
            run(&[
                "ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0", "nodad",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            let via = gateway.to_string();
            run(&[
                "ip", "-n", &ns, "-6", "route", "add", "default", "via", &via,
            ]);
            hosts.push(Host {
                ns,
                addr: addr.into(),
            });
        }
        Home6 {
            router: Host {
                ns: rns,
                addr: outside.into(),
            },
            hosts,
        }
    }

    /// Public host `i`.
    pub fn public(&self, i: usize) -> &Host {
        &self.public[i]
    }

    /// Home `k`.
    pub fn home(&self, k: usize) -> &Home6 {
        &self.homes[k]
    }

    /// Host `j` of home `k`.
    pub fn home_host(&self, k: usize, j: usize) -> &Host {
        &self.homes[k].hosts[j]
    }

    /// Unmounted lazily if still mounted when the topology goes.
    pub fn track_mount(&self, mountpoint: &Path) {
        track_mount_under(&self.owned.prefix, mountpoint);
    }
}

impl Drop for Internet6 {
    fn drop(&mut self) {
        self.owned.remove();
        unregister(&self.owned.prefix);
    }
}
