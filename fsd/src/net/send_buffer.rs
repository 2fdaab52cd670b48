//! Keeps this daemon's own uplink queue short: its peer sockets' send
//! buffers follow the queueing delay TCP measures on them.
//!
//! A home uplink is usually a slow link behind a deep buffer. TCP fills
//! that buffer: its congestion window grows until packets drop, which a
//! queue of a few hundred milliseconds delays. Everything else this host
//! sends waits behind it, and that includes the acknowledgements of what
//! it downloads: a reader that uploads to others slows down every peer
//! sending to it, and each piece takes that much longer per hop through a
//! swarm. BitTorrent met the same with uTP (LEDBAT, RFC 6817): uploads that
//! back off when the delay they cause grows.
//!
//! Here the kernel does the sending and the measuring: after each piece
//! written, the socket's smoothed round-trip time is compared with the
//! smallest it has seen (`TCP_INFO`); the difference is time spent in
//! queues. Above [`TARGET_DELAY`] the send buffer (`SO_SNDBUF`, which
//! bounds what TCP may have in flight) shrinks; well below it, a buffer
//! that was shrunk grows back. The queue is the uplink's, shared by every
//! peer socket, and a socket may write only a few pieces in a swarm's
//! life: so one size is kept for the whole daemon, fed by every write, and
//! set on each socket before it writes. While no delay shows, sockets keep
//! the kernel's own sizing, so a fast or long path loses nothing.
//!
//! A buffer never shrinks below what the uplink drains in a quarter of
//! [`TARGET_DELAY`] at its measured rate ([`floor`]). A writer refills its
//! socket each time the kernel has sent part of the buffer, and a daemon
//! starved of CPU (a build taking the cores) waits for one at each refill:
//! a buffer of a few milliseconds of the uplink runs dry meanwhile, and
//! the uplink idles. A quarter cannot make the queue the target forbids:
//! the kernel holds up to twice what is set, and the two pieces the upload
//! scheduler keeps in flight are written on two sockets, which together
//! hold at most the target's worth of bytes.

use std::os::fd::RawFd;
use std::time::Duration;

/// Queueing delay the uplink may add; more, and the buffer shrinks.
pub const TARGET_DELAY: Duration = Duration::from_millis(25);

/// The smallest send buffer set (the kernel doubles it for its own
/// bookkeeping): enough for a few dozen packets in flight.
pub const MIN_SNDBUF: u32 = 32 * 1024;

/// The largest send buffer set; the kernel caps it further at
/// `net.core.wmem_max`.
pub const MAX_SNDBUF: u32 = 4 * 1024 * 1024;

/// The smallest size the controller sets for an uplink measured at
/// `rate` bytes per second (0: not measured): a quarter of
/// [`TARGET_DELAY`] at that rate, within [`MIN_SNDBUF`] and
/// [`MAX_SNDBUF`].
// A float-to-int `as` saturates, which is what a byte count wants.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn floor(rate: f64) -> u32 {
    let bytes = rate * TARGET_DELAY.as_secs_f64() / 4.0;
    if !bytes.is_finite() {
        return MIN_SNDBUF;
    }
    (bytes as u32).clamp(MIN_SNDBUF, MAX_SNDBUF)
}

/// The send buffer size the queueing delay calls for.
#[derive(Debug, Default)]
pub struct Controller {
    /// The size to set with `SO_SNDBUF`; `None` while the kernel sizes it.
    set: Option<u32>,
}

impl Controller {
    /// The size to set after a write, given the socket's smoothed and
    /// smallest round-trip times, its current buffer (`SO_SNDBUF` as
    /// read back, which the kernel doubled; asked for only when a buffer
    /// the kernel sized must shrink) and the least size to set
    /// ([`floor`]); `None` to leave it as it is.
    ///
    /// More delay than the target halves the buffer (twice the target) or
    /// takes a quarter off; less than half of it grows a shrunk buffer by
    /// a quarter. In between it holds: the delay settles near the target.
    pub fn next(
        &mut self,
        srtt: Duration,
        min_rtt: Duration,
        current: impl FnOnce() -> u32,
        least: u32,
    ) -> Option<u32> {
        let delay = srtt.saturating_sub(min_rtt);
        if delay <= TARGET_DELAY && self.set.is_none() {
            return None;
        }
        let base = self.set.unwrap_or_else(|| current() / 2);
        let want = if delay > 2 * TARGET_DELAY {
            base / 2
        } else if delay > TARGET_DELAY {
            base - base / 4
        } else if delay < TARGET_DELAY / 2 && self.set.is_some() {
            base.saturating_add(base / 4)
        } else {
            return None;
        };
        let want = want.clamp(least.clamp(MIN_SNDBUF, MAX_SNDBUF), MAX_SNDBUF);
        if Some(want) == self.set {
            return None;
        }
        self.set = Some(want);
        Some(want)
    }
}

