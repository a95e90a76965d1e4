//! C2SP signed notes with Ed25519 keys in the Go `note` package's text forms: the signer
//! key `PRIVATE+KEY+<name>+<key ID hex>+base64(0x01 ‖ seed)` and the verifier key
//! `<name>+<key ID hex>+base64(0x01 ‖ public key)`. A note is text followed by a blank line
//! and signature lines (`— <key name> base64(key ID[4] ‖ signature[64])`).
//!
//! One key per host signs: the records' checkpoints ([`crate::record::note`]), and in fleet
//! mode the held calls, verdicts and grants it shares ([`crate::approve`]), so that what a
//! host reads from the fleet's database can be checked against the keys it trusts.
use std::path::{Path, PathBuf};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signer key's file in the state directory.
pub const KEY_FILE: &str = "records-checkpoint.key";
/// The systemd credential (`LoadCredential=`) a signer key can come from instead.
pub const CREDENTIAL: &str = "callgate-records-key";

/// Ed25519 in signed-note's signature-type byte.
pub(crate) const ED25519: u8 = 0x01;

#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed key: {0}")]
    Key(&'static str),
    #[error("malformed note: {0}")]
    Note(&'static str),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
    #[error("the signature by {0} does not verify (forged or altered note)")]
    BadSignature(String),
    #[error("no signature by key {0}")]
    NoSignature(String),
}

/// `SHA-256(name ‖ "\n" ‖ type ‖ public key)[:4]`: the key ID of signed-note (type 0x01)
/// and of tlog-cosignature (type 0x04).
fn key_id(name: &str, alg: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

fn hex4(id: &[u8; 4]) -> String {
    format!("{:08x}", u32::from_be_bytes(*id))
}

/// Splits `<name>+<id hex>+base64(type ‖ key)`: the name and the 32 key bytes, the type
/// checked (the ID is checked by the caller, against the key it makes).
fn split_key(text: &str, alg: u8) -> Result<(String, [u8; 32]), NoteError> {
    // Names have no '+'; base64 may.
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::Key("expected <name>+<key id>+<key>"));
    };
    if !valid_name(name) {
        return Err(NoteError::Key("bad key name"));
    }
    if id.len() != 8 || u32::from_str_radix(id, 16).is_err() {
        return Err(NoteError::Key("bad key id"));
    }
    let raw = B64
        .decode(b64)
        .map_err(|_| NoteError::Key("the key is not base64"))?;
    if raw.len() != 33 || raw[0] != alg {
        return Err(NoteError::Key(match alg {
            ED25519 => "not an Ed25519 signed-note key (type 0x01)",
            _ => "not an Ed25519 cosignature key (type 0x04)",
        }));
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&raw[1..]);
    Ok((name.to_string(), k))
}

/// A named Ed25519 key pair in the Go `note` package's text form,
/// `PRIVATE+KEY+<name>+<key ID hex>+base64(type ‖ seed)`: a checkpoint's [`Signer`]
/// (type 0x01) and a witness's cosigner (type 0x04) are both one.
pub(crate) struct KeyPair {
    name: String,
    key: SigningKey,
    id: [u8; 4],
    alg: u8,
}

