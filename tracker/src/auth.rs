//! Secrets: password hashes, session tokens and login throttling. Tickets
//! are signed with the cluster's key ([`fileshare_protocol::ticket`]).
//!
//! Hashing is argon2id with the crate's default cost and a random salt; it
//! is slow on purpose, so callers run it on the blocking pool.

use crate::state::records::TokenHash;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use fileshare_protocol::conn_limits::Source;
use fileshare_protocol::messages::SessionToken;
use fileshare_protocol::{ErrorCode, Limit};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
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

/// What one source address spent of a budget in the current window:
/// failed logins, or sign-ups.
#[derive(Debug, Clone, Copy)]
struct Budget {
    window_start: Instant,
    spent: u32,
}

/// Slows down password guessing without locking the rightful user out.
///
/// Backoff is per user name *and source address*: [`FREE_FAILURES`] wrong
/// passwords are free, then each failure doubles a wait starting at
/// [`FIRST_DELAY`], for that pair only, so the right password from another
/// address still logs in while an attacker hammers. Each source address
/// also has a budget of [`SOURCE_BUDGET`] failures per [`SOURCE_WINDOW`],
/// over all user names, so one address cannot spread its guesses over many
/// names. A source address is a [`Source`]: an IPv6 /64 counts as one.
///
/// An attempt takes its place before the password is checked
/// ([`Throttle::reserve`]) and counts as a failure unless it succeeds, so
/// guesses sent all at once are held to the same budget as guesses sent one
/// after another.
///
/// Consistent across the cluster by derivation: each of `trackers` allows
/// its share (free failures and budget divided by the cluster's size,
/// delays multiplied by it), so N trackers never give N times the guesses.
/// Kept in memory: a restart forgives, which is acceptable because the
/// throttle only needs to make guessing slow, not impossible.
#[derive(Debug)]
pub struct Throttle {
    pairs: HashMap<(String, Option<Source>), Failures>,
    sources: HashMap<Option<Source>, Budget>,
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

    /// Takes an attempt's place before its password is checked: refuses
    /// while `user` is backing off at `from` or `from` spent its budget;
    /// otherwise the attempt counts as a failed one until
    /// [`Throttle::succeeded`] gives its place back.
    pub fn reserve(
        &mut self,
        user: &str,
        from: Option<Source>,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        self.check(user, from, now)?;
        self.failed(user, from, now);
        Ok(())
    }

    /// Refuses while `user` is backing off at `from`, or `from` spent its
    /// budget of failures.
    fn check(&self, user: &str, from: Option<Source>, now: Instant) -> Result<(), ErrorCode> {
        let wait = |until: Instant| ErrorCode::TooManyAttempts {
            retry_after_ms: fileshare_protocol::millis(until - now).max(1),
        };
        if let Some(b) = self.sources.get(&from) {
            let ends = b.window_start + SOURCE_WINDOW;
            if b.spent >= self.source_budget() && ends > now {
                return Err(wait(ends));
            }
        }
        match self.pairs.get(&(user.to_string(), from)) {
            Some(f) if f.blocked_until > now => Err(wait(f.blocked_until)),
            _ => Ok(()),
        }
    }

    fn failed(&mut self, user: &str, from: Option<Source>, now: Instant) {
        if self.pairs.len() >= MAX_TRACKED {
            self.pairs.retain(|_, f| f.blocked_until + MAX_DELAY > now);
        }
        if self.sources.len() >= MAX_TRACKED {
            self.sources
                .retain(|_, b| b.window_start + SOURCE_WINDOW > now);
        }
        let b = self.sources.entry(from).or_insert(Budget {
            window_start: now,
            spent: 0,
        });
        if b.window_start + SOURCE_WINDOW <= now {
            *b = Budget {
                window_start: now,
                spent: 0,
            };
        }
        b.spent = b.spent.saturating_add(1);
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

    /// Gives back the place of an attempt whose password was never checked
    /// (the tracker was busy).
    pub fn cancel(&mut self, user: &str, from: Option<Source>, now: Instant) {
        if let Some(b) = self.sources.get_mut(&from) {
            b.spent = b.spent.saturating_sub(1);
        }
        let free = self.free_failures();
        if let Some(f) = self.pairs.get_mut(&(user.to_string(), from)) {
            f.count = f.count.saturating_sub(1);
            if f.count < free {
                f.blocked_until = f.blocked_until.min(now);
            }
        }
    }

    /// The right password: `user` at `from` is forgiven, and the attempt's
    /// place in `from`'s budget is given back.
    pub fn succeeded(&mut self, user: &str, from: Option<Source>) {
        self.pairs.remove(&(user.to_string(), from));
        if let Some(b) = self.sources.get_mut(&from) {
            b.spent = b.spent.saturating_sub(1);
        }
    }
}

/// Sign-ups one source address may make per [`SIGN_UP_WINDOW`] unless
/// `--max-sign-ups-per-address` says otherwise, in the whole cluster.
pub const DEFAULT_SIGN_UP_BUDGET: u32 = 30;
pub const SIGN_UP_WINDOW: Duration = Duration::from_secs(3600);

/// Sign-ups per source address: every account is permanent and brings its
/// own quotas, so one address may only make a few per hour. As with
/// [`Throttle`], each of a cluster's trackers allows its share, and an
/// attempt is counted before its password is hashed.
#[derive(Debug)]
pub struct SignUps {
    sources: HashMap<Option<Source>, Budget>,
    budget: u32,
    cluster_budget: u32,
}

impl SignUps {
    /// `budget` sign-ups per address and window over a cluster of
    /// `trackers`.
    pub fn new(budget: u32, trackers: u32) -> SignUps {
        SignUps {
            sources: HashMap::new(),
            budget: (budget / trackers.max(1)).max(1),
            cluster_budget: budget,
        }
    }

