//! Seals on what hosts share through the fleet's database: signed notes
//! ([`crate::util::note`]) by the host's records key over a held call, a verdict and a grant,
//! so that a host need not take the database's word for them (`fleet.trusted_keys`).
//!
//! The texts (each line ends in a newline; JSON is compact, on one line):
//!
//! ```text
//! callgate fleet request v1      callgate fleet verdict v1        callgate fleet grant v1
//! <id>                           <id>                             <id>
//! <request JSON>                 <state>                          <expires_at_ms>
//!                                <grant_ms or ->                  <grant JSON>
//!                                <SHA-256 hex of the request seal>
//!                                <verdict JSON>
//! ```
//! A seal rides in its row's JSON as the field `seal`; the rest of the JSON is what it seals.
use std::sync::Arc;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::util::note::{Signer, Verifier};

pub const REQUEST: &str = "callgate fleet request v1";
pub const VERDICT: &str = "callgate fleet verdict v1";
pub const GRANT: &str = "callgate fleet grant v1";
/// The field of a row's JSON that holds its seal.
pub const FIELD: &str = "seal";

/// A verdict as its seal states it.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedVerdict {
    pub id: String,
    pub state: String,
    pub grant_ms: Option<i64>,
    /// SHA-256 (hex) of the request seal the verdict was given on.
    pub request_digest: String,
    pub verdict: Json,
}

/// What `status` and `/metrics` show of the seals.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrustStatus {
    /// Seals are checked (`fleet.trusted_keys`); false: the database is trusted.
    pub sealed: bool,
    pub trusted_keys: usize,
    /// Verdicts on calls held here refused (not sealed by a trusted host, or not as the row says).
    pub refused_verdicts: u64,
    /// Grants refused likewise.
    pub refused_grants: u64,
    /// Held calls of other hosts an approver here was refused to judge.
    pub refused_requests: u64,
}

/// This host's key, and the keys whose seals it trusts (none: the database is trusted).
pub struct Trust {
    signer: Arc<Signer>,
    keys: Option<Vec<Verifier>>,
}

impl Trust {
    pub fn new(signer: Arc<Signer>, keys: Option<Vec<Verifier>>) -> Self {
        Self { signer, keys }
    }

    /// Seals are checked (`fleet.trusted_keys` is set).
    pub fn enforced(&self) -> bool {
        self.keys.is_some()
    }

    pub fn key_count(&self) -> usize {
        self.keys.as_ref().map_or(0, Vec::len)
    }

    /// `json` with its seal over `text` (what the database is given).
    fn sealed(&self, text: &str, json: &Json) -> Json {
        let mut out = json.clone();
        if let Json::Object(m) = &mut out {
            m.remove(FIELD);
            m.insert(FIELD.into(), Json::String(self.signer.sign(text)));
        }
        out
    }

    /// The text of `note` if a trusted key signed it.
    fn open<'a>(&self, note: &'a str) -> Result<&'a str, String> {
        let keys = self.keys.as_deref().unwrap_or_default();
        let mut why = String::from("no trusted key");
        for k in keys {
            match k.open(note) {
                Ok(text) => return Ok(text),
                Err(e) => why = e.to_string(),
            }
        }
        Err(format!("its seal does not open with a trusted key ({why})"))
    }

    /// A held call's row JSON, sealed; and the seal's digest (kept to check verdicts with).
    pub fn seal_request(&self, id: &str, request: &Json) -> (Json, String) {
        let row = self.sealed(&request_text(id, &unsealed(request)), request);
        let d = row.get(FIELD).and_then(Json::as_str).map(digest);
        (row, d.unwrap_or_default())
    }

    /// The request an approver may judge, from a row's JSON: with seals enforced, the sealed
    /// one (which must be the row's, field by field); and the digest of its seal.
    pub fn open_request(&self, id: &str, row: &Json) -> Result<(Json, String), String> {
        let seal = row.get(FIELD).and_then(Json::as_str);
        let d = seal.map(digest).unwrap_or_default();
        if !self.enforced() {
            return Ok((unsealed(row), d));
        }
        let seal = seal.ok_or("it carries no seal")?;
        let (sid, sealed) = parse_request(self.open(seal)?)?;
        if sid != id {
            return Err(format!("its seal is for request {sid}"));
        }
        if sealed != unsealed(row) {
            return Err("the database's copy differs from what its host sealed".into());
        }
        Ok((sealed, d))
    }

    /// A verdict's JSON for the database, sealed.
    pub fn seal_verdict(&self, v: &SealedVerdict) -> Json {
        self.sealed(&verdict_text(v), &v.verdict)
    }

    /// The verdict to apply to request `id` (sealed, by this host, with digest `request`),
    /// whose row says `state`: with seals enforced, as its seal states it, which must name
    /// this id, this state and this request; else as the row says.
    pub fn open_verdict(
        &self,
        id: &str,
        state: &str,
        request: Option<&str>,
        verdict: &Json,
        grant_ms: Option<i64>,
    ) -> Result<(Json, Option<i64>), String> {
        if !self.enforced() {
            return Ok((unsealed(verdict), grant_ms));
        }
        let seal = verdict
            .get(FIELD)
            .and_then(Json::as_str)
            .ok_or("the verdict carries no seal")?;
        let v = parse_verdict(self.open(seal)?)?;
        if v.id != id {
            return Err(format!("its seal is for request {}", v.id));
        }
        if v.state != state {
            return Err(format!("its seal says {}, the database {state}", v.state));
        }
        match request {
            Some(d) if d == v.request_digest => {}
            Some(_) => return Err("its seal names another request than the one held here".into()),
            None => return Err("this host holds no seal of the request".into()),
        }
        Ok((v.verdict, v.grant_ms))
    }

    /// A grant's JSON for the database, sealed.
    pub fn seal_grant(&self, id: &str, expires_at_ms: u64, grant: &Json) -> Json {
        self.sealed(&grant_text(id, expires_at_ms, &unsealed(grant)), grant)
    }

    /// A grant from the database: with seals enforced, as its seal states it.
    pub fn open_grant(&self, grant: &Json) -> Result<Json, String> {
        if !self.enforced() {
            return Ok(unsealed(grant));
        }
        let seal = grant
            .get(FIELD)
            .and_then(Json::as_str)
            .ok_or("the grant carries no seal")?;
        let (id, expires, sealed) = parse_grant(self.open(seal)?)?;
        if sealed.get("id").and_then(Json::as_str) != Some(id.as_str())
            || sealed.get("expires_at_ms").and_then(Json::as_u64) != Some(expires)
        {
            return Err("its seal's id or end differ from the grant it seals".into());
        }
        if grant.get("id").and_then(Json::as_str) != Some(id.as_str()) {
            return Err(format!("its seal is for grant {id}"));
        }
        Ok(sealed)
    }
}

