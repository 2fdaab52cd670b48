//! A routed "internet" of network namespaces for the reachability tests:
//! one public bridge (`203.0.113.0/24`, a documentation network used only
//! inside these namespaces) with the public hosts on it, and per home a
//! router namespace with a public side on that bridge and a private bridge
//! (`192.168.K.0/24`, K from 1) with the home's hosts behind it.
//!
//! Each router forwards between its two sides through an nftables
//! stateful firewall, as a home router does: connections opened from the
//! home pass, and their replies; nothing opened from outside does, and
//! what comes from outside to the router itself is dropped unanswered. With
//! [`Nat::Masquerade`] it also rewrites the home's addresses to its public
//! one (Linux keeps the source port where it is free, which is what lets
//! two homes punch a path to each other); [`Nat::Random`] gives every
//! connection a random public port, so no punched path can be predicted;
//! [`Nat::None`] routes the home's own addresses (the public hosts get a
//! route to it), leaving only the firewall in the way.
//!
//! Processes run as on a [`super::Lan`] ([`Host::command`]): only the
//! network namespace changes, so FUSE mounts are seen outside. Clean-up is
//! the LAN's: every namespace and root-namespace link is named under one
//! prefix of this process, killed and removed on drop, on a signal, or by
//! the next topology of a later process if this one was killed outright.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); fails loudly without.

use super::{new_prefix, register, require_netns, run, track_mount_under, unregister, Host, Owned};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

/// How a home router treats its home's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Routed as they are; only the stateful firewall stands in the way.
    None,
    /// Rewritten to the router's public address, keeping source ports
    /// where free (`nft ... masquerade`).
    Masquerade,
    /// Rewritten with a random public port per connection
    /// (`masquerade random`): a peer outside cannot predict the port a
    /// connection will leave from.
    Random,
}

/// One home: how many hosts sit behind its router, its NAT, and the port
/// mappings the router offers.
#[derive(Debug, Clone, Copy)]
pub struct HomeSpec {
    pub hosts: usize,
    pub nat: Nat,
    pub mapping: Mapping,
}

/// The port mappings a home router offers, through a real `miniupnpd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// None: no `miniupnpd`.
    None,
    /// UPnP IGD only (PCP and NAT-PMP disabled).
    Upnp,
    /// PCP and NAT-PMP only (UPnP IGD disabled).
    PcpPmp,
}

/// A home as built: its router and its hosts.
#[derive(Debug, Clone)]
pub struct Home {
    /// The router's namespace; its public side is `eth0`, its private
    /// bridge `lan`.
    pub router: Host,
    /// The router's address on the private bridge (the hosts' gateway).
    pub gateway: Ipv4Addr,
    pub hosts: Vec<Host>,
    pub nat: Nat,
}

/// The public bridge, its hosts and the homes; everything is removed on
/// drop.
pub struct Internet {
    owned: Owned,
    public: Vec<Host>,
    homes: Vec<Home>,
    /// The routers' `miniupnpd` processes, ended by PID on drop.
    daemons: Vec<std::process::Child>,
    /// Their configurations and logs.
    dir: tempfile::TempDir,
}

/// The public network's first three octets.
pub const PUBLIC: [u8; 3] = [203, 0, 113];

/// Public host `i`'s address.
fn public_addr(i: usize) -> Ipv4Addr {
    let last = u8::try_from(i + 1).expect("at most 99 public hosts");
    Ipv4Addr::new(PUBLIC[0], PUBLIC[1], PUBLIC[2], last)
}

/// Router `k`'s public address.
fn router_addr(k: usize) -> Ipv4Addr {
    let last = u8::try_from(101 + k).expect("at most 150 homes");
    Ipv4Addr::new(PUBLIC[0], PUBLIC[1], PUBLIC[2], last)
}

/// Home `k`'s private network, `192.168.(k+1).0/24`: the router is `.1`,
/// host `j` is `.(j+2)`.
fn home_addr(k: usize, last: usize) -> Ipv4Addr {
    let net = u8::try_from(k + 1).expect("home number");
    Ipv4Addr::new(192, 168, net, u8::try_from(last).expect("host number"))
}

/// Fails loudly without `nft`.
pub(super) fn require_nft() {
    let ok = Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`nft` is missing: the NAT tests need nftables (scripts/test.sh installs it)"
    );
}

