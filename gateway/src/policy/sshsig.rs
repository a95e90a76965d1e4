//! Whether a policy commit is signed by someone allowed to change policy: the commit's SSH
//! signature (`gpgsig` holding an SSHSIG, as `git commit -S` with `gpg.format=ssh` writes it)
//! checked against an allowed-signers file in the format of git's `gpg.ssh.allowedSignersFile`
//! (`ssh-keygen -Y verify`): principals, options, key. Only the "git" namespace counts, and the
//! key's principals must match the committer's email.
use std::path::Path;

use ssh_key::{PublicKey, SshSig};

/// One line of an allowed-signers file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// Comma-separated patterns (`*`, `?`, `!negated`), matched against the committer's email.
    pub principals: String,
    /// The `namespaces="…"` option, if any (patterns; the signature's must match).
    pub namespaces: Option<String>,
    /// `valid-after` / `valid-before`, as `YYYYMMDD[HHMM[SS]]` padded to 14 digits.
    pub valid_after: Option<u64>,
    pub valid_before: Option<u64>,
    pub key: PublicKey,
}

#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    pub signers: Vec<AllowedSigner>,
}

/// Why a commit is not taken. `kind` is a short stable word for metrics and scripts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct Refusal {
    pub kind: &'static str,
    pub detail: String,
}

impl Refusal {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// Who signed an accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub principal: String,
    pub fingerprint: String,
}

impl AllowedSigners {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the file; a line that cannot be read is an error (a silently skipped signer
    /// would be a surprise), `cert-authority` lines are refused (certificates are not
    /// supported).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut signers = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |e: String| format!("line {}: {e}", n + 1);
            let (principals, rest) = token(line);
            let rest = rest.trim_start();
            let (options, rest) = if is_key_type(first_word(rest)) {
                (String::new(), rest)
            } else {
                let (o, r) = token(rest);
                (o, r.trim_start())
            };
            let mut s = AllowedSigner {
                principals,
                namespaces: None,
                valid_after: None,
                valid_before: None,
                key: PublicKey::from_openssh(rest.trim())
                    .map_err(|e| at(format!("not a public key: {e}")))?,
            };
            for opt in split_options(&options) {
                let (name, value) = match opt.split_once('=') {
                    Some((n, v)) => (
                        n.to_ascii_lowercase(),
                        Some(v.trim_matches('"').to_string()),
                    ),
                    None => (opt.to_ascii_lowercase(), None),
                };
                match (name.as_str(), value) {
                    ("namespaces", Some(v)) => s.namespaces = Some(v),
                    ("valid-after", Some(v)) => s.valid_after = Some(parse_time(&v).map_err(at)?),
                    ("valid-before", Some(v)) => s.valid_before = Some(parse_time(&v).map_err(at)?),
                    ("cert-authority", _) => {
                        return Err(at("cert-authority is not supported".into()));
                    }
                    (other, _) => return Err(at(format!("unknown option {other:?}"))),
                }
            }
            signers.push(s);
        }
        Ok(Self { signers })
    }

    /// Verifies `signature` (an armored SSHSIG) over `signed`, made by `committer` (email) at
    /// `when` (unix seconds).
    pub fn verify(
        &self,
        signature: &[u8],
        signed: &[u8],
        committer: &str,
        when: i64,
    ) -> Result<Signer, Refusal> {
        let sig = SshSig::from_pem(signature)
            .map_err(|e| Refusal::new("bad_signature", format!("not an SSH signature: {e}")))?;
        let key = sig.public_key();
        let fingerprint = key.fingerprint(Default::default()).to_string();
        let candidates: Vec<&AllowedSigner> = self
            .signers
            .iter()
            .filter(|s| s.key.key_data() == key)
            .collect();
        if candidates.is_empty() {
            return Err(Refusal::new(
                "unknown_signer",
                format!("key {fingerprint} is not in allowed_signers"),
            ));
        }
        let stamp = utc_stamp(when);
        let mut why = Vec::new();
        for s in candidates {
            if !patterns_match(&s.principals, committer) {
                why.push(format!(
                    "key {fingerprint} is allowed for {:?}, the committer is {committer:?}",
                    s.principals
                ));
                continue;
            }
            if let Some(ns) = &s.namespaces
                && !patterns_match(ns, "git")
            {
                why.push(format!("key {fingerprint} may sign only namespaces {ns:?}"));
                continue;
            }
            if s.valid_after.is_some_and(|t| stamp < t) || s.valid_before.is_some_and(|t| stamp > t)
            {
                why.push(format!(
                    "key {fingerprint} was not valid at the commit's time"
                ));
                continue;
            }
            // Checks the namespace ("git") and that the signature is this key's over `signed`.
            return match s.key.verify("git", signed, &sig) {
                Ok(()) => Ok(Signer {
                    principal: committer.to_string(),
                    fingerprint,
                }),
                Err(e) => Err(Refusal::new(
                    "bad_signature",
                    format!("signature by {fingerprint} does not verify: {e}"),
                )),
            };
        }
        Err(Refusal::new("unknown_signer", why.join("; ")))
    }

    /// Verifies commit `oid` of `repo`.
    pub fn verify_commit(
        &self,
        repo: &git2::Repository,
        oid: git2::Oid,
    ) -> Result<Signer, Refusal> {
        let (sig, signed) = match repo.extract_signature(&oid, None) {
            Ok(pair) => pair,
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                return Err(Refusal::new("unsigned", "the commit carries no signature"));
            }
            Err(e) => return Err(Refusal::new("unsigned", e.message().to_string())),
        };
        let commit = repo
            .find_commit(oid)
            .map_err(|e| Refusal::new("bad_signature", e.message().to_string()))?;
        let committer = commit.committer();
        let email = committer.email().unwrap_or_default().to_string();
        self.verify(&sig, &signed, &email, committer.when().seconds())
    }
}

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or("")
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-") || word.starts_with("sk-")
}

