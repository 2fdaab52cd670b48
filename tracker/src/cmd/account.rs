//! Accounts and sessions.

use super::user_name;
use crate::auth;
use crate::shared::Shared;
use crate::state::change::Change;
use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerResult};
use fileshare_protocol::ErrorCode;
use std::time::Instant;

pub async fn create_user(shared: &Shared, user: String, password: String) -> TrackerResult {
    user_name(&user)?;
    auth::check_password(&password)?;
    // Cheap refusal before the expensive hash; the writer re-checks.
    if shared.state.read().user(&user).is_some() {
        return Err(ErrorCode::UserExists(user));
    }
    let phc = shared
        .hash_work(move || auth::hash_password(&password))
        .await??;
    shared.submit(Change::CreateUser { user, phc }).await?;
    Ok(TrackerReply::Done)
}

pub async fn login(shared: &Shared, user: String, password: String) -> TrackerResult {
    user_name(&user)?;
    if password.len() > auth::MAX_PASSWORD_LEN {
        return Err(ErrorCode::WrongPassword);
    }
    shared.throttle.lock().check(&user, Instant::now())?;
    let phc = shared.state.read().user(&user).map(|u| u.phc.clone());
    let ok = shared
        .hash_work(move || auth::verify_password(phc.as_deref(), &password))
        .await?;
    if !ok {
        shared.throttle.lock().failed(&user, Instant::now());
        return Err(ErrorCode::WrongPassword);
    }
    shared.throttle.lock().succeeded(&user);
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
        })
        .await?;
    Ok(TrackerReply::Session {
        token,
        user,
        expires_unix_ms,
    })
}

pub async fn logout(shared: &Shared, session: &SessionToken) -> TrackerResult {
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
    use fileshare_protocol::messages::{SessionToken, TrackerReply, TrackerRequest};
    use fileshare_protocol::ErrorCode;
    use std::time::Duration;

    fn login(user: &str, password: &str) -> TrackerRequest {
        TrackerRequest::Login {
            user: user.into(),
            password: password.into(),
        }
    }

    #[tokio::test]
    async fn sessions_survive_a_restart_and_end_at_logout() {
        let fx = Fixture::new();
        let token = fx.user("alice").await;
        let fx = fx.restart().await;
        let list = TrackerRequest::ListGroups { session: token };
        assert!(fx.call(list.clone()).await.is_ok());
        let out = TrackerRequest::Logout { session: token };
        assert_eq!(fx.call(out.clone()).await, Ok(TrackerReply::Done));
        assert_eq!(fx.call(list).await, Err(ErrorCode::InvalidSession));
        assert_eq!(fx.call(out).await, Err(ErrorCode::InvalidSession));
        let forged = TrackerRequest::ListGroups {
            session: SessionToken([0; 32]),
        };
        assert_eq!(fx.call(forged).await, Err(ErrorCode::InvalidSession));
    }

    #[tokio::test]
    async fn wrong_passwords_and_names_are_refused() {
        let fx = Fixture::new();
        fx.user("alice").await;
        assert_eq!(
            fx.call(login("alice", "nope")).await,
            Err(ErrorCode::WrongPassword)
        );
        assert_eq!(
            fx.call(login("nobody", "pw")).await,
            Err(ErrorCode::WrongPassword)
        );
        let dup = TrackerRequest::CreateUser {
            user: "alice".into(),
            password: "x".into(),
        };
        assert_eq!(
            fx.call(dup).await,
            Err(ErrorCode::UserExists("alice".into()))
        );
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            let r = fx
                .call(TrackerRequest::CreateUser {
                    user: bad.into(),
                    password: "x".into(),
                })
                .await;
            assert!(
                matches!(r, Err(ErrorCode::BadName { .. })),
                "{bad:?}: {r:?}"
            );
        }
        let empty_pw = TrackerRequest::CreateUser {
            user: "bob".into(),
            password: String::new(),
        };
        assert!(matches!(
            fx.call(empty_pw).await,
            Err(ErrorCode::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn repeated_failures_lock_the_user_out() {
        let fx = Fixture::new();
        fx.user("alice").await;
        for _ in 0..crate::auth::FREE_FAILURES {
            assert_eq!(
                fx.call(login("alice", "bad")).await,
                Err(ErrorCode::WrongPassword)
            );
        }
        // Even the right password waits out the lockout.
        let r = fx.call(login("alice", "pw")).await;
        assert!(
            matches!(r, Err(ErrorCode::TooManyAttempts { retry_after_ms }) if retry_after_ms > 0),
            "{r:?}"
        );
        fx.user("bob").await;
    }

    #[tokio::test]
    async fn sessions_expire() {
        let fx = Fixture::with(Settings {
            session_ttl: Duration::from_millis(1),
            ..Settings::default()
        });
        let token = fx.user("alice").await;
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            fx.call(TrackerRequest::ListGroups { session: token }).await,
            Err(ErrorCode::InvalidSession)
        );
    }
}