impl KeyPair {
    /// A new key named `name`.
    pub(crate) fn generate(name: &str, alg: u8) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key(
                "a key name must be non-empty, without spaces or '+'",
            ));
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| NoteError::Key("no randomness"))?;
        Ok(Self::from_seed(name, alg, seed))
    }

    fn from_seed(name: &str, alg: u8, seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(name, alg, &key.verifying_key().to_bytes());
        Self {
            name: name.to_string(),
            key,
            id,
            alg,
        }
    }

    pub(crate) fn parse(text: &str, alg: u8) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::Key("a signer key starts with PRIVATE+KEY+"))?;
        let (name, seed) = split_key(rest, alg)?;
        let s = Self::from_seed(&name, alg, seed);
        if s.encode() != text.trim() {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        Ok(s)
    }

    pub(crate) fn encode(&self) -> String {
        let mut raw = vec![self.alg];
        raw.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex4(&self.id),
            B64.encode(raw)
        )
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            id: self.id,
            alg: self.alg,
        }
    }

    /// The key ID followed by the signature of `msg`: what a signature line carries, but for
    /// a cosignature's timestamp, which the caller puts between them.
    pub(crate) fn sign(&self, msg: &[u8]) -> ([u8; 4], [u8; 64]) {
        (self.id, self.key.sign(msg).to_bytes())
    }

    /// `<state_dir>/<file>` (read, or created 0600 holding a new key named `name`).
    pub(crate) fn load_or_create(path: &Path, name: &str, alg: u8) -> Result<Self, NoteError> {
        let io = |source| NoteError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::parse(&text, alg),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let s = Self::generate(name, alg)?;
        crate::util::fs::write_atomic_mode(path, format!("{}\n", s.encode()).as_bytes(), 0o600)
            .map_err(io)?;
        Ok(s)
    }
}

/// The public half of a [`KeyPair`]: `<name>+<key ID hex>+base64(type ‖ public key)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicKey {
    name: String,
    key: VerifyingKey,
    id: [u8; 4],
    alg: u8,
}

impl PublicKey {
    pub(crate) fn parse(text: &str, alg: u8) -> Result<Self, NoteError> {
        let (name, public) = split_key(text, alg)?;
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::Key("not an Ed25519 public key"))?;
        let v = Self {
            id: key_id(&name, alg, &public),
            name,
            key,
            alg,
        };
        if v.encode() != text.trim() {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        Ok(v)
    }

    pub(crate) fn encode(&self) -> String {
        let mut raw = vec![self.alg];
        raw.extend_from_slice(&self.key.to_bytes());
        format!("{}+{}+{}", self.name, hex4(&self.id), B64.encode(raw))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Is `raw` (a signature line's decoded bytes) by this key: its name and key ID?
    pub(crate) fn owns(&self, name: &str, raw: &[u8]) -> bool {
        name == self.name && raw.len() >= 4 && raw[..4] == self.id
    }

    pub(crate) fn verifies(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.key
            .verify_strict(msg, &Signature::from_bytes(sig))
            .is_ok()
    }
}

/// The key that signs notes: the host's records (checkpoint) key.
pub struct Signer(KeyPair);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.verifier().encode())
    }
}

impl Signer {
    /// A new key named `name`.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        KeyPair::generate(name, ED25519).map(Self)
    }

    /// `PRIVATE+KEY+<name>+<id>+<base64(0x01 ‖ seed)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        KeyPair::parse(text, ED25519).map(Self)
    }

    pub fn encode(&self) -> String {
        self.0.encode()
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    pub fn verifier(&self) -> Verifier {
        Verifier(self.0.public())
    }

    /// `text` (ending in a newline) as a signed note.
    pub fn sign(&self, text: &str) -> String {
        let (id, sig) = self.0.sign(text.as_bytes());
        let mut raw = Vec::with_capacity(68);
        raw.extend_from_slice(&id);
        raw.extend_from_slice(&sig);
        format!("{text}\n\u{2014} {} {}\n", self.name(), B64.encode(raw))
    }

    /// The signer key: the systemd credential if there is one, else `<state_dir>/`[`KEY_FILE`],
    /// created (0600) named `name` on first start.
    pub fn load_or_create(state_dir: &Path, name: &str) -> Result<Self, NoteError> {
        if let Some(creds) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&creds).join(CREDENTIAL);
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Self::parse(&text);
            }
        }
        KeyPair::load_or_create(&state_dir.join(KEY_FILE), name, ED25519).map(Self)
    }
}

/// A verifier key: opens the notes its signer key signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier(PublicKey);

