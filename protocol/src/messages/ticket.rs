//! Tickets: a tracker's signed word that `user`'s daemon `holder` may fetch
//! the files of `group` (the incarnation of that name created as
//! `group_id`) from `issued_unix_ms` until `expires_unix_ms`.
//!
//! The trackers of a cluster share one Ed25519 signing key (in their
//! replicated state); its public half, the [`TicketKey`], is all a serving
//! peer needs to check a ticket on its own, with no tracker round trip. A
//! ticket names the daemon it was issued to, so it is worth nothing on
//! another daemon's connection, and it expires soon (minutes), so a member
//! who leaves or is removed loses access within one lifetime: trackers
//! issue tickets to members only, and holders renew theirs before they
//! expire.
//!
//! A lifetime is bounded twice: trackers refuse to start with a
//! `--ticket-ttl` over [`MAX_TICKET_LIFETIME`], and a verifier refuses a
//! ticket that claims a longer one or an issue time more than
//! [`MAX_CLOCK_SKEW`] in its future, so neither a misconfigured tracker nor
//! a clock running behind extends access after a removal.

use crate::ids::PeerId;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// What every signed ticket message starts with, so a ticket signature is
/// never valid as anything else the key might sign, nor the other way.
const DOMAIN: &[u8] = b"fileshare-ticket-v2\0";

/// The longest a ticket may last, from issue to expiry: how long at most a
/// member keeps access to a group's files after leaving or being removed.
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(3600);

/// How far in the future a ticket's issue time may be, by the verifier's
/// clock: clocks of trackers and daemons differ a little.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The cluster's Ed25519 public key, which verifies its tickets.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TicketKey(pub [u8; 32]);

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketKey({})", crate::ids::hex(&self.0[..8]))
    }
}

/// A tracker-signed grant of `group`'s files to `user`'s daemon `holder`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub user: String,
    pub group: String,
    /// Which group of that name: its creation id, new each time a group of
    /// the name is created, so a ticket of a deleted group opens nothing of
    /// a group created later under its name.
    pub group_id: u64,
    /// The daemon the ticket was issued to; only its connections may use it.
    pub holder: PeerId,
    pub issued_unix_ms: u64,
    pub expires_unix_ms: u64,
    /// Ed25519 over [`Ticket::signed_message`] (64 bytes).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Ticket({}@{}#{} for {} from {} until {})",
            self.user,
            self.group,
            self.group_id,
            self.holder,
            self.issued_unix_ms,
            self.expires_unix_ms
        )
    }
}

/// Why a ticket is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is not signed by this cluster")]
    BadSignature,
    #[error("the ticket has expired")]
    Expired,
    #[error("the ticket was issued to another peer")]
    OtherHolder,
    #[error("the ticket lasts {lifetime_ms} ms, longer than the {max_ms} ms a ticket may last")]
    TooLong { lifetime_ms: u64, max_ms: u64 },
    #[error("the ticket was issued {ahead_ms} ms in the future by this peer's clock")]
    IssuedInTheFuture { ahead_ms: u64 },
    #[error(
        "the ticket is for group {group} as created with id {ticket}, but the group of that \
         name here is the one created with id {current}: it was deleted and created again"
    )]
    OtherGroup {
        group: String,
        ticket: u64,
        current: u64,
    },
}

impl Ticket {
    /// The bytes a ticket's signature covers: the domain, then every field,
    /// strings prefixed by their length so no two tickets sign the same
    /// bytes.
    fn signed_message(&self) -> Vec<u8> {
        let (user, group) = (&self.user, &self.group);
        let mut m = Vec::with_capacity(DOMAIN.len() + 64 + user.len() + group.len());
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(&(user.len() as u64).to_be_bytes());
        m.extend_from_slice(user.as_bytes());
        m.extend_from_slice(&(group.len() as u64).to_be_bytes());
        m.extend_from_slice(group.as_bytes());
        m.extend_from_slice(&self.group_id.to_be_bytes());
        m.extend_from_slice(&self.holder.0);
        m.extend_from_slice(&self.issued_unix_ms.to_be_bytes());
        m.extend_from_slice(&self.expires_unix_ms.to_be_bytes());
        m
    }

    /// Checks that `key` signed this ticket, that it was issued to
    /// `holder` (the peer presenting it), that its lifetime is within
    /// [`MAX_TICKET_LIFETIME`], that it was not issued in the future (beyond
    /// [`MAX_CLOCK_SKEW`]) and that it has not expired at `now_ms`.
    /// Membership was the issuing tracker's check; which incarnation of the
    /// group is current is the verifier's (see [`TicketError::OtherGroup`]).
    pub fn verify(&self, key: &TicketKey, holder: &PeerId, now_ms: u64) -> Result<(), TicketError> {
        UnparsedPublicKey::new(&ED25519, &key.0)
            .verify(&self.signed_message(), &self.signature)
            .map_err(|_| TicketError::BadSignature)?;
        if self.holder != *holder {
            return Err(TicketError::OtherHolder);
        }
        let lifetime_ms = self.expires_unix_ms.saturating_sub(self.issued_unix_ms);
        let max_ms = crate::millis(MAX_TICKET_LIFETIME);
        if lifetime_ms > max_ms {
            return Err(TicketError::TooLong {
                lifetime_ms,
                max_ms,
            });
        }
        let ahead_ms = self.issued_unix_ms.saturating_sub(now_ms);
        if ahead_ms > crate::millis(MAX_CLOCK_SKEW) {
            return Err(TicketError::IssuedInTheFuture { ahead_ms });
        }
        if self.expires_unix_ms <= now_ms {
            return Err(TicketError::Expired);
        }
        Ok(())
    }
}