/// The first whitespace-delimited token, double quotes grouping; and the rest.
fn token(s: &str) -> (String, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                return (s[..i].trim_matches('"').to_string(), &s[i..]);
            }
            _ => {}
        }
    }
    (s.trim_matches('"').to_string(), "")
}

/// Comma-separated options, commas inside quotes kept.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

fn parse_time(v: &str) -> Result<u64, String> {
    let digits = v.trim_end_matches(['Z', 'z']);
    if !digits.chars().all(|c| c.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(format!("bad time {v:?} (YYYYMMDD[HHMM[SS]])"));
    }
    format!("{digits:0<14}")
        .parse()
        .map_err(|_| format!("bad time {v:?}"))
}

/// `when` as the number YYYYMMDDHHMMSS (UTC).
fn utc_stamp(when: i64) -> u64 {
    let days = when.div_euclid(86_400);
    let secs = when.rem_euclid(86_400) as u64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = (if m <= 2 { y + 1 } else { y }).max(0) as u64;
    ((y * 100 + m) * 100 + d) * 1_000_000
        + (secs / 3600) * 10_000
        + (secs / 60 % 60) * 100
        + secs % 60
}

/// OpenSSH pattern lists: a match of any positive pattern and of no negated one.
fn patterns_match(list: &str, what: &str) -> bool {
    let mut matched = false;
    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), what.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), what.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(patterns_match("*@example.com", "ops@example.com"));
        assert!(patterns_match("a@x,ops@example.com", "ops@example.com"));
        assert!(!patterns_match(
            "*@example.com,!bad@example.com",
            "bad@example.com"
        ));
        assert!(!patterns_match("ops@example.com", "dev@example.com"));
        assert!(patterns_match("git,file", "git"));
    }

    #[test]
    fn times() {
        // 2021-01-01T00:00:00Z
        assert_eq!(utc_stamp(1_609_459_200), 20210101000000);
        assert_eq!(utc_stamp(1_609_459_200 + 3723), 20210101010203);
        assert_eq!(parse_time("20210101").unwrap(), 20210101000000);
    }

    use std::process::Command;

    /// A scratch git repository with an ed25519 key; commits signed with `git commit -S`
    /// (`gpg.format=ssh`, i.e. `ssh-keygen -Y sign`).
    struct Scratch {
        dir: std::path::PathBuf,
    }

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "callgate-sshsig-{name}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let s = Self { dir };
            s.keygen("key");
            s.keygen("other");
            s.git(&["init", "-q", "-b", "main", "repo"], &s.dir);
            s
        }

        fn repo(&self) -> std::path::PathBuf {
            self.dir.join("repo")
        }

        fn keygen(&self, name: &str) {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(self.dir.join(name))
                .status()
                .expect("ssh-keygen (Debian's openssh-client; `cargo xtask setup`)");
            assert!(st.success());
        }

        fn pubkey(&self, name: &str) -> String {
            std::fs::read_to_string(self.dir.join(format!("{name}.pub")))
                .unwrap()
                .trim()
                .to_string()
        }

        fn git(&self, args: &[&str], cwd: &Path) {
            let out = Command::new("git")
                .args(["-c", "user.name=Ops", "-c", "user.email=ops@example.com"])
                .args(args)
                .current_dir(cwd)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .expect("git");
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// Commits a file change, signed with `key` (or unsigned); the commit id.
        fn commit(&self, text: &str, key: Option<&str>) -> git2::Oid {
            std::fs::write(self.repo().join("f.txt"), text).unwrap();
            self.git(&["add", "f.txt"], &self.repo());
            let signing = key.map(|k| self.dir.join(k).display().to_string());
            let mut args = vec!["-c", "gpg.format=ssh"];
            let keyarg;
            if let Some(k) = &signing {
                keyarg = format!("user.signingkey={k}");
                args.extend(["-c", keyarg.as_str(), "commit", "-q", "-S", "-m", text]);
            } else {
                args.extend(["commit", "-q", "--no-gpg-sign", "-m", text]);
            }
            self.git(&args, &self.repo());
            git2::Repository::open(self.repo())
                .unwrap()
                .refname_to_id("HEAD")
                .unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn real_commits_signed_unsigned_unknown_and_tampered() {
        let s = Scratch::new("verify");
        let allowed =
            AllowedSigners::parse(&format!("ops@example.com {}", s.pubkey("key"))).unwrap();
        let repo = git2::Repository::open(s.repo()).unwrap();

        let good = s.commit("one", Some("key"));
        let signer = allowed
            .verify_commit(&repo, good)
            .expect("signed by an allowed key");
        assert_eq!(signer.principal, "ops@example.com");
        assert!(signer.fingerprint.starts_with("SHA256:"));

        let unsigned = s.commit("two", None);
        assert_eq!(
            allowed.verify_commit(&repo, unsigned).unwrap_err().kind,
            "unsigned"
        );

        let stranger = s.commit("three", Some("other"));
        assert_eq!(
            allowed.verify_commit(&repo, stranger).unwrap_err().kind,
            "unknown_signer"
        );

        // The allowed key, but for another principal than the committer.
        let elsewhere =
            AllowedSigners::parse(&format!("dev@example.com {}", s.pubkey("key"))).unwrap();
        assert_eq!(
            elsewhere.verify_commit(&repo, good).unwrap_err().kind,
            "unknown_signer"
        );
        // Allowed only for another namespace.
        let file_only = AllowedSigners::parse(&format!(
            "ops@example.com namespaces=\"file\" {}",
            s.pubkey("key")
        ))
        .unwrap();
        assert_eq!(
            file_only.verify_commit(&repo, good).unwrap_err().kind,
            "unknown_signer"
        );

        // The signed commit's body changed, its signature kept: a new object that must fail.
        let odb = repo.odb().unwrap();
        let raw = odb.read(good).unwrap();
        let text = String::from_utf8(raw.data().to_vec()).unwrap();
        assert!(
            text.contains("gpgsig -----BEGIN SSH SIGNATURE-----"),
            "{text}"
        );
        let tampered_text = text.replacen("\none\n", "\nevil\n", 1);
        assert_ne!(tampered_text, text);
        let tampered = odb
            .write(git2::ObjectType::Commit, tampered_text.as_bytes())
            .unwrap();
        assert_eq!(
            allowed.verify_commit(&repo, tampered).unwrap_err().kind,
            "bad_signature"
        );
    }

    #[test]
    fn parses_options_and_rejects_garbage() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBAi0i2VhS3tbxYNSA0X61gvBqoqP0Ur4KZmU+0DfpEm";
        let s = AllowedSigners::parse(&format!(
            "# comment\nops@example.com {key} ops\n\"a@x,b@y\" namespaces=\"git,file\",valid-after=20200101 {key}\n"
        ))
        .unwrap();
        assert_eq!(s.signers.len(), 2);
        assert_eq!(s.signers[1].principals, "a@x,b@y");
        assert_eq!(s.signers[1].namespaces.as_deref(), Some("git,file"));
        assert_eq!(s.signers[1].valid_after, Some(20200101000000));
        assert!(AllowedSigners::parse("ops@example.com ssh-ed25519 AAAA").is_err());
        assert!(AllowedSigners::parse(&format!("ops cert-authority {key}")).is_err());
    }
}