/// The daemon's peer sockets' send buffers: one [`Controller`] for all.
#[derive(Debug, Default)]
pub struct SendBuffers {
    controller: parking_lot::Mutex<Controller>,
}

/// What one socket's send buffer was set to (`None`: the kernel's sizing).
#[derive(Debug, Default)]
pub struct Socket {
    set: Option<u32>,
}

impl SendBuffers {
    /// Before a piece is written on `fd`: gives the socket the daemon's
    /// current size, if it was shrunk and the socket has another.
    pub fn before_write(&self, fd: RawFd, socket: &mut Socket) {
        let want = self.controller.lock().set;
        if let Some(size) = want.filter(|&w| socket.set != Some(w)) {
            if set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size) {
                socket.set = Some(size);
            }
        }
    }

    /// After a piece was written on `fd`: its delay feeds the controller,
    /// and a new size applies to this socket at once. `rate` is the
    /// uplink's measured rate in bytes per second (0: not yet), for the
    /// [`floor`].
    pub fn after_write(&self, fd: RawFd, socket: &mut Socket, rate: f64) {
        let Some((srtt, min_rtt)) = rtts(fd) else {
            return;
        };
        // Read back only when needed: not once per piece while no queue
        // shows.
        let current = || {
            socket
                .set
                .map(|s| s.saturating_mul(2))
                .or_else(|| get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF))
                .unwrap_or(0)
        };
        let least = floor(rate);
        let Some(size) = self.controller.lock().next(srtt, min_rtt, current, least) else {
            return;
        };
        tracing::trace!(
            sndbuf = size,
            srtt_ms = srtt.as_secs_f64() * 1e3,
            min_rtt_ms = min_rtt.as_secs_f64() * 1e3,
            "send buffer"
        );
        self.before_write(fd, socket);
    }
}

/// The socket's smoothed and smallest round-trip times, if the kernel
/// reports both.
fn rtts(fd: RawFd) -> Option<(Duration, Duration)> {
    // SAFETY: a plain C struct of integers, for which zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = socklen::<libc::tcp_info>();
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is
    // that large, and sets `len` to what it wrote.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    // Kernels before 4.9 stop short of `tcpi_min_rtt` (and leave it 0).
    let min_rtt_end = std::mem::offset_of!(libc::tcp_info, tcpi_min_rtt) + 4;
    if r != 0 || (len as usize) < min_rtt_end || info.tcpi_min_rtt == 0 {
        return None;
    }
    Some((
        Duration::from_micros(info.tcpi_rtt.into()),
        Duration::from_micros(info.tcpi_min_rtt.into()),
    ))
}

fn get_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<u32> {
    let mut v: libc::c_int = 0;
    let mut len = socklen::<libc::c_int>();
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which is that
    // large.
    let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &raw mut len) };
    (r == 0).then(|| u32::try_from(v).ok()).flatten()
}

/// Best effort: false if the kernel refused it.
fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: u32) -> bool {
    let v = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a socket the caller's connection owns, with a
    // c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const v).cast(),
            socklen::<libc::c_int>(),
        )
    };
    r == 0
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// Unsent bytes a peer socket may hold (`TCP_NOTSENT_LOWAT`): a quarter of
/// a piece, enough to bridge the hand-over of the next piece to the
/// kernel, so a write returns about when the uplink has taken it.
pub const UNSENT_LOWAT: u32 = 128 * 1024;

