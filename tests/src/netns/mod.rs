//! A small shaped LAN of network namespaces for tests and benchmarks: one
//! bridge, and per host a namespace with a veth on the bridge, loopback up,
//! an address in `10.213.0.0/24` (used only inside these namespaces) and
//! optionally its uplink shaped by a `tbf` qdisc on its side of the veth
//! (the host's egress). Processes run inside the host's network namespace
//! only ([`Host::command`]); the mount namespace stays the machine's, so
//! FUSE mounts made inside are seen outside.
//!
//! Every host knows every other host's link address from the start
//! (permanent neighbour entries): no ARP. The kernel keeps the neighbours
//! of all namespaces in one table whose learned entries are capped
//! machine-wide (`net.ipv4.neigh.default.gc_thresh3`, 1024 by default);
//! 50 hosts that all talk to each other need 2,450, and past the cap a
//! packet to a host not yet resolved is dropped before it leaves (the
//! kernel logs "neighbor table overflow"), so dials between the hosts that
//! came last timed out however long they waited. Permanent entries are
//! exempt from the cap. A peer on the internet has one neighbour, its
//! router, so this removes an artifact of putting every peer on one
//! bridge; it also keeps ARP out of the shaped uplink queues.
//!
//! Cleaning up: dropping the [`Lan`] kills every process left in its
//! namespaces (by PID), lazily unmounts the mount points registered with it
//! ([`Lan::track_mount`], listed in a file of its own under the temporary
//! directory), and deletes the veths, the namespaces and the bridge. An interrupted
//! process (SIGINT, SIGTERM, SIGHUP) does the same before it exits, from a
//! watcher thread woken by the signal handler; and every new LAN first
//! removes what a previous process killed outright (SIGKILL) left behind:
//! names carry the creating process's id, so only the leftovers of dead
//! processes are touched.
//!
//! Needs root, `ip` and `tc` (iproute2); fails loudly without them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

pub mod nat;
pub mod nat6;

/// What every name of this harness starts with (interfaces and namespaces).
const TAG: &str = "fsn";

/// The network of every LAN: `10.213.0.0/24`, hosts from `.1`.
pub const SUBNET: [u8; 3] = [10, 213, 0];

/// An uplink's shape: `tc qdisc add dev eth0 root tbf rate R burst B
/// latency L` on the host's side.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Bytes per second on the wire (headers included).
    pub rate: u64,
    /// Bytes sent at line rate before the rate applies.
    pub burst: u64,
    /// The longest a packet may wait in the queue (its length follows).
    pub latency: Duration,
}

impl Shape {
    /// `rate` bytes per second, with a burst of 64 KiB and a queue of 200 ms.
    pub fn rate(rate: u64) -> Shape {
        Shape {
            rate,
            burst: 64 * 1024,
            latency: Duration::from_millis(200),
        }
    }
}

/// One host of a [`Lan`]: a network namespace with one interface, `eth0`.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (`ip netns exec NAME`).
    pub ns: String,
    /// Its address: IPv4, or IPv6 on the IPv6-only topology
    /// ([`nat6`]).
    pub addr: std::net::IpAddr,
}

impl Host {
    /// `program` run inside this host's network namespace. Like `ip netns
    /// exec NAME program`, except that only the network namespace changes:
    /// `ip netns exec` also gives the program a mount namespace of its own,
    /// where a FUSE mount would be invisible to everyone else.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let path = Path::new("/run/netns").join(&self.ns);
        let ns =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut c = Command::new(program);
        // SAFETY: between fork and exec the hook only calls setns(2), which
        // is async-signal-safe, on a descriptor the closure owns (opened
        // close-on-exec, so the program does not inherit it).
        unsafe {
            c.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    /// Runs `f` on a thread inside this host's namespace (only the network
    /// namespace of that thread changes), e.g. to connect to a server here.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = Path::new("/run/netns").join(&self.ns);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            // SAFETY: setns on a descriptor we own; it changes only this
            // thread's network namespace.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("thread inside the namespace")
    }

