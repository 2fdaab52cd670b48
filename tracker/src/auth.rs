//! Secrets: password hashes, session tokens and login throttling. Tickets
//! are signed with the cluster's key ([`fileshare_protocol::ticket`]).
//!
//! Hashing is argon2id with the crate's default cost and a random salt; it
//! is slow on purpose, so callers run it on the blocking pool.

use crate::state::records::TokenHash;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::ErrorCode;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest password accepted, so hashing cost stays bounded.
pub const MAX_PASSWORD_LEN: usize = 1024;

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(fileshare_protocol::millis)
        .unwrap_or(0)
}

pub fn random<const N: usize>() -> Result<[u8; N], ErrorCode> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ErrorCode::Internal(format!("no randomness: {e}")))?;
    Ok(b)
}

pub fn check_password(password: &str) -> Result<(), ErrorCode> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(ErrorCode::BadRequest(format!(
            "a password must be 1 to {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

/// An argon2id PHC string for `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, ErrorCode> {
    let salt = SaltString::encode_b64(&random::<16>()?)
        .map_err(|e| ErrorCode::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ErrorCode::Internal(format!("password hashing: {e}")))
}

/// Checks `password` against `phc`. With no `phc` (an unknown user) it
/// still spends the time of one check, so timing does not reveal which
/// user names exist.
pub fn verify_password(phc: Option<&str>, password: &str) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("not a password").unwrap_or_default());
    let Ok(parsed) = PasswordHash::new(phc.unwrap_or(dummy)) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
        && phc.is_some()
}

pub fn token_hash(token: &SessionToken) -> TokenHash {
    Sha256::digest(token.0).into()
}

/// Failed logins of one user name from one source address.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Instant,
}

/// Failed logins from one source address in the current window.
#[derive(Debug, Clone, Copy)]
struct Budget {
    window_start: Instant,
    failures: u32,
}

/// Slows down password guessing without locking the rightful user out.
///
/// Backoff is per user name *and source address*: [`FREE_FAILURES`] wrong
/// passwords are free, then each failure doubles a wait starting at
/// [`FIRST_DELAY`], for that pair only, so the right password from another
/// address still logs in while an attacker hammers. Each source address
/// also has a budget of [`SOURCE_BUDGET`] failures per [`SOURCE_WINDOW`],
/// over all user names, so one address cannot spread its guesses over many
/// names.
///
/// Consistent across the cluster by derivation: each of `trackers` allows
/// its share (free failures and budget divided by the cluster's size,
/// delays multiplied by it), so N trackers never give N times the guesses.
/// Kept in memory: a restart forgives, which is acceptable because the
/// throttle only needs to make guessing slow, not impossible.
#[derive(Debug)]
pub struct Throttle {
    pairs: HashMap<(String, Option<IpAddr>), Failures>,
    sources: HashMap<Option<IpAddr>, Budget>,
    trackers: u32,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(1)
    }
}

/// Wrong passwords for one user from one address before the backoff.
pub const FREE_FAILURES: u32 = 3;
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// Failed logins one source address may have per [`SOURCE_WINDOW`], over
/// all user names, in the whole cluster.
pub const SOURCE_BUDGET: u32 = 60;
pub const SOURCE_WINDOW: Duration = Duration::from_secs(600);
/// Entries kept before forgotten ones are swept.
const MAX_TRACKED: usize = 100_000;

impl Throttle {
    /// A throttle for one tracker of a cluster of `trackers`.
    pub fn new(trackers: u32) -> Throttle {
        Throttle {
            pairs: HashMap::new(),
            sources: HashMap::new(),
            trackers: trackers.max(1),
        }
    }

    fn free_failures(&self) -> u32 {
        (FREE_FAILURES / self.trackers).max(1)
    }

    fn source_budget(&self) -> u32 {
        (SOURCE_BUDGET / self.trackers).max(1)
    }

    /// Refuses while `user` is backing off at `from`, or `from` spent its
    /// budget of failures.
    pub fn check(&self, user: &str, from: Option<IpAddr>, now: Instant) -> Result<(), ErrorCode> {
        let wait = |until: Instant| ErrorCode::TooManyAttempts {
            retry_after_ms: fileshare_protocol::millis(until - now).max(1),
        };
        if let Some(b) = self.sources.get(&from) {
            let ends = b.window_start + SOURCE_WINDOW;
            if b.failures >= self.source_budget() && ends > now {
                return Err(wait(ends));
            }
        }
        match self.pairs.get(&(user.to_string(), from)) {
            Some(f) if f.blocked_until > now => Err(wait(f.blocked_until)),
            _ => Ok(()),
        }
    }