/// Sets [`UNSENT_LOWAT`] on the peer server's listening socket; the
/// connections it accepts inherit it. Best effort: without it, writes
/// return as soon as the kernel buffers them, and the pacing only sees the
/// uplink once those buffers are full.
pub fn limit_unsent(listener: &tokio::net::TcpListener) {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(UNSENT_LOWAT).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: setsockopt on a socket this process owns, with a c_int
    // option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&raw const v).cast(),
            len,
        )
    };
    if r != 0 {
        tracing::debug!(
            "TCP_NOTSENT_LOWAT: {}: uploads are paced by full socket buffers",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const KERNEL: u32 = 2 * 1024 * 1024;

    #[test]
    fn a_socket_without_queueing_keeps_the_kernels_sizing() {
        let mut b = Controller::default();
        for srtt in [MS / 10, 5 * MS, 20 * MS] {
            // Nor is the buffer's size read back meanwhile.
            let unasked = || -> u32 { panic!("the kernel's size was asked for") };
            assert_eq!(b.next(srtt, MS / 20, unasked, MIN_SNDBUF), None);
        }
        // A long path with no queue: all of its round trip is the path.
        assert_eq!(b.next(80 * MS, 75 * MS, || KERNEL, MIN_SNDBUF), None);
    }

    #[test]
    fn a_queue_shrinks_the_buffer_down_to_the_floor() {
        let mut b = Controller::default();
        assert_eq!(
            b.next(200 * MS, MS, || KERNEL, MIN_SNDBUF),
            Some(KERNEL / 4)
        );
        assert_eq!(
            b.next(40 * MS, MS, || KERNEL, MIN_SNDBUF),
            Some(KERNEL / 4 * 3 / 4)
        );
        let mut last = KERNEL;
        while let Some(s) = b.next(200 * MS, MS, || KERNEL, MIN_SNDBUF) {
            assert!(s < last);
            last = s;
        }
        assert_eq!(last, MIN_SNDBUF);
    }

    #[test]
    fn a_queue_shrinks_the_buffer_no_further_than_the_uplinks_floor() {
        // 16 MiB/s: a quarter of the target is 100 KiB, where a 32 KiB
        // buffer would hold 2 ms of the uplink and run dry whenever its
        // writer waits that long for a CPU.
        let rate = 16.0 * 1024.0 * 1024.0;
        let least = floor(rate);
        assert_eq!(least, 104_857);
        let mut b = Controller::default();
        let mut last = KERNEL;
        while let Some(s) = b.next(200 * MS, MS, || KERNEL, least) {
            assert!(s < last);
            last = s;
        }
        assert_eq!(last, least);
        // A slow or unmeasured uplink keeps the fixed floor, and a fast
        // one the ceiling.
        assert_eq!(floor(0.0), MIN_SNDBUF);
        assert_eq!(floor(1e6), MIN_SNDBUF);
        assert_eq!(floor(4e6), MIN_SNDBUF, "4 MB/s: as before");
        assert_eq!(floor(f64::INFINITY), MIN_SNDBUF);
        assert_eq!(floor(1e12), MAX_SNDBUF);
    }

    #[test]
    fn a_shrunk_buffer_grows_back_once_the_queue_drains_and_holds_near_the_target() {
        let mut b = Controller::default();
        let small = b.next(200 * MS, MS, || 256 * 1024, MIN_SNDBUF).unwrap();
        assert_eq!(small, 64 * 1024);
        assert_eq!(
            b.next(20 * MS, MS, || 0, MIN_SNDBUF),
            None,
            "within the target: hold"
        );
        let grown = b.next(2 * MS, MS, || 0, MIN_SNDBUF).unwrap();
        assert_eq!(grown, 80 * 1024);
        let mut last = grown;
        while let Some(s) = b.next(2 * MS, MS, || 0, MIN_SNDBUF) {
            assert!(s > last);
            last = s;
        }
        assert_eq!(last, MAX_SNDBUF);
    }

    #[test]
    fn reads_the_round_trip_times_of_a_real_connection() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[7; 4096]).unwrap();
        let mut buf = [0; 4096];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"ok").unwrap();
        c.read_exact(&mut buf[..2]).unwrap();
        let (srtt, min_rtt) = rtts(c.as_raw_fd()).expect("TCP_INFO with tcpi_min_rtt");
        assert!(
            min_rtt > Duration::ZERO && min_rtt <= srtt,
            "{min_rtt:?} {srtt:?}"
        );
        let buffers = SendBuffers::default();
        let mut socket = Socket::default();
        buffers.before_write(c.as_raw_fd(), &mut socket);
        assert_eq!(socket.set, None, "no delay seen: the kernel's sizing");
        buffers.controller.lock().set = Some(100_000);
        buffers.before_write(c.as_raw_fd(), &mut socket);
        assert_eq!(socket.set, Some(100_000));
        // A loopback connection has no queue: a shrunk buffer grows back.
        buffers.after_write(c.as_raw_fd(), &mut socket, 0.0);
        assert_eq!(socket.set, Some(125_000));
        let got = get_int(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap();
        assert_eq!(got, 250_000, "the kernel doubles what it is given");
    }
}