    /// Whether something accepts TCP connections at `port` on this host.
    pub fn accepts(&self, port: u16) -> bool {
        let addr = std::net::SocketAddr::new(self.addr, port);
        self.run_in(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
    }
}

/// A bridge and its hosts; everything is removed on drop.
pub struct Lan {
    prefix: String,
    hosts: Vec<Host>,
}

/// What the signal watcher must remove: every live LAN's prefix and hosts,
/// and every other topology's namespaces and links ([`Owned`]).
struct Live {
    lans: Vec<(String, usize)>,
    owned: Vec<Owned>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    lans: Vec::new(),
    owned: Vec::new(),
});

/// The namespaces and root-namespace links of a topology other than a
/// [`Lan`], named under `prefix` (so a killed process's leftovers are found
/// by [`remove_stale`] too), removed as a LAN's are.
#[derive(Debug, Clone, Default)]
struct Owned {
    prefix: String,
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Owned {
    /// A new namespace under this topology, loopback up; recorded before
    /// it exists, so an interruption removes it.
    fn add_ns(&mut self, ns: &str) {
        self.namespaces.push(ns.to_string());
        register(self);
        run(&["ip", "netns", "add", ns]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    /// Records a root-namespace link about to be made.
    fn add_link(&mut self, link: &str) {
        self.links.push(link.to_string());
        register(self);
    }

    fn remove(&self) {
        for ns in &self.namespaces {
            kill_inside(ns);
        }
        let list = state_dir().join(&self.prefix);
        unmount_listed(&list);
        let _ = std::fs::remove_file(list);
        for link in &self.links {
            quiet(&["ip", "link", "del", link]);
        }
        for ns in &self.namespaces {
            quiet(&["ip", "netns", "del", ns]);
        }
    }
}

/// Records (or updates) what a topology owns, for the signal watcher.
fn register(owned: &Owned) {
    let mut live = live();
    live.owned.retain(|o| o.prefix != owned.prefix);
    live.owned.push(owned.clone());
}

fn unregister(prefix: &str) {
    live().owned.retain(|o| o.prefix != prefix);
}

/// A fresh name prefix of this process: `fsn<pid>_<tag><n>`.
fn new_prefix(tag: &str) -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{TAG}{}_{tag}{}",
        base36(std::process::id()),
        base36(COUNT.fetch_add(1, Ordering::Relaxed))
    )
}

/// Unmounted lazily if still mounted when the topology named `prefix`
/// goes (or on a signal, or by the next one if this process is killed).
fn track_mount_under(prefix: &str, mountpoint: &Path) {
    use std::io::Write;
    let _ = std::fs::create_dir_all(state_dir());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir().join(prefix));
    if let Ok(mut f) = file {
        let _ = writeln!(f, "{}", mountpoint.display());
    }
}

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a command, panicking with its output if it fails.
fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (install iproute2)", args[0]));
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// [`run`] with `input` on the command's standard input.
fn run_with_input(args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (install iproute2)", args[0]));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("{}: writing its input: {e}", args.join(" ")));
    drop(stdin);
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Host `last`'s link address (`10.213.0.last`), locally administered;
/// each LAN is a bridge of its own, so LANs may share them.
fn mac_of(last: u8) -> String {
    format!("02:fd:00:00:00:{last:02x}")
}

/// Runs a command, ignoring failure (clean-up of what may be gone).
fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn output(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Fails loudly where the harness cannot work, instead of skipping.
pub fn require_netns() {
    for tool in ["ip", "tc"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "`{tool}` is missing: the network-namespace tests need iproute2 (scripts/test.sh installs it)"
        );
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the network-namespace tests need root (ip netns, tc)"
    );
}

fn base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// The process id a name of this harness was made by, if it is one.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TAG)?;
    let (pid, _) = rest.split_once('_')?;
    u32::from_str_radix(pid, 36).ok()
}

/// Whether a process lives (a zombie nobody reaped yet does not).
fn alive(pid: u32) -> bool {
    crate::daemon::alive(pid)
}

/// Where each live LAN lists its mount points (one file per LAN, named by
/// its prefix), for the clean-up of a process killed outright.
fn state_dir() -> PathBuf {
    std::env::temp_dir().join("fileshare-netns")
}