    pub fn failed(&mut self, user: &str, from: Option<IpAddr>, now: Instant) {
        if self.pairs.len() >= MAX_TRACKED {
            self.pairs.retain(|_, f| f.blocked_until + MAX_DELAY > now);
        }
        if self.sources.len() >= MAX_TRACKED {
            self.sources
                .retain(|_, b| b.window_start + SOURCE_WINDOW > now);
        }
        let b = self.sources.entry(from).or_insert(Budget {
            window_start: now,
            failures: 0,
        });
        if b.window_start + SOURCE_WINDOW <= now {
            *b = Budget {
                window_start: now,
                failures: 0,
            };
        }
        b.failures = b.failures.saturating_add(1);
        let free = self.free_failures();
        let scale = self.trackers;
        let f = self
            .pairs
            .entry((user.to_string(), from))
            .or_insert(Failures {
                count: 0,
                blocked_until: now,
            });
        f.count = f.count.saturating_add(1);
        if f.count >= free {
            let doublings = (f.count - free).min(16);
            let delay = FIRST_DELAY
                .saturating_mul(scale)
                .saturating_mul(1 << doublings)
                .min(MAX_DELAY);
            f.blocked_until = now + delay;
        }
    }

    pub fn succeeded(&mut self, user: &str, from: Option<IpAddr>) {
        self.pairs.remove(&(user.to_string(), from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_salt_and_verify() {
        let a = hash_password("secret").unwrap();
        let b = hash_password("secret").unwrap();
        assert_ne!(a, b, "salts differ");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert!(!a.contains("secret"));
        assert!(verify_password(Some(&a), "secret"));
        assert!(!verify_password(Some(&a), "Secret"));
        assert!(!verify_password(None, "not a password"));
        assert!(!verify_password(Some("garbage"), "secret"));
    }

    #[test]
    fn backoff_is_per_user_and_address_with_growing_delay() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let (bad, good): (Option<IpAddr>, Option<IpAddr>) =
            (Some([10, 0, 0, 1].into()), Some([10, 0, 0, 2].into()));
        for _ in 0..FREE_FAILURES - 1 {
            t.failed("u", bad, t0);
            assert!(t.check("u", bad, t0).is_ok());
        }
        t.failed("u", bad, t0);
        let Err(ErrorCode::TooManyAttempts { retry_after_ms }) = t.check("u", bad, t0) else {
            panic!("expected a lockout");
        };
        assert_eq!(retry_after_ms, 1000);
        // The rightful user elsewhere, and other names, are not held up.
        assert!(t.check("u", good, t0).is_ok());
        assert!(t.check("other", bad, t0).is_ok());
        let t1 = t0 + FIRST_DELAY;
        assert!(t.check("u", bad, t1).is_ok());
        t.failed("u", bad, t1);
        assert_eq!(
            t.check("u", bad, t1),
            Err(ErrorCode::TooManyAttempts {
                retry_after_ms: 2000
            })
        );
        t.succeeded("u", bad);
        assert!(t.check("u", bad, t1).is_ok());
    }

    #[test]
    fn a_source_spreading_guesses_over_names_runs_out_of_budget() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let src: Option<IpAddr> = Some([10, 0, 0, 1].into());
        for i in 0..SOURCE_BUDGET {
            assert!(t.check(&format!("u{i}"), src, t0).is_ok());
            t.failed(&format!("u{i}"), src, t0);
        }
        assert!(t.check("fresh", src, t0).is_err());
        assert!(t.check("fresh", Some([10, 0, 0, 2].into()), t0).is_ok());
        assert!(t.check("fresh", src, t0 + SOURCE_WINDOW).is_ok());
    }

    #[test]
    fn a_cluster_gives_no_more_guesses_than_one_tracker() {
        // Three trackers, each with its share: one free failure each, and
        // three times the delay.
        let mut trackers: Vec<Throttle> = (0..3).map(|_| Throttle::new(3)).collect();
        let t0 = Instant::now();
        let src: Option<IpAddr> = Some([10, 0, 0, 1].into());
        let mut free = 0;
        for t in &mut trackers {
            while t.check("u", src, t0).is_ok() {
                t.failed("u", src, t0);
                free += 1;
            }
        }
        assert_eq!(free, FREE_FAILURES);
        let Err(ErrorCode::TooManyAttempts { retry_after_ms }) = trackers[0].check("u", src, t0)
        else {
            panic!()
        };
        assert_eq!(retry_after_ms, 3000);
    }
}
