//! The C2SP tlog-witness protocol and tlog-cosignature format, shared by the gateway's
//! witness client ([`super::witness_client`]) and `callgate witness` ([`super::witness_server`]).
//!
//! A log asks a witness to cosign a checkpoint with
//!
//! ```text
//! POST <prefix>/add-checkpoint
//!
//! old <size the witness last cosigned, 0 if none>
//! <consistency proof hash, base64>       zero to 63 lines (RFC 6962 §2.1.2)
//!
//! <the signed checkpoint>
//! ```
//!
//! The witness answers 200 with its cosignature lines, 409 (`text/x.tlog.size`: the size it
//! holds) when the old size is not its own, 422 when the proof does not verify, 403 when no
//! signature by a key it trusts verifies, 404 for an origin it does not know, 400 for a
//! malformed request.
//!
//! A cosignature (tlog-cosignature v1, Ed25519) is a signed-note signature line whose key ID
//! is `SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[:4]` and whose signature is
//! `timestamp (u64, big-endian) ‖ Ed25519(message)` over
//! `"cosignature/v1\ntime <timestamp>\n" ‖ <checkpoint text>`.
use std::path::Path;

use base64::{Engine, engine::general_purpose::STANDARD as B64};

use super::{
    merkle::Hash,
    note::{KeyPair, NoteError, PublicKey},
};