/// Removes the namespaces, interfaces and mounts left by processes that
/// died without cleaning up (SIGKILL).
fn remove_stale() {
    let me = std::process::id();
    let stale = |name: &str| owner(name).is_some_and(|pid| pid != me && !alive(pid));
    for entry in std::fs::read_dir(state_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            unmount_listed(&entry.path());
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for line in output(&["ip", "netns", "list"]).lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if stale(ns) {
            kill_inside(ns);
            quiet(&["ip", "netns", "del", ns]);
        }
    }
    for line in output(&["ip", "-o", "link", "show"]).lines() {
        // "7: NAME@if2: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if stale(name) {
            quiet(&["ip", "link", "del", name]);
        }
    }
}

/// Kills every process in namespace `ns` by PID (they are this harness's).
fn kill_inside(ns: &str) {
    for pid in output(&["ip", "netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = pid.parse::<libc::pid_t>() {
            // SAFETY: kill has no memory preconditions; the process runs in
            // a namespace this harness made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Lazily unmounts the mount points listed in `file` that are mounted.
fn unmount_listed(file: &Path) {
    let list = std::fs::read_to_string(file).unwrap_or_default();
    for m in list.lines().map(Path::new) {
        if crate::mount::is_mounted(m) {
            crate::mount::fusermount(m, true);
        }
    }
}

fn remove(prefix: &str, hosts: usize) {
    for i in 0..hosts {
        kill_inside(&ns_name(prefix, i));
    }
    let list = state_dir().join(prefix);
    unmount_listed(&list);
    let _ = std::fs::remove_file(list);
    for i in 0..hosts {
        quiet(&["ip", "link", "del", &veth_name(prefix, i)]);
        quiet(&["ip", "netns", "del", &ns_name(prefix, i)]);
    }
    quiet(&["ip", "link", "del", &format!("{prefix}br")]);
}

fn ns_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-h{i}")
}

fn veth_name(prefix: &str, i: usize) -> String {
    format!("{prefix}v{i}")
}

/// On SIGINT, SIGTERM or SIGHUP: remove every live LAN, then exit as the
/// signal would have. The handler only writes to a pipe; a thread does the
/// work.
fn install_signal_watch() {
    static ONCE: Once = Once::new();
    static PIPE_W: AtomicU32 = AtomicU32::new(u32::MAX);
    extern "C" fn on_signal(sig: libc::c_int) {
        let fd = PIPE_W.load(Ordering::Relaxed);
        if let Ok(fd) = libc::c_int::try_from(fd) {
            let b = u8::try_from(sig).unwrap_or(0);
            // SAFETY: write(2) is async-signal-safe; the buffer is local.
            unsafe { libc::write(fd, (&raw const b).cast(), 1) };
        }
    }
    ONCE.call_once(|| {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two descriptors.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return;
        }
        PIPE_W.store(u32::try_from(fds[1]).unwrap_or(u32::MAX), Ordering::Relaxed);
        let read_fd = fds[0];
        std::thread::spawn(move || {
            let mut b = 0u8;
            // SAFETY: reading one byte into a local from our own pipe.
            let n = unsafe { libc::read(read_fd, (&raw mut b).cast(), 1) };
            if n != 1 {
                return;
            }
            let (lans, owned) = {
                let live = live();
                (live.lans.clone(), live.owned.clone())
            };
            for (prefix, hosts) in lans {
                remove(&prefix, hosts);
            }
            for o in owned {
                o.remove();
            }
            eprintln!("interrupted: removed the test network namespaces");
            std::process::exit(128 + i32::from(b));
        });
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installs a handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

impl Lan {
    /// A bridge and `hosts` namespaces on it, none shaped yet; host `i`
    /// has address `10.213.0.(i+1)`.
    pub fn new(hosts: usize) -> Lan {
        assert!((1..=250).contains(&hosts), "1 to 250 hosts");
        require_netns();
        install_signal_watch();
        remove_stale();
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{TAG}{}_{}",
            base36(std::process::id()),
            base36(COUNT.fetch_add(1, Ordering::Relaxed))
        );
        // Registered first, so an interruption while building removes it.
        live().lans.push((prefix.clone(), hosts));
        // From here on, a panic drops the LAN and removes what exists.
        let mut lan = Lan {
            prefix: prefix.clone(),
            hosts: Vec::new(),
        };
        let br = format!("{prefix}br");
        run(&["ip", "link", "add", &br, "type", "bridge"]);
        run(&["ip", "link", "set", &br, "up"]);
        for i in 0..hosts {
            let (ns, veth) = (ns_name(&prefix, i), veth_name(&prefix, i));
            let last = u8::try_from(i + 1).expect("host number");
            let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last);
            run(&["ip", "netns", "add", &ns]);
            lan.hosts.push(Host {
                ns: ns.clone(),
                addr: addr.into(),
            });
            let mac = mac_of(last);
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "address",
                &mac, "netns", &ns,
            ]);
            run(&["ip", "link", "set", &veth, "master", &br, "up"]);
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
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        lan.know_neighbours();
        lan
    }

    /// Gives every host a permanent neighbour entry for every other host
    /// (see the module's documentation), one `ip -batch` per host.
    fn know_neighbours(&self) {
        for (i, host) in self.hosts.iter().enumerate() {
            let lines: String = (self.hosts.iter().enumerate())
                .filter(|&(j, _)| j != i)
                .map(|(j, other)| {
                    let last = u8::try_from(j + 1).expect("host number");
                    format!(
                        "neigh replace {} lladdr {} dev eth0 nud permanent\n",
                        other.addr,
                        mac_of(last)
                    )
                })
                .collect();
            if !lines.is_empty() {
                run_with_input(&["ip", "-n", &host.ns, "-batch", "-"], &lines);
            }
        }
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Shapes host `i`'s uplink (its egress) with `tbf`.
    pub fn shape(&self, i: usize, shape: Shape) {
        let ns = &self.hosts[i].ns;
        let rate = format!("{}bps", shape.rate);
        let burst = shape.burst.to_string();
        let latency = format!("{}ms", shape.latency.as_millis());
        run(&[
            "tc", "-n", ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate,
            "burst", &burst, "latency", &latency,
        ]);
    }

    /// Bytes waiting in host `i`'s shaped uplink queue now (`tc -s qdisc`'s
    /// backlog of the `tbf` on its `eth0`).
    pub fn backlog(&self, i: usize) -> u64 {
        let ns = &self.hosts[i].ns;
        let out = Command::new("tc")
            .args(["-n", ns, "-s", "qdisc", "show", "dev", "eth0"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run tc: {e} (install iproute2)"));
        let text = String::from_utf8_lossy(&out.stdout);
        let field = (text.split_whitespace())
            .skip_while(|w| *w != "backlog")
            .nth(1)
            .unwrap_or_else(|| panic!("no backlog in `tc -s qdisc show`: {text}"));
        // "460479b", "132Kb" or "1Mb": bytes with tc's binary prefixes.
        let digits = field.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let n: u64 = digits
            .parse()
            .unwrap_or_else(|_| panic!("backlog {field:?}"));
        match &field[digits.len()..] {
            "Kb" => n << 10,
            "Mb" => n << 20,
            _ => n,
        }
    }

    /// Cuts hosts `a` and `b` apart, both ways, as a router dropping their
    /// traffic would: each gets a blackhole route to the other's address.
    /// Every other path stays up. Undone by [`Lan::heal`] (and with the
    /// namespaces on drop).
    pub fn cut(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let dest = format!("{}/32", self.hosts[to].addr);
            let ns = &self.hosts[from].ns;
            run(&["ip", "-n", ns, "route", "add", "blackhole", &dest]);
        }
    }

    /// Joins hosts `a` and `b` again after [`Lan::cut`].
    pub fn heal(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let dest = format!("{}/32", self.hosts[to].addr);
            let ns = &self.hosts[from].ns;
            run(&["ip", "-n", ns, "route", "del", "blackhole", &dest]);
        }
    }

    /// Unmounted lazily if still mounted when the LAN goes (or on a
    /// signal, or by the next LAN if this process is killed outright).
    pub fn track_mount(&self, mountpoint: &Path) {
        track_mount_under(&self.prefix, mountpoint);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        remove(&self.prefix, self.hosts.len());
        live().lans.retain(|(p, _)| *p != self.prefix);
    }
}
