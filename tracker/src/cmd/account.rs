//! Accounts and sessions.

use super::{quota, user_name};
use crate::auth;
use crate::shared::{Queue, Shared};
use crate::state::change::Change;
use fileshare_protocol::conn_limits::Source;
use fileshare_protocol::messages::tracker::{CreateUser, Login, Logout};
use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerResult};
use fileshare_protocol::ErrorCode;
use std::net::IpAddr;
use std::time::Instant;

/// A new account. Each source address has a budget of sign-ups
/// ([`auth::SignUps`]), and sign-ups wait for their hash in a queue of
/// their own, so a flood of them never makes a login busy.
pub async fn create_user(shared: &Shared, from: Option<IpAddr>, req: CreateUser) -> TrackerResult {
    let CreateUser { user, password } = req;
    user_name(&user)?;
    auth::check_password(&password)?;
    // Cheap refusal before the expensive hash; the writer re-checks.
    if shared.state.read().user(&user).is_some() {
        return Err(ErrorCode::UserExists(user));
    }
    let from = from.map(Source::of);
    shared.sign_ups.lock().reserve(from, Instant::now())?;
    let phc = shared
        .hash_work(Queue::SignUp, move || auth::hash_password(&password))
        .await
        .inspect_err(|_| shared.sign_ups.lock().cancel(from))??;
    shared.submit(Change::CreateUser { user, phc }).await?;
    Ok(TrackerReply::Done)
}

pub async fn login(shared: &Shared, from: Option<IpAddr>, req: Login) -> TrackerResult {
    let Login { user, password } = req;
    user_name(&user)?;
    if password.len() > auth::MAX_PASSWORD_LEN {
        return Err(ErrorCode::WrongPassword);
    }
    let from = from.map(Source::of);
    // Counted as a failure from here on unless the password is right.
    shared
        .throttle
        .lock()
        .reserve(&user, from, Instant::now())?;
    let phc = shared.state.read().user(&user).map(|u| u.phc.clone());
    let checked = shared
        .hash_work(Queue::Login, move || {
            auth::verify_password(phc.as_deref(), &password)
        })
        .await;
    let ok = checked.inspect_err(|_| {
        shared.throttle.lock().cancel(&user, from, Instant::now());
    })?;
    if !ok {
        return Err(ErrorCode::WrongPassword);
    }
    shared.throttle.lock().succeeded(&user, from);
    let token = SessionToken(auth::random::<32>()?);
    let now_unix_ms = auth::now_unix_ms();
    let ttl = fileshare_protocol::millis(shared.settings.session_ttl);
    let expires_unix_ms = now_unix_ms.saturating_add(ttl);
    shared
        .submit(Change::OpenSession {
            token_hash: auth::token_hash(&token),
            user: user.clone(),
            now_unix_ms,
            expires_unix_ms,
            quota: quota(shared.settings.limits.sessions_per_user),
        })
        .await?;
    Ok(TrackerReply::Session {
        token,
        user,
        expires_unix_ms,
    })
}

pub async fn logout(shared: &Shared, req: Logout) -> TrackerResult {
    let session = &req.session;
    shared.session_user(session)?;
    shared
        .submit(Change::CloseSession {
            token_hash: auth::token_hash(session),
        })
        .await?;
    Ok(TrackerReply::Done)
}