/// `json` without its seal.
pub fn unsealed(json: &Json) -> Json {
    let mut out = json.clone();
    if let Json::Object(m) = &mut out {
        m.remove(FIELD);
    }
    out
}

/// SHA-256 of a seal, hex.
pub fn digest(seal: &str) -> String {
    Sha256::digest(seal.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn line(json: &Json) -> String {
    serde_json::to_string(json).unwrap_or_default()
}

pub fn request_text(id: &str, request: &Json) -> String {
    format!("{REQUEST}\n{id}\n{}\n", line(request))
}

pub fn verdict_text(v: &SealedVerdict) -> String {
    let grant = v
        .grant_ms
        .map_or_else(|| "-".to_string(), |g| g.to_string());
    format!(
        "{VERDICT}\n{}\n{}\n{grant}\n{}\n{}\n",
        v.id,
        v.state,
        v.request_digest,
        line(&unsealed(&v.verdict))
    )
}

pub fn grant_text(id: &str, expires_at_ms: u64, grant: &Json) -> String {
    format!("{GRANT}\n{id}\n{expires_at_ms}\n{}\n", line(grant))
}

/// The lines of a seal's text after its purpose line, which must be `purpose`.
fn lines<'a>(text: &'a str, purpose: &str, n: usize) -> Result<Vec<&'a str>, String> {
    let body = text
        .strip_suffix('\n')
        .ok_or("a seal's text ends in a newline")?;
    let mut it = body.split('\n');
    if it.next() != Some(purpose) {
        return Err(format!("its seal is not a {purpose:?}"));
    }
    let rest: Vec<&str> = it.collect();
    if rest.len() != n {
        return Err(format!(
            "its seal has {} lines, not {}",
            rest.len() + 1,
            n + 1
        ));
    }
    Ok(rest)
}

fn json(s: &str) -> Result<Json, String> {
    serde_json::from_str(s).map_err(|e| format!("its seal's JSON: {e}"))
}

pub fn parse_request(text: &str) -> Result<(String, Json), String> {
    let l = lines(text, REQUEST, 2)?;
    Ok((l[0].to_string(), json(l[1])?))
}

pub fn parse_verdict(text: &str) -> Result<SealedVerdict, String> {
    let l = lines(text, VERDICT, 5)?;
    let grant_ms = match l[2] {
        "-" => None,
        g => Some(
            g.parse::<i64>()
                .map_err(|_| "its seal's grant is not a number")?,
        ),
    };
    Ok(SealedVerdict {
        id: l[0].to_string(),
        state: l[1].to_string(),
        grant_ms,
        request_digest: l[3].to_string(),
        verdict: json(l[4])?,
    })
}