/// What a ticket grants, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<'a> {
    pub user: &'a str,
    pub group: &'a str,
    pub group_id: u64,
    pub holder: PeerId,
    pub issued_unix_ms: u64,
    pub expires_unix_ms: u64,
}

/// The signing half of the cluster's ticket key.
pub struct TicketSigner {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketSigner({:?})", self.key())
    }
}

impl TicketSigner {
    /// The key pair of a 32-byte Ed25519 seed (the private key).
    pub fn from_seed(seed: &[u8; 32]) -> TicketSigner {
        // Any 32 bytes are a valid Ed25519 seed; "unchecked" refers to the
        // public key, which is derived here rather than given.
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .expect("every 32-byte seed is an Ed25519 key");
        TicketSigner { pair }
    }

    /// The public key that verifies this signer's tickets.
    pub fn key(&self) -> TicketKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        TicketKey(k)
    }

    pub fn sign(&self, grant: Grant<'_>) -> Ticket {
        let mut t = Ticket {
            user: grant.user.to_string(),
            group: grant.group.to_string(),
            group_id: grant.group_id,
            holder: grant.holder,
            issued_unix_ms: grant.issued_unix_ms,
            expires_unix_ms: grant.expires_unix_ms,
            signature: Vec::new(),
        };
        t.signature = self.pair.sign(&t.signed_message()).as_ref().to_vec();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: PeerId = PeerId([1; 16]);
    const NOW: u64 = 1_000_000;

    fn grant(issued: u64, expires: u64) -> Grant<'static> {
        Grant {
            user: "alice",
            group: "g",
            group_id: 5,
            holder: ME,
            issued_unix_ms: issued,
            expires_unix_ms: expires,
        }
    }

    fn signed() -> (TicketSigner, Ticket) {
        let signer = TicketSigner::from_seed(&[7; 32]);
        let t = signer.sign(grant(NOW, NOW + 300_000));
        (signer, t)
    }

    #[test]
    fn a_lifetime_over_the_maximum_or_an_issue_time_ahead_is_refused() {
        let signer = TicketSigner::from_seed(&[7; 32]);
        let key = signer.key();
        let max = crate::millis(MAX_TICKET_LIFETIME);
        let longest = signer.sign(grant(NOW, NOW + max));
        assert_eq!(longest.verify(&key, &ME, NOW), Ok(()));
        let too_long = signer.sign(grant(NOW, NOW + max + 1));
        assert_eq!(
            too_long.verify(&key, &ME, NOW),
            Err(TicketError::TooLong {
                lifetime_ms: max + 1,
                max_ms: max
            })
        );
        // A verifier whose clock is behind the issuer's by a little still
        // accepts; by more, it refuses.
        let skew = crate::millis(MAX_CLOCK_SKEW);
        let ahead = signer.sign(grant(NOW + skew, NOW + skew + 300_000));
        assert_eq!(ahead.verify(&key, &ME, NOW), Ok(()));
        let far_ahead = signer.sign(grant(NOW + skew + 1, NOW + skew + 300_000));
        assert_eq!(
            far_ahead.verify(&key, &ME, NOW),
            Err(TicketError::IssuedInTheFuture { ahead_ms: skew + 1 })
        );
    }

    #[test]
    fn a_genuine_ticket_verifies_for_its_holder_until_it_expires() {
        let (signer, t) = signed();
        let key = signer.key();
        assert_eq!(t.signature.len(), 64);
        assert_eq!(t.verify(&key, &ME, NOW), Ok(()));
        assert_eq!(t.verify(&key, &ME, NOW + 299_999), Ok(()));
        assert_eq!(
            t.verify(&key, &ME, NOW + 300_000),
            Err(TicketError::Expired)
        );
        assert_eq!(
            t.verify(&key, &PeerId([2; 16]), NOW),
            Err(TicketError::OtherHolder)
        );
        assert_eq!(
            TicketSigner::from_seed(&[7; 32]).key(),
            key,
            "the key is a function of the seed"
        );
    }

    #[test]
    fn every_tampered_field_breaks_the_signature() {
        let (signer, t) = signed();
        let key = signer.key();
        let mut flipped = t.clone();
        flipped.signature[10] ^= 1;
        for forged in [
            Ticket {
                user: "mallory".into(),
                ..t.clone()
            },
            Ticket {
                group: "h".into(),
                ..t.clone()
            },
            Ticket {
                holder: PeerId([2; 16]),
                ..t.clone()
            },
            Ticket {
                group_id: t.group_id + 1,
                ..t.clone()
            },
            Ticket {
                issued_unix_ms: t.issued_unix_ms - 1,
                ..t.clone()
            },
            Ticket {
                expires_unix_ms: t.expires_unix_ms + 1,
                ..t.clone()
            },
            // Moving a byte between user and group keeps the concatenation.
            Ticket {
                user: "alic".into(),
                group: "eg".into(),
                ..t.clone()
            },
            Ticket {
                signature: vec![],
                ..t.clone()
            },
            flipped,
        ] {
            // Checked with the forged holder too, so only the signature
            // can be what refuses it.
            assert_eq!(
                forged.verify(&key, &forged.holder, NOW),
                Err(TicketError::BadSignature),
                "{forged:?}"
            );
        }
    }

    #[test]
    fn another_clusters_key_refuses_the_ticket() {
        let (_, t) = signed();
        let other = TicketSigner::from_seed(&[8; 32]).key();
        assert_eq!(t.verify(&other, &ME, NOW), Err(TicketError::BadSignature));
    }

    #[test]
    fn tickets_round_trip_on_the_wire() {
        let (_, t) = signed();
        let bytes = crate::codec::encode(&t).unwrap();
        assert_eq!(crate::codec::decode::<Ticket>(&bytes).unwrap(), t);
    }
}