#[cfg(test)]
mod tests {
    use crate::cmd::testing::Fixture;
    use crate::shared::Settings;
    use fileshare_protocol::messages::tracker::*;
    use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerRequest};
    use fileshare_protocol::ErrorCode;
    use std::time::Duration;

    fn login(user: &str, password: &str) -> TrackerRequest {
        Login {
            user: user.into(),
            password: password.into(),
        }
        .into()
    }

    #[tokio::test]
    async fn sessions_survive_a_restart_and_end_at_logout() {
        let fx = Fixture::new().await;
        let token = fx.user("alice").await;
        let fx = fx.restart().await;
        let list = ListGroups { session: token };
        assert!(fx.call(list.clone()).await.is_ok());
        let out = Logout { session: token };
        assert_eq!(fx.call(out.clone()).await, Ok(TrackerReply::Done));
        assert_eq!(fx.call(list).await, Err(ErrorCode::InvalidSession));
        assert_eq!(fx.call(out).await, Err(ErrorCode::InvalidSession));
        let forged = ListGroups {
            session: SessionToken([0; 32]),
        };
        assert_eq!(fx.call(forged).await, Err(ErrorCode::InvalidSession));
    }

    #[tokio::test]
    async fn wrong_passwords_and_names_are_refused() {
        let fx = Fixture::new().await;
        fx.user("alice").await;
        assert_eq!(
            fx.call(login("alice", "nope")).await,
            Err(ErrorCode::WrongPassword)
        );
        assert_eq!(
            fx.call(login("nobody", "pw")).await,
            Err(ErrorCode::WrongPassword)
        );
        let dup = CreateUser {
            user: "alice".into(),
            password: "x".into(),
        };
        assert_eq!(
            fx.call(dup).await,
            Err(ErrorCode::UserExists("alice".into()))
        );
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            let r = fx
                .call(CreateUser {
                    user: bad.into(),
                    password: "x".into(),
                })
                .await;
            assert!(
                matches!(r, Err(ErrorCode::BadName { .. })),
                "{bad:?}: {r:?}"
            );
        }
        let empty_pw = CreateUser {
            user: "bob".into(),
            password: String::new(),
        };
        assert!(matches!(
            fx.call(empty_pw).await,
            Err(ErrorCode::BadRequest(_))
        ));
    }

    /// Failures from one address hold up that address only: the right
    /// password from elsewhere still logs in while it hammers.
    #[tokio::test]
    async fn repeated_failures_slow_only_their_address() {
        use crate::cmd::{dispatch, Caller};
        let fx = Fixture::new().await;
        fx.user("alice").await;
        let from = |ip: &str| Caller {
            addr: Some(format!("{ip}:4000").parse().unwrap()),
            key: None,
        };
        let attacker = from("10.0.0.66");
        for _ in 0..crate::auth::FREE_FAILURES {
            assert_eq!(
                dispatch(&fx.shared, &attacker, login("alice", "bad")).await,
                Err(ErrorCode::WrongPassword)
            );
        }
        // The attacker's address waits, even with the right password.
        let r = dispatch(&fx.shared, &attacker, login("alice", "pw")).await;
        assert!(
            matches!(r, Err(ErrorCode::TooManyAttempts { retry_after_ms }) if retry_after_ms > 0),
            "{r:?}"
        );
        // Alice, from her own address, does not.
        let r = dispatch(&fx.shared, &from("10.0.0.7"), login("alice", "pw")).await;
        assert!(matches!(r, Ok(TrackerReply::Session { .. })), "{r:?}");
        fx.user("bob").await;
    }

    /// Logins beyond `--max-login-queue` are refused `Busy` at once rather
    /// than queued behind the password hashing.
    #[tokio::test]
    async fn logins_beyond_the_queue_are_busy_at_once() {
        let fx = Fixture::with(Settings {
            limits: crate::shared::Limits {
                login_queue: 1,
                ..Default::default()
            },
            ..Settings::default()
        })
        .await;
        fx.user("alice").await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8u8 {
            let shared = fx.shared.clone();
            tasks.spawn(async move {
                // From as many addresses, each under its login budget.
                let caller = crate::cmd::Caller {
                    addr: Some(([10, 0, 0, i], 4000).into()),
                    key: None,
                };
                crate::cmd::dispatch(&shared, &caller, login("alice", "pw")).await
            });
        }
        let (mut ok, mut busy) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(_) => ok += 1,
                Err(ErrorCode::Busy) => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
        assert_eq!(
            ErrorCode::Busy.to_string(),
            "the tracker is busy; retry later"
        );
    }

    #[tokio::test]
    async fn sessions_expire() {
        let fx = Fixture::with(Settings {
            session_ttl: Duration::from_millis(1),
            ..Settings::default()
        })
        .await;
        let token = fx.user("alice").await;
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            fx.call(ListGroups { session: token }).await,
            Err(ErrorCode::InvalidSession)
        );
    }
}