/// Loads an nftables ruleset inside namespace `ns`.
pub(super) fn nft(ns: &str, rules: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run nft: {e} (install nftables)"));
    child
        .stdin
        .take()
        .expect("nft's stdin")
        .write_all(rules.as_bytes())
        .expect("write the ruleset to nft");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft in {ns} refused the ruleset: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A home router's ruleset: a stateful firewall between the public side
/// and the home, and the NAT asked for. Tables and chains are named as
/// `miniupnpd` expects (`inet filter` with a `miniupnpd` chain, `inet nat`
/// with `prerouting_miniupnpd` and `postrouting_miniupnpd`), so a router
/// with UPnP adds its forwards there.
pub(super) fn router_rules(nat: Nat) -> String {
    let masquerade = match nat {
        Nat::None => "",
        Nat::Masquerade => "\t\toifname \"eth0\" masquerade\n",
        Nat::Random => "\t\toifname \"eth0\" masquerade random\n",
    };
    format!(
        "table inet filter {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tiifname \"eth0\" ct state new drop\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"lan\" accept\n\
         \t\tjump miniupnpd\n\
         \t}}\n\
         \tchain miniupnpd {{\n\
         \t}}\n\
         }}\n\
         table inet nat {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority -100;\n\
         \t\tjump prerouting_miniupnpd\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100;\n\
         {masquerade}\
         \t\tjump postrouting_miniupnpd\n\
         \t}}\n\
         \tchain prerouting_miniupnpd {{\n\
         \t}}\n\
         \tchain postrouting_miniupnpd {{\n\
         \t}}\n\
         }}\n"
    )
}

/// `miniupnpd`'s configuration for home `k`: UPnP IGD if `upnp`, else PCP
/// and NAT-PMP, on the private bridge, forwards only to the home's own hosts. It refuses
/// documentation and private addresses on its public side, so it is told
/// a public-looking one (`11.0.0.(101+k)`, a label only: its forwards
/// apply to whatever reaches the router's public interface).
fn upnp_conf(k: usize, dir: &Path, upnp: bool) -> String {
    let net = home_addr(k, 0);
    format!(
        "ext_ifname=eth0\n\
         ext_ip=11.0.0.{}\n\
         listening_ip=lan\n\
         http_port=0\n\
         enable_natpmp={}\n\
         enable_upnp={}\n\
         secure_mode=yes\n\
         system_uptime=yes\n\
         ipv6_disable=yes\n\
         uuid=3a9f1e4c-1b2d-4c5e-8f70-{k:012}\n\
         upnp_table_name=filter\n\
         upnp_nat_table_name=nat\n\
         lease_file={}\n\
         allow 1024-65535 {net}/24 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        101 + k,
        if upnp { "no" } else { "yes" },
        if upnp { "yes" } else { "no" },
        dir.join("upnp.leases").display(),
    )
}

impl Internet {
    /// `public` hosts on the public bridge and one home per spec. Public
    /// host `i` is `203.0.113.(i+1)`; home `k`'s router is
    /// `203.0.113.(101+k)` outside and `192.168.(k+1).1` inside, its host
    /// `j` `192.168.(k+1).(j+2)`.
    pub fn new(public: usize, homes: &[HomeSpec]) -> Internet {
        assert!((1..=99).contains(&public), "1 to 99 public hosts");
        assert!(homes.len() <= 150, "at most 150 homes");
        require_netns();
        require_nft();
        super::install_signal_watch();
        super::remove_stale();
        let prefix = new_prefix("n");
        let mut net = Internet {
            owned: Owned {
                prefix: prefix.clone(),
                ..Default::default()
            },
            public: Vec::new(),
            homes: Vec::new(),
            daemons: Vec::new(),
            dir: tempfile::Builder::new()
                .prefix("fileshare-nat-")
                .tempdir()
                .expect("temp dir"),
        };
        // Registered before anything exists, then again as each part is
        // made, so an interruption removes what was built.
        register(&net.owned);
        let br = format!("{prefix}pb");
        net.add_link(&br);
        run(&["ip", "link", "add", &br, "type", "bridge"]);
        run(&["ip", "link", "set", &br, "up"]);
        for i in 0..public {
            let ns = format!("{prefix}-p{i}");
            let veth = format!("{prefix}p{i}");
            net.add_ns(&ns);
            net.add_link(&veth);
            let addr = public_addr(i);
            plug(&ns, &veth, &br, "eth0", &format!("{addr}/24"));
            net.public.push(Host {
                ns,
                addr: addr.into(),
            });
        }
        for (k, spec) in homes.iter().enumerate() {
            let home = net.build_home(&br, k, *spec);
            net.homes.push(home);
        }
        // Homes without NAT are routed: every public host and every other
        // router learns the way in (the firewall still decides).
        let routed: Vec<(usize, Ipv4Addr)> = (net.homes.iter().enumerate())
            .filter(|(_, h)| h.nat == Nat::None)
            .map(|(k, _)| (k, router_addr(k)))
            .collect();
        for (k, via) in routed {
            let dest = format!("{}/24", home_addr(k, 0));
            let others = (net.public.iter().map(|h| h.ns.clone()))
                .chain(
                    (net.homes.iter().enumerate())
                        .filter(|(j, _)| *j != k)
                        .map(|(_, h)| h.router.ns.clone()),
                )
                .collect::<Vec<_>>();
            for ns in others {
                run(&[
                    "ip",
                    "-n",
                    &ns,
                    "route",
                    "add",
                    &dest,
                    "via",
                    &via.to_string(),
                ]);
            }
        }
        net
    }

    fn add_ns(&mut self, ns: &str) {
        self.owned.add_ns(ns);
    }

    fn add_link(&mut self, link: &str) {
        self.owned.add_link(link);
    }

    /// Home `k`: its router on the public bridge `br`, a private bridge
    /// inside the router's namespace, and the hosts on it.
    fn build_home(&mut self, br: &str, k: usize, spec: HomeSpec) -> Home {
        assert!((1..=200).contains(&spec.hosts), "1 to 200 hosts per home");
        let prefix = self.owned.prefix.clone();
        let rns = format!("{prefix}-r{k}");
        let rveth = format!("{prefix}r{k}");
        self.add_ns(&rns);
        self.add_link(&rveth);
        let outside = router_addr(k);
        plug(&rns, &rveth, br, "eth0", &format!("{outside}/24"));
        // The private bridge lives in the router's namespace: it goes
        // with it.
        run(&["ip", "-n", &rns, "link", "add", "lan", "type", "bridge"]);
        let gateway = home_addr(k, 1);
        run(&[
            "ip",
            "-n",
            &rns,
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            "lan",
        ]);
        run(&["ip", "-n", &rns, "link", "set", "lan", "up"]);
        sysctl(&rns, "net.ipv4.ip_forward", "1");
        nft(&rns, &router_rules(spec.nat));
        let router = Host {
            ns: rns.clone(),
            addr: outside.into(),
        };
        if spec.mapping != Mapping::None {
            self.start_upnp(k, &router, spec.mapping == Mapping::Upnp);
        }
        let mut hosts = Vec::new();
        for j in 0..spec.hosts {
            let ns = format!("{prefix}-r{k}h{j}");
            self.add_ns(&ns);
            let addr = home_addr(k, j + 2);
            // The veth's router end is made inside the router's namespace
            // under a short name of its own, then put on the bridge.
            let end = format!("h{j}");
            run(&[
                "ip", "-n", &rns, "link", "add", &end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            run(&["ip", "-n", &rns, "link", "set", &end, "master", "lan", "up"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ]);
            hosts.push(Host {
                ns,
                addr: addr.into(),
            });
        }
        Home {
            router,
            gateway,
            hosts,
            nat: spec.nat,
        }
    }

    /// Starts `miniupnpd` in router `k`'s namespace and waits until it
    /// listens.
    fn start_upnp(&mut self, k: usize, router: &Host, upnp: bool) {
        let dir = self.dir.path().join(format!("upnp-{k}"));
        std::fs::create_dir_all(&dir).expect("create the miniupnpd directory");
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(&conf, upnp_conf(k, &dir, upnp)).expect("write miniupnpd.conf");
        let log_path = dir.join("miniupnpd.log");
        let log = std::fs::File::create(&log_path).expect("create miniupnpd.log");
        let child = router
            .command("miniupnpd")
            .arg("-f")
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run miniupnpd: {e} (install miniupnpd)"));
        self.daemons.push(child);
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        crate::wait_for(
            "miniupnpd to listen",
            std::time::Duration::from_secs(10),
            || {
                let text = log();
                assert!(
                    !text.contains("impossible") && !text.contains("Error"),
                    "miniupnpd cannot map ports here:\n{text}"
                );
                let ready = if upnp {
                    "HTTP listening"
                } else {
                    "Listening for NAT-PMP"
                };
                text.contains(ready).then_some(())
            },
        );
    }

    /// What home `k`'s `miniupnpd` logged, for failure messages.
    pub fn upnp_log(&self, k: usize) -> String {
        let path = self.dir.path().join(format!("upnp-{k}/miniupnpd.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Public host `i`.
    pub fn public(&self, i: usize) -> &Host {
        &self.public[i]
    }

    /// Home `k`.
    pub fn home(&self, k: usize) -> &Home {
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

    /// Adds an nftables ruleset to home `k`'s router, e.g. to drop what a
    /// test must see blocked.
    pub fn router_nft(&self, k: usize, rules: &str) {
        nft(&self.homes[k].router.ns, rules);
    }
}

/// A veth from bridge `br` (root namespace end `veth`) into namespace
/// `ns` as `dev`, with `cidr`, both ends up.
/// An IPv6 address is usable at once (`nodad`: no duplicate address
/// detection on these private links).
pub(super) fn plug(ns: &str, veth: &str, br: &str, dev: &str, cidr: &str) {
    run(&[
        "ip", "link", "add", veth, "type", "veth", "peer", "name", dev, "netns", ns,
    ]);
    run(&["ip", "link", "set", veth, "master", br, "up"]);
    if cidr.contains(':') {
        run(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev, "nodad"]);
    } else {
        run(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev]);
    }
    run(&["ip", "-n", ns, "link", "set", dev, "up"]);
}

/// Sets a sysctl inside namespace `ns` (`/proc/sys/net` is per namespace).
pub(super) fn sysctl(ns: &str, key: &str, value: &str) {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-q",
        "-w",
        &format!("{key}={value}"),
    ]);
}

impl Drop for Internet {
    fn drop(&mut self) {
        for c in &mut self.daemons {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.owned.remove();
        unregister(&self.owned.prefix);
    }
}
