//! Tickets: a tracker's signed word that `user`'s daemon `holder` may fetch
//! the files of `group` until `expires_unix_ms`.
//!
//! The trackers of a cluster share one Ed25519 signing key (in their
//! replicated state); its public half, the [`TicketKey`], is all a serving
//! peer needs to check a ticket on its own, with no tracker round trip. A
//! ticket names the daemon it was issued to, so it is worth nothing on
//! another daemon's connection, and it expires soon (minutes), so a member
//! who leaves or is removed loses access within one lifetime: trackers
//! issue tickets to members only, and holders renew theirs before they
//! expire.

use crate::ids::PeerId;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What every signed ticket message starts with, so a ticket signature is
/// never valid as anything else the key might sign, nor the other way.
const DOMAIN: &[u8] = b"fileshare-ticket-v1\0";

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
    /// The daemon the ticket was issued to; only its connections may use it.
    pub holder: PeerId,
    pub expires_unix_ms: u64,
    /// Ed25519 over [`Ticket::signed_message`] (64 bytes).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Ticket({}@{} for {} until {})",
            self.user, self.group, self.holder, self.expires_unix_ms
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
}

impl Ticket {
    /// The bytes a ticket's signature covers: the domain, then every field,
    /// strings prefixed by their length so no two tickets sign the same
    /// bytes.
    pub fn signed_message(
        user: &str,
        group: &str,
        holder: &PeerId,
        expires_unix_ms: u64,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(DOMAIN.len() + 48 + user.len() + group.len());
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(&(user.len() as u64).to_be_bytes());
        m.extend_from_slice(user.as_bytes());
        m.extend_from_slice(&(group.len() as u64).to_be_bytes());
        m.extend_from_slice(group.as_bytes());
        m.extend_from_slice(&holder.0);
        m.extend_from_slice(&expires_unix_ms.to_be_bytes());
        m
    }

    /// Checks that `key` signed this ticket, that it was issued to
    /// `holder` (the peer presenting it), and that it has not expired at
    /// `now_ms`. Membership was the issuing tracker's check.
    pub fn verify(&self, key: &TicketKey, holder: &PeerId, now_ms: u64) -> Result<(), TicketError> {
        let message =
            Self::signed_message(&self.user, &self.group, &self.holder, self.expires_unix_ms);
        UnparsedPublicKey::new(&ED25519, &key.0)
            .verify(&message, &self.signature)
            .map_err(|_| TicketError::BadSignature)?;
        if self.holder != *holder {
            return Err(TicketError::OtherHolder);
        }
        if self.expires_unix_ms <= now_ms {
            return Err(TicketError::Expired);
        }
        Ok(())
    }
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

    pub fn sign(&self, user: &str, group: &str, holder: PeerId, expires_unix_ms: u64) -> Ticket {
        let message = Ticket::signed_message(user, group, &holder, expires_unix_ms);
        Ticket {
            user: user.to_string(),
            group: group.to_string(),
            holder,
            expires_unix_ms,
            signature: self.pair.sign(&message).as_ref().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: PeerId = PeerId([1; 16]);
    const NOW: u64 = 1_000_000;

    fn signed() -> (TicketSigner, Ticket) {
        let signer = TicketSigner::from_seed(&[7; 32]);
        let t = signer.sign("alice", "g", ME, NOW + 300_000);
        (signer, t)
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
