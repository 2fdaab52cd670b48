//! A TCP relay on 127.0.0.1 that records every byte it passes on, both
//! ways: what an eavesdropper on the path between two processes would see.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct Relay {
    addr: String,
    seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on a free port of 127.0.0.1 and relays each connection to
    /// `target`.
    pub fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking relay");
        let addr = listener.local_addr().expect("relay addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let target = target.to_string();
        let acceptor = std::thread::spawn({
            let (seen, stop) = (seen.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            let Ok(server) = TcpStream::connect(&target) else {
                                continue;
                            };
                            pump(&client, &server, &seen);
                            pump(&server, &client, &seen);
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
            }
        });
        Relay {
            addr,
            seen,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Everything relayed so far, both directions.
    pub fn seen(&self) -> Vec<u8> {
        self.seen.lock().expect("relay record").clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` on a thread of its own, recording the bytes.
fn pump(from: &TcpStream, to: &TcpStream, seen: &Arc<Mutex<Vec<u8>>>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let seen = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.lock()
                        .expect("relay record")
                        .extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Whether `haystack` holds any run of `run` bytes of `needle`, or all of
/// it when it is shorter.
pub fn holds_run_of(haystack: &[u8], needle: &[u8], run: usize) -> bool {
    let run = run.min(needle.len()).max(1);
    // Megabytes each side: look the haystack's windows up in a set.
    let runs: std::collections::HashSet<&[u8]> = needle.windows(run).step_by(run).collect();
    haystack.windows(run).any(|h| runs.contains(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_and_records_both_ways() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap().to_string();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            s.write_all(b"world").unwrap();
        });
        let relay = Relay::start(&target);
        let mut c = TcpStream::connect(relay.addr()).unwrap();
        c.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"world");
        echo.join().unwrap();
        crate::wait_until(
            "both directions recorded",
            std::time::Duration::from_secs(5),
            || relay.seen().len() == 10,
        );
        let seen = relay.seen();
        assert!(holds_run_of(&seen, b"hello", 5) && holds_run_of(&seen, b"world", 5));
        assert!(!holds_run_of(&seen, b"other", 5));
    }
}