impl Verifier {
    /// `<name>+<id>+<base64(0x01 ‖ public key)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        PublicKey::parse(text, ED25519).map(Self)
    }

    pub fn encode(&self) -> String {
        self.0.encode()
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The text of `note` if this key signed it. Signatures by other keys are ignored; one by
    /// this key that does not verify refuses the note.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        if note.len() > 1 << 16 {
            return Err(NoteError::Note("too long"));
        }
        if note.chars().any(|c| c < ' ' && c != '\n') {
            return Err(NoteError::Note("control characters"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Note("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(NoteError::Note("the signatures do not end in a newline"));
        }
        let mut verified = false;
        for line in sigs.lines() {
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(NoteError::Note("a signature line starts with an em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(NoteError::Note("a signature line is <name> <signature>"))?;
            let raw = B64
                .decode(b64)
                .map_err(|_| NoteError::Note("a signature is not base64"))?;
            if !self.0.owns(name, &raw) {
                continue;
            }
            let sig: [u8; 64] = raw[4..]
                .try_into()
                .map_err(|_| NoteError::BadSignature(self.encode()))?;
            if !self.0.verifies(text.as_bytes(), &sig) {
                return Err(NoteError::BadSignature(self.encode()));
            }
            verified = true;
        }
        if !verified {
            return Err(NoteError::NoSignature(self.encode()));
        }
        Ok(text)
    }
}

/// Verifier keys from `path`: one a line, blank lines and `#` comments skipped; a bad line
/// is named by `path:line`. An empty list is an error (it would trust no one).
pub fn read_verifiers(path: &Path) -> Result<Vec<Verifier>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys = parse_verifiers(&text).map_err(|(n, e)| format!("{}:{n}: {e}", path.display()))?;
    if keys.is_empty() {
        return Err(format!(
            "{}: no keys (a line per host: `<name>+<id>+<key>`, as `callgate records key` prints)",
            path.display()
        ));
    }
    Ok(keys)
}

/// [`read_verifiers`]' lines; a bad one as its number (from 1) and why.
pub fn parse_verifiers(text: &str) -> Result<Vec<Verifier>, (usize, NoteError)> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let k = Verifier::parse(line).map_err(|e| (n + 1, e))?;
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_verifier_keys_names_its_bad_line() {
        let a = Signer::generate("a.example/callgate/records").unwrap();
        let b = Signer::generate("b.example/callgate/records").unwrap();
        let text = format!(
            "# the fleet's hosts\n\n{}\n  {}  \n",
            a.verifier().encode(),
            b.verifier().encode()
        );
        let keys = parse_verifiers(&text).unwrap();
        assert_eq!(keys, vec![a.verifier(), b.verifier()]);
        let bad = format!("{}\nnot-a-key\n", a.verifier().encode());
        let (line, e) = parse_verifiers(&bad).unwrap_err();
        assert_eq!(line, 2);
        assert!(e.to_string().contains("malformed key"), "{e}");
        let dir = std::env::temp_dir().join(format!("callgate-keys-{}", std::process::id()));
        std::fs::write(&dir, bad).unwrap();
        let e = read_verifiers(&dir).unwrap_err();
        assert!(
            e.ends_with(":2: malformed key: expected <name>+<key id>+<key>"),
            "{e}"
        );
        std::fs::write(&dir, "# nobody\n").unwrap();
        assert!(read_verifiers(&dir).unwrap_err().contains("no keys"));
        let _ = std::fs::remove_file(&dir);
    }

    /// The example of C2SP signed-note, signed with the Go `note` package's test key.
    #[test]
    fn the_go_note_package_test_vector_verifies() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let note = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let v = Verifier::parse(vkey).unwrap();
        assert!(v.open(note).is_ok());
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let s = Signer::parse(skey).unwrap();
        assert_eq!(s.verifier().encode(), vkey);
        let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
        assert_eq!(s.sign(text), note);
    }
}
