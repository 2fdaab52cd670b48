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

/// Failed logins of one user name.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Instant,
}

/// Slows down password guessing per user name: [`FREE_FAILURES`] wrong
/// passwords are free, then each failure doubles a lockout starting at
/// [`FIRST_DELAY`]. Kept in memory: a restart forgives, which is acceptable
/// because the lockout only needs to make guessing slow, not impossible.
#[derive(Debug, Default)]
pub struct Throttle {
    users: HashMap<String, Failures>,
}

pub const FREE_FAILURES: u32 = 3;
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// Entries kept before forgotten lockouts are swept.
const MAX_TRACKED: usize = 100_000;

impl Throttle {
    /// Refuses while `user` is locked out.
    pub fn check(&self, user: &str, now: Instant) -> Result<(), ErrorCode> {
        match self.users.get(user) {
            Some(f) if f.blocked_until > now => Err(ErrorCode::TooManyAttempts {
                retry_after_ms: fileshare_protocol::millis(f.blocked_until - now).max(1),
            }),
            _ => Ok(()),
        }
    }

    pub fn failed(&mut self, user: &str, now: Instant) {
        if self.users.len() >= MAX_TRACKED {
            self.users.retain(|_, f| f.blocked_until + MAX_DELAY > now);
        }
        let f = self.users.entry(user.to_string()).or_insert(Failures {
            count: 0,
            blocked_until: now,
        });
        f.count = f.count.saturating_add(1);
        if f.count >= FREE_FAILURES {
            let doublings = (f.count - FREE_FAILURES).min(16);
            let delay = FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY);
            f.blocked_until = now + delay;
        }
    }

    pub fn succeeded(&mut self, user: &str) {
        self.users.remove(user);
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
    fn throttle_locks_out_after_free_failures_with_growing_delay() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed("u", t0);
            assert!(t.check("u", t0).is_ok());
        }
        t.failed("u", t0);
        let Err(ErrorCode::TooManyAttempts { retry_after_ms }) = t.check("u", t0) else {
            panic!("expected a lockout");
        };
        assert_eq!(retry_after_ms, 1000);
        assert!(t.check("other", t0).is_ok());
        let t1 = t0 + FIRST_DELAY;
        assert!(t.check("u", t1).is_ok());
        t.failed("u", t1);
        assert_eq!(
            t.check("u", t1),
            Err(ErrorCode::TooManyAttempts {
                retry_after_ms: 2000
            })
        );
        t.succeeded("u");
        assert!(t.check("u", t1).is_ok());
    }
}