/// The cosignature's signature-type byte (tlog-cosignature, Ed25519).
const COSIGNATURE: u8 = 0x04;
/// A client sends at most this many proof lines.
pub const MAX_PROOF: usize = 63;
/// `Content-Type` of a 409's body.
pub const SIZE_TYPE: &str = "text/x.tlog.size";
/// The witness's signer key in its state directory.
pub const KEY_FILE: &str = "witness.key";

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("witness key: {0}")]
    Key(#[from] NoteError),
    #[error("malformed add-checkpoint request: {0}")]
    Request(&'static str),
    #[error("malformed witness answer: {0}")]
    Answer(&'static str),
}

/// An `add-checkpoint` request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, signatures included.
    pub checkpoint: String,
}

/// A decimal with no leading zeroes (`0` itself is fine).
pub fn parse_size(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl AddCheckpoint {
    pub fn encode(&self) -> String {
        let mut out = format!("old {}\n", self.old);
        for h in &self.proof {
            out.push_str(&B64.encode(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    pub fn parse(body: &str) -> Result<Self, WitnessError> {
        let bad = WitnessError::Request;
        let (first, mut rest) = body.split_once('\n').ok_or(bad("no old size line"))?;
        let old = first
            .strip_prefix("old ")
            .and_then(parse_size)
            .ok_or(bad("the first line is not `old <size>`"))?;
        let mut proof = Vec::new();
        loop {
            let (line, after) = rest
                .split_once('\n')
                .ok_or(bad("no blank line before the checkpoint"))?;
            rest = after;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF {
                return Err(bad("more than 63 proof lines"));
            }
            let h: Hash = B64
                .decode(line)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(bad("a proof line is not a base64 SHA-256 hash"))?;
            proof.push(h);
        }
        if rest.is_empty() {
            return Err(bad("no checkpoint"));
        }
        Ok(Self {
            old,
            proof,
            checkpoint: rest.to_string(),
        })
    }
}

/// The body of a 409: the witness's size.
pub fn parse_conflict(body: &str) -> Option<u64> {
    parse_size(body.strip_suffix('\n')?)
}

/// The signature lines of a 200 (each `— <name> <base64>`), checked for shape only: the
/// client keeps them whatever key made them; whoever checks the note decides which it trusts.
pub fn parse_cosignatures(body: &str) -> Result<Vec<String>, WitnessError> {
    let bad = WitnessError::Answer;
    if body.is_empty() || !body.ends_with('\n') || body.len() > 1 << 16 {
        return Err(bad("expected signature lines ending in a newline"));
    }
    body.lines()
        .map(|line| {
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(bad("a signature line starts with an em dash"))?;
            let (name, sig) = rest
                .split_once(' ')
                .ok_or(bad("a signature line is <name> <signature>"))?;
            let raw = B64
                .decode(sig)
                .map_err(|_| bad("a signature is not base64"))?;
            if name.is_empty() || name.contains(char::is_whitespace) || raw.len() < 5 {
                return Err(bad("a malformed signature line"));
            }
            Ok(line.to_string())
        })
        .collect()
}

/// `note` with `lines` (cosignatures) added to its signatures, each once.
pub fn add_signatures(note: &str, lines: &[String]) -> String {
    let mut out = note.to_string();
    for l in lines {
        if !note.lines().any(|x| x == l) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn message(timestamp: u64, text: &str) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{text}")
}

/// A witness's key: cosigns checkpoints.
pub struct Cosigner(KeyPair);

impl std::fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cosigner({})", self.verifier().encode())
    }
}

impl Cosigner {
    pub fn generate(name: &str) -> Result<Self, WitnessError> {
        Ok(Self(KeyPair::generate(name, COSIGNATURE)?))
    }

    /// `PRIVATE+KEY+<name>+<id hex>+base64(0x04 ‖ seed)`.
    pub fn encode(&self) -> String {
        self.0.encode()
    }

    pub fn parse(text: &str) -> Result<Self, WitnessError> {
        Ok(Self(KeyPair::parse(text, COSIGNATURE)?))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier(self.0.public())
    }

    /// The cosignature line (newline-terminated) for the checkpoint text `text` at
    /// `timestamp` (Unix seconds).
    pub fn cosign(&self, text: &str, timestamp: u64) -> String {
        let (id, sig) = self.0.sign(message(timestamp, text).as_bytes());
        let mut raw = Vec::with_capacity(76);
        raw.extend_from_slice(&id);
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(&sig);
        format!("\u{2014} {} {}\n", self.name(), B64.encode(raw))
    }

    /// `<state_dir>/`[`KEY_FILE`], created (0600) named `name` on first start.
    pub fn load_or_create(state_dir: &Path, name: &str) -> Result<Self, WitnessError> {
        Ok(Self(KeyPair::load_or_create(
            &state_dir.join(KEY_FILE),
            name,
            COSIGNATURE,
        )?))
    }
}

/// A witness's public key (`<name>+<id hex>+base64(0x04 ‖ public key)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureVerifier(PublicKey);

impl CosignatureVerifier {
    pub fn parse(text: &str) -> Result<Self, WitnessError> {
        Ok(Self(PublicKey::parse(text, COSIGNATURE)?))
    }

    pub fn encode(&self) -> String {
        self.0.encode()
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The timestamp of this key's valid cosignature of the checkpoint text `text` among
    /// `lines`, if there is one.
    pub fn verify(&self, text: &str, lines: &[String]) -> Option<u64> {
        match self.check(text, lines) {
            Cosigned::Valid(ts) => Some(ts),
            _ => None,
        }
    }

    /// What `lines` hold for this key: a valid cosignature of `text`, only ones that do not
    /// verify (forged, altered, or of another checkpoint), or none.
    pub fn check(&self, text: &str, lines: &[String]) -> Cosigned {
        let mut seen = false;
        for line in lines {
            let Some((name, b64)) = line
                .strip_prefix("\u{2014} ")
                .and_then(|rest| rest.split_once(' '))
            else {
                continue;
            };
            let Ok(raw) = B64.decode(b64.trim_end()) else {
                continue;
            };
            if !self.0.owns(name, &raw) {
                continue;
            }
            seen = true;
            if raw.len() != 76 {
                continue;
            }
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&raw[4..12]);
            let ts = u64::from_be_bytes(ts);
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&raw[12..]);
            if self.0.verifies(message(ts, text).as_bytes(), &sig) {
                return Cosigned::Valid(ts);
            }
        }
        if seen {
            Cosigned::Bad
        } else {
            Cosigned::Missing
        }
    }
}

/// What a note holds for one witness key (see [`CosignatureVerifier::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cosigned {
    /// A cosignature that verifies, made at this time (Unix seconds).
    Valid(u64),
    /// Lines with this key's name and ID, none of which verifies.
    Bad,
    /// No line by this key.
    Missing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips() {
        let req = AddCheckpoint {
            old: 20852014,
            proof: vec![[1; 32], [2; 32]],
            checkpoint: "example.com/log\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/log AAAA\n".into(),
        };
        let text = req.encode();
        assert!(text.starts_with("old 20852014\nAQEB"));
        assert_eq!(AddCheckpoint::parse(&text).unwrap(), req);
        let none = AddCheckpoint {
            old: 0,
            proof: vec![],
            checkpoint: "o\n1\nx\n\n\u{2014} o AAAA\n".into(),
        };
        assert!(none.encode().starts_with("old 0\n\no\n"));
        assert_eq!(AddCheckpoint::parse(&none.encode()).unwrap(), none);
    }

    #[test]
    fn malformed_requests_are_refused() {
        let cp = "o\n1\nx\n\n\u{2014} o AAAA\n";
        for body in [
            String::new(),
            format!("old 01\n\n{cp}"),
            format!("old -1\n\n{cp}"),
            format!("new 1\n\n{cp}"),
            format!("old 1\nnot base64!\n\n{cp}"),
            format!("old 1\nAAAA\n\n{cp}"),
            "old 1\n\n".to_string(),
            format!("old 1\n{cp}"),
            format!(
                "old 1\n{}\n{cp}",
                format!("{}\n", B64.encode([0u8; 32])).repeat(64)
            ),
        ] {
            assert!(AddCheckpoint::parse(&body).is_err(), "{body:?}");
        }
        // 63 lines are fine.
        let ok = format!(
            "old 1\n{}\n{cp}",
            format!("{}\n", B64.encode([0u8; 32])).repeat(63)
        );
        assert_eq!(AddCheckpoint::parse(&ok).unwrap().proof.len(), 63);
    }

    #[test]
    fn answers_parse() {
        assert_eq!(parse_conflict("42\n"), Some(42));
        assert_eq!(parse_conflict("0\n"), Some(0));
        for bad in ["42", "042\n", "x\n", "\n", "4 2\n"] {
            assert_eq!(parse_conflict(bad), None, "{bad:?}");
        }
        let ok = "\u{2014} w.example/w1 CMp+6LWBU0anHGH5aNDTJkH/gj79sG+T6+iP2ThYN5krrDJbR1HDnucjL39QsZTSvVjyQLrdk3DXDqI5G2HgLatVs0pWh6Up69HVOw==\n";
        assert_eq!(parse_cosignatures(ok).unwrap().len(), 1);
        for bad in [
            "",
            "- w x\n",
            "\u{2014} w\n",
            "\u{2014} w !!\n",
            ok.trim_end(),
        ] {
            assert!(parse_cosignatures(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cosignature_verifies_and_an_altered_one_does_not() {
        let w = Cosigner::generate("witness.example/w1").unwrap();
        let again = Cosigner::parse(&w.encode()).unwrap();
        assert_eq!(again.verifier(), w.verifier());
        let v = CosignatureVerifier::parse(&w.verifier().encode()).unwrap();
        let text = "example.com/log\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let line = w.cosign(text, 1679315147);
        let lines = parse_cosignatures(&line).unwrap();
        assert_eq!(v.verify(text, &lines), Some(1679315147));
        assert_eq!(v.verify(&text.replace("\n5\n", "\n6\n"), &lines), None);
        let other = Cosigner::generate("witness.example/w1").unwrap();
        assert_eq!(other.verifier().verify(text, &lines), None);
        // A log key (type 0x01) is not a cosignature key.
        let log = super::super::note::Signer::generate("example.com/log").unwrap();
        assert!(CosignatureVerifier::parse(&log.verifier().encode()).is_err());
        let enc = v.encode();
        let id = enc.split('+').nth(1).unwrap().to_string();
        assert!(CosignatureVerifier::parse(&enc.replacen(&id, "00000000", 1)).is_err());
    }
}
