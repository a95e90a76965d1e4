//! Signed checkpoints of the records' Merkle tree, in the formats of C2SP signed-note and
//! tlog-checkpoint, so that any tool of that ecosystem (and `callgate records verify`) can
//! check them without trusting the host that wrote them:
//!
//! ```text
//! <origin>                       the log's name
//! <tree size>                    decimal
//! <root hash>                    base64
//!
//! — <key name> base64(key ID[4] ‖ Ed25519 signature[64])
//! ```
//! Keys use the Go `note` package's text forms: the signer key
//! `PRIVATE+KEY+<name>+<key ID hex>+base64(0x01 ‖ seed)`, kept 0600 in the state directory
//! (or given as a systemd credential), and the verifier key `<name>+<key ID hex>+base64(0x01 ‖
//! public key)`, which is what an auditor keeps.
//!
//! The signed-note core (keys, [`Signer`], [`Verifier`]) is [`crate::util::note`]'s; it is
//! re-exported here, where the records' code has always found it.
use base64::{Engine, engine::general_purpose::STANDARD as B64};

use super::merkle::Hash;

pub use crate::util::note::{CREDENTIAL, KEY_FILE, NoteError, Signer, Verifier};
pub(crate) use crate::util::note::{KeyPair, PublicKey};

/// The verifier key, written next to the checkpoint for `callgate records key`.
pub const VERIFIER_FILE: &str = "checkpoint.pub";
/// The latest signed checkpoint, in the records directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// A tlog-checkpoint's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses a note's text (extension lines after the root are allowed and ignored).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Checkpoint("no origin line"))?;
        let size = lines
            .next()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && (*s == "0" || !s.starts_with('0')))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(NoteError::Checkpoint("the second line is not a tree size"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::Checkpoint(
                "the third line is not a base64 SHA-256 root",
            ))?;
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
        })
    }

    /// Opens a signed checkpoint with `key`.
    pub fn open(note: &str, key: &Verifier) -> Result<Self, NoteError> {
        Self::parse(key.open(note)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_a_forgery_is_refused() {
        let s = Signer::generate("example.com/callgate/records").unwrap();
        let again = Signer::parse(&s.encode()).unwrap();
        assert_eq!(again.verifier(), s.verifier());
        let v = Verifier::parse(&s.verifier().encode()).unwrap();
        let cp = Checkpoint {
            origin: "example.com/callgate/records".into(),
            size: 42,
            root: [7; 32],
        };
        let note = s.sign(&cp.text());
        assert_eq!(Checkpoint::open(&note, &v).unwrap(), cp);
        // The size changed after signing.
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            Checkpoint::open(&forged, &v),
            Err(NoteError::BadSignature(_))
        ));
        // Signed by another key of the same name: not this key's signature.
        let other = Signer::generate("example.com/callgate/records").unwrap();
        assert!(matches!(
            Checkpoint::open(&other.sign(&cp.text()), &v),
            Err(NoteError::NoSignature(_))
        ));
        // A verifier key whose ID does not match its key is refused.
        let enc = v.encode();
        let id = enc.split('+').nth(1).unwrap();
        let bad_id = enc.replacen(id, "00000000", 1);
        assert!(Verifier::parse(&bad_id).is_err());
    }
}