pub fn parse_grant(text: &str) -> Result<(String, u64, Json), String> {
    let l = lines(text, GRANT, 3)?;
    let expires = l[1]
        .parse::<u64>()
        .map_err(|_| "its seal's end is not a number")?;
    Ok((l[0].to_string(), expires, json(l[2])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host(name: &str) -> Arc<Signer> {
        Arc::new(Signer::generate(name).unwrap())
    }

    #[test]
    fn the_seal_texts() {
        let r = json!({"id": "r1", "service": "payments", "args": {"note": "a\nb"}});
        assert_eq!(
            request_text("r1", &r),
            "callgate fleet request v1\nr1\n{\"args\":{\"note\":\"a\\nb\"},\"id\":\"r1\",\"service\":\"payments\"}\n"
        );
        let v = SealedVerdict {
            id: "r1".into(),
            state: "approved".into(),
            grant_ms: Some(600_000),
            request_digest: "ab".repeat(32),
            verdict: json!({"approved": true, "by": "lee"}),
        };
        let text = verdict_text(&v);
        assert_eq!(
            text,
            format!(
                "callgate fleet verdict v1\nr1\napproved\n600000\n{}\n{{\"approved\":true,\"by\":\"lee\"}}\n",
                "ab".repeat(32)
            )
        );
        assert_eq!(parse_verdict(&text).unwrap(), v);
        let once = SealedVerdict {
            grant_ms: None,
            ..v.clone()
        };
        assert!(verdict_text(&once).contains("\napproved\n-\n"));
        assert_eq!(parse_verdict(&verdict_text(&once)).unwrap(), once);
        let g = json!({"id": "g1", "expires_at_ms": 5});
        assert_eq!(
            grant_text("g1", 5, &g),
            "callgate fleet grant v1\ng1\n5\n{\"expires_at_ms\":5,\"id\":\"g1\"}\n"
        );
        assert_eq!(
            parse_grant(&grant_text("g1", 5, &g)).unwrap(),
            ("g1".into(), 5, g)
        );
        // Another purpose's text is not this one.
        assert!(parse_verdict(&request_text("r1", &r)).is_err());
        assert!(parse_request(&grant_text("g1", 5, &json!({}))).is_err());
    }

    #[test]
    fn seals_open_with_trusted_keys_only() {
        let (a, b, eve) = (host("a"), host("b"), host("eve"));
        let keys = Some(vec![a.verifier(), b.verifier()]);
        let on_a = Trust::new(a.clone(), keys.clone());
        let on_b = Trust::new(b.clone(), keys);
        let request = json!({"id": "r1", "service": "payments", "args": {"amount": 500}});
        let (row, held) = on_a.seal_request("r1", &request);
        // B judges what A sealed, and nothing else.
        let (seen, digest_b) = on_b.open_request("r1", &row).unwrap();
        assert_eq!(seen, request);
        assert_eq!(digest_b, held);
        let mut altered = row.clone();
        altered["args"]["amount"] = json!(5);
        assert!(
            on_b.open_request("r1", &altered)
                .unwrap_err()
                .contains("differs")
        );
        assert!(on_b.open_request("r2", &row).is_err());
        assert!(on_b.open_request("r1", &request).is_err());
        let (by_eve, _) = Trust::new(eve.clone(), None).seal_request("r1", &request);
        assert!(on_b.open_request("r1", &by_eve).is_err());

        // A applies B's verdict on this request, in this state, and nothing else.
        let v = SealedVerdict {
            id: "r1".into(),
            state: "approved".into(),
            grant_ms: Some(1000),
            request_digest: digest_b,
            verdict: json!({"approved": true, "by": "lee"}),
        };
        let sealed = on_b.seal_verdict(&v);
        let (verdict, grant) = on_a
            .open_verdict("r1", "approved", Some(&held), &sealed, None)
            .unwrap();
        assert_eq!((verdict, grant), (v.verdict.clone(), Some(1000)));
        assert!(
            on_a.open_verdict("r2", "approved", Some(&held), &sealed, None)
                .is_err()
        );
        assert!(
            on_a.open_verdict("r1", "denied", Some(&held), &sealed, None)
                .is_err()
        );
        assert!(
            on_a.open_verdict("r1", "approved", Some("00"), &sealed, None)
                .is_err()
        );
        assert!(
            on_a.open_verdict("r1", "approved", Some(&held), &v.verdict, None)
                .is_err()
        );
        let forged = Trust::new(eve, None).seal_verdict(&v);
        assert!(
            on_a.open_verdict("r1", "approved", Some(&held), &forged, None)
                .is_err()
        );
        // The row's other fields do not count: the seal's verdict does.
        let mut edited = sealed.clone();
        edited["by"] = json!("mallory");
        let (verdict, _) = on_a
            .open_verdict("r1", "approved", Some(&held), &edited, Some(9))
            .unwrap();
        assert_eq!(verdict["by"], "lee");

        // Grants likewise.
        let g = json!({"id": "g1", "expires_at_ms": 77, "caller": "c"});
        let sg = on_b.seal_grant("g1", 77, &g);
        assert_eq!(on_a.open_grant(&sg).unwrap(), g);
        assert!(on_a.open_grant(&g).is_err());
        let mut longer = sg.clone();
        longer["id"] = json!("g2");
        assert!(on_a.open_grant(&longer).is_err());

        // Without trusted keys the database is trusted: rows are taken as they are.
        let open = Trust::new(a, None);
        assert!(!open.enforced());
        assert_eq!(
            open.open_request("r1", &altered).unwrap().0["args"]["amount"],
            5
        );
        assert_eq!(open.open_grant(&g).unwrap(), g);
    }
}