    /// Counts one sign-up from `from`, or refuses it with the time until
    /// its address may sign up again.
    pub fn reserve(&mut self, from: Option<Source>, now: Instant) -> Result<(), ErrorCode> {
        if self.sources.len() >= MAX_TRACKED {
            self.sources
                .retain(|_, b| b.window_start + SIGN_UP_WINDOW > now);
        }
        let b = self.sources.entry(from).or_insert(Budget {
            window_start: now,
            spent: 0,
        });
        if b.window_start + SIGN_UP_WINDOW <= now {
            *b = Budget {
                window_start: now,
                spent: 0,
            };
        }
        if b.spent >= self.budget {
            let wait = (b.window_start + SIGN_UP_WINDOW).saturating_duration_since(now);
            let place = from.map_or("this address".to_string(), |s| s.to_string());
            return Err(ErrorCode::LimitReached {
                limit: Limit::SignUpsPerAddress,
                message: format!(
                    "{place} made {} sign-ups this hour, the most one address may make \
                     (--max-sign-ups-per-address {}); try again in {} s",
                    b.spent,
                    self.cluster_budget,
                    wait.as_secs().max(1)
                ),
            });
        }
        b.spent += 1;
        Ok(())
    }

    /// Gives back the place of a sign-up that was never hashed (the
    /// tracker was busy).
    pub fn cancel(&mut self, from: Option<Source>) {
        if let Some(b) = self.sources.get_mut(&from) {
            b.spent = b.spent.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn src(ip: impl Into<IpAddr>) -> Option<Source> {
        Some(Source::of(ip.into()))
    }

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
        let (bad, good) = (src([10, 0, 0, 1]), src([10, 0, 0, 2]));
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
        let s1 = src([10, 0, 0, 1]);
        for i in 0..SOURCE_BUDGET {
            assert!(t.check(&format!("u{i}"), s1, t0).is_ok());
            t.failed(&format!("u{i}"), s1, t0);
        }
        assert!(t.check("fresh", s1, t0).is_err());
        assert!(t.check("fresh", src([10, 0, 0, 2]), t0).is_ok());
        assert!(t.check("fresh", s1, t0 + SOURCE_WINDOW).is_ok());
    }

    #[test]
    fn a_cluster_gives_no_more_guesses_than_one_tracker() {
        // Three trackers, each with its share: one free failure each, and
        // three times the delay.
        let mut trackers: Vec<Throttle> = (0..3).map(|_| Throttle::new(3)).collect();
        let t0 = Instant::now();
        let s1 = src([10, 0, 0, 1]);
        let mut free = 0;
        for t in &mut trackers {
            while t.check("u", s1, t0).is_ok() {
                t.failed("u", s1, t0);
                free += 1;
            }
        }
        assert_eq!(free, FREE_FAILURES);
        let Err(ErrorCode::TooManyAttempts { retry_after_ms }) = trackers[0].check("u", s1, t0)
        else {
            panic!()
        };
        assert_eq!(retry_after_ms, 3000);
    }

    /// Attempts made all at once, before any password check ends, get no
    /// more than attempts made one after another.
    #[test]
    fn attempts_take_their_place_before_the_check() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let s1 = src([10, 0, 0, 1]);
        let one_name = (0..64).filter(|_| t.reserve("u", s1, t0).is_ok()).count();
        assert_eq!(one_name, FREE_FAILURES as usize);
        let s2 = src([10, 0, 0, 2]);
        let many_names = (0..64)
            .filter(|i| t.reserve(&format!("u{i}"), s2, t0).is_ok())
            .count();
        assert_eq!(many_names, SOURCE_BUDGET as usize);
        // A right password gives its place back and forgives its name.
        let s3 = src([10, 0, 0, 3]);
        for _ in 0..10 {
            t.reserve("alice", s3, t0).unwrap();
            t.succeeded("alice", s3);
        }
        assert_eq!(t.sources[&s3].spent, 0);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let addr = |i: u16| src(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, i, 0, 0, 1));
        let passed = (0..64)
            .filter(|&i| t.reserve(&format!("u{i}"), addr(i), t0).is_ok())
            .count();
        assert_eq!(passed, SOURCE_BUDGET as usize);
        let next_net = src(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 8, 0, 0, 0, 1));
        assert!(t.reserve("v", next_net, t0).is_ok());
        let mut s = SignUps::new(4, 1);
        for i in 0..4 {
            s.reserve(addr(i), t0).unwrap();
        }
        assert!(s.reserve(addr(99), t0).is_err());
    }

    #[test]
    fn sign_ups_have_a_budget_per_address_and_window() {
        let t0 = Instant::now();
        let (a, b) = (src([10, 0, 0, 1]), src([10, 0, 0, 2]));
        let mut s = SignUps::new(DEFAULT_SIGN_UP_BUDGET, 1);
        for _ in 0..DEFAULT_SIGN_UP_BUDGET {
            s.reserve(a, t0).unwrap();
        }
        let Err(ErrorCode::LimitReached { limit, message }) = s.reserve(a, t0) else {
            panic!("expected the sign-up budget to run out");
        };
        assert_eq!(limit, Limit::SignUpsPerAddress);
        assert!(
            message.contains("--max-sign-ups-per-address 30"),
            "{message}"
        );
        assert!(s.reserve(b, t0).is_ok());
        assert!(s.reserve(a, t0 + SIGN_UP_WINDOW).is_ok());
        // Each of two trackers allows half.
        let mut half = SignUps::new(DEFAULT_SIGN_UP_BUDGET, 2);
        let n = (0..100).filter(|_| half.reserve(a, t0).is_ok()).count();
        assert_eq!(n, DEFAULT_SIGN_UP_BUDGET as usize / 2);
    }
}
