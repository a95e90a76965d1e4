//! `callgate witness`: a small C2SP tlog-witness for callgate logs, to run on another host.
//!
//! It knows the logs by their verifier keys (`callgate records key`). For each log (origin)
//! it keeps the latest checkpoint it cosigned, in `<state>/logs/<sha256(origin)>`, replaced
//! atomically (temp file, fsync, rename, directory fsync) before it answers. A checkpoint is
//! cosigned only when its signature verifies and a consistency proof from the checkpoint it
//! holds verifies too, so a log rolled back, rewritten or forked is refused (409 or 422) and
//! the witness keeps what it had, and the last refused request in `<state>/refused/`: the
//! evidence, two checkpoints signed by the log that cannot both be true.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    merkle,
    note::{self, Checkpoint},
    witness::{AddCheckpoint, Cosigner, SIZE_TYPE, WitnessError},
};

/// Largest request body read: a checkpoint and 63 hashes fit many times over.
const MAX_BODY: usize = 64 * 1024;

/// The witness: its key, the logs it knows, the checkpoints it holds.
pub struct Witness {
    key: Cosigner,
    /// Verifier keys by origin (a log may have more than one).
    logs: HashMap<String, Vec<note::Verifier>>,
    dir: PathBuf,
    /// Held while a request is checked against the stored checkpoint and that is replaced:
    /// the check and the update are one step.
    lock: Mutex<()>,
}

/// What the witness answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn text(status: StatusCode, body: impl Into<String>) -> Self {
        let mut body = body.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }
}

impl Witness {
    /// The witness of `state_dir`, trusting `log_keys`; its key is created there on first
    /// start, named `name`.
    pub fn open(
        state_dir: &Path,
        name: &str,
        log_keys: Vec<note::Verifier>,
    ) -> Result<Self, WitnessError> {
        let key = Cosigner::load_or_create(state_dir, name)?;
        let mut logs: HashMap<String, Vec<note::Verifier>> = HashMap::new();
        for k in log_keys {
            logs.entry(k.name().to_string()).or_default().push(k);
        }
        Ok(Self {
            key,
            logs,
            dir: state_dir.join("logs"),
            lock: Mutex::new(()),
        })
    }

    pub fn key(&self) -> &Cosigner {
        &self.key
    }

    fn path(&self, origin: &str) -> PathBuf {
        let h = Sha256::digest(origin.as_bytes());
        self.dir.join(super::segment::hex(&h.into()))
    }

    /// The checkpoint last cosigned for `origin`, as the log signed it.
    pub fn latest(&self, origin: &str) -> Option<(Checkpoint, String)> {
        let text = std::fs::read_to_string(self.path(origin)).ok()?;
        let body = text.split("\n\n").next()?;
        let cp = Checkpoint::parse(&format!("{body}\n")).ok()?;
        Some((cp, text))
    }

    /// Where the last refused request of a log is kept.
    fn refused_path(&self, origin: &str) -> PathBuf {
        let held = self.path(origin);
        let name = held.file_name().map(ToOwned::to_owned).unwrap_or_default();
        self.dir.with_file_name("refused").join(name)
    }

    /// Keeps the last refused request of a log whose signature verified, in
    /// `<state>/refused/`: with the checkpoint held, two checkpoints the log signed that
    /// cannot both be true.
    fn keep_refused(&self, origin: &str, body: &str) {
        let path = self.refused_path(origin);
        if let Err(e) = crate::util::fs::write_atomic_mode(&path, body.as_bytes(), 0o600) {
            warn!(origin, error = %e, "could not keep a refused checkpoint");
        }
    }

    /// Handles one `add-checkpoint` body; `now` is the cosignature's timestamp (Unix s).
    pub fn add_checkpoint(&self, body: &str, now: u64) -> Answer {
        let req = match AddCheckpoint::parse(body) {
            Ok(r) => r,
            Err(e) => return Answer::text(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let origin = req.checkpoint.split('\n').next().unwrap_or_default();
        let Some(keys) = self.logs.get(origin) else {
            return Answer::text(StatusCode::NOT_FOUND, format!("unknown log {origin:?}"));
        };
        let mut opened = None;
        for k in keys {
            if let Ok(text) = k.open(&req.checkpoint) {
                opened = Some(text);
                break;
            }
        }
        let Some(text) = opened else {
            warn!(origin, "refused a checkpoint no trusted key signed");
            return Answer::text(
                StatusCode::FORBIDDEN,
                "no signature by a key this witness trusts for the log verifies",
            );
        };
        let cp = match Checkpoint::parse(text) {
            Ok(cp) => cp,
            Err(e) => return Answer::text(StatusCode::BAD_REQUEST, e.to_string()),
        };
        if req.old > cp.size {
            return Answer::text(
                StatusCode::BAD_REQUEST,
                "the old size is larger than the checkpoint's",
            );
        }
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.latest(origin);
        let held_size = held.as_ref().map_or(0, |(c, _)| c.size);
        if req.old != held_size {
            return Answer {
                status: StatusCode::CONFLICT,
                content_type: SIZE_TYPE,
                body: format!("{held_size}\n"),
            };
        }
        match &held {
            Some((old, _)) if req.old == cp.size && old.root != cp.root => {
                warn!(
                    origin,
                    size = cp.size,
                    "refused a checkpoint of the size held with another root: the log forked"
                );
                self.keep_refused(origin, body);
                return Answer::text(
                    StatusCode::CONFLICT,
                    "a different tree of the size this witness holds: the log forked",
                );
            }
            Some((_, _)) if req.old == cp.size => {}
            Some((old, _)) => {
                if let Err(e) =
                    merkle::verify_consistency(old.size, cp.size, &old.root, &cp.root, &req.proof)
                {
                    warn!(
                        origin,
                        old = old.size,
                        new = cp.size,
                        error = %e,
                        "refused a checkpoint inconsistent with the one held (rewritten, rolled back or forked log); kept the one held"
                    );
                    self.keep_refused(origin, body);
                    return Answer::text(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "the consistency proof from {} to {} does not verify: {e}",
                            old.size, cp.size
                        ),
                    );
                }
            }
            None if !req.proof.is_empty() => {
                return Answer::text(StatusCode::BAD_REQUEST, "a proof from size 0 must be empty");
            }
            None => {}
        }
        if let Err(e) =
            crate::util::fs::write_atomic_mode(&self.path(origin), req.checkpoint.as_bytes(), 0o600)
        {
            warn!(origin, error = %e, "could not store a checkpoint");
            return Answer::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not store the checkpoint",
            );
        }
        info!(origin, size = cp.size, "cosigned a checkpoint");
        Answer {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            body: self.key.cosign(text, now),
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: http::Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let answer = if req.uri().path().ends_with("/add-checkpoint") {
            if req.method() != Method::POST {
                Answer::text(StatusCode::METHOD_NOT_ALLOWED, "POST only")
            } else {
                match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Err(_) => Answer::text(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
                    Ok(b) => match String::from_utf8(b.to_bytes().to_vec()) {
                        Err(_) => Answer::text(StatusCode::BAD_REQUEST, "not UTF-8"),
                        Ok(body) => {
                            let now = crate::util::time::now_ms() / 1000;
                            let me = self.clone();
                            tokio::task::spawn_blocking(move || me.add_checkpoint(&body, now))
                                .await
                                .unwrap_or_else(|_| {
                                    Answer::text(StatusCode::INTERNAL_SERVER_ERROR, "failed")
                                })
                        }
                    },
                }
            }
        } else if req.uri().path() == "/healthz" {
            Answer::text(StatusCode::OK, "ok")
        } else {
            Answer::text(StatusCode::NOT_FOUND, "not found")
        };
        let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
        *resp.status_mut() = answer.status;
        if let Ok(v) = http::HeaderValue::from_str(answer.content_type) {
            resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        Ok(resp)
    }

    /// Serves `listener` (HTTP/1.1) until `stop` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop.changed() => return,
            };
            let (stream, _) = match conn {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| me.clone().handle(req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let _ = conn.await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{
        merkle::{Tree, leaf_hash},
        note::Signer,
        witness::CosignatureVerifier,
    };

    fn tree(leaves: &[&str]) -> Tree {
        let mut t = Tree::new();
        for l in leaves {
            t.push(leaf_hash(l.as_bytes()));
        }
        t
    }

    fn signed(s: &Signer, t: &Tree, size: u64) -> String {
        s.sign(
            &Checkpoint {
                origin: s.name().into(),
                size,
                root: t.root(size).unwrap(),
            }
            .text(),
        )
    }

    #[test]
    fn the_witness_cosigns_consistent_checkpoints_and_refuses_the_rest() {
        let dir = std::env::temp_dir().join(format!("callgate-witness-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = Signer::generate("host.example/callgate/records").unwrap();
        let w = Witness::open(&dir, "w.example/w", vec![log.verifier()]).unwrap();
        let wv = CosignatureVerifier::parse(&w.key().verifier().encode()).unwrap();
        let t = tree(&["a", "b", "c", "d", "e"]);
        let req = |old: u64, proof: Vec<merkle::Hash>, cp: String| {
            AddCheckpoint {
                old,
                proof,
                checkpoint: cp,
            }
            .encode()
        };
        // First contact at 3.
        let a = w.add_checkpoint(&req(0, vec![], signed(&log, &t, 3)), 100);
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let text = Checkpoint {
            origin: log.name().into(),
            size: 3,
            root: t.root(3).unwrap(),
        }
        .text();
        assert_eq!(
            wv.verify(&text, &[a.body.trim_end().to_string()]),
            Some(100)
        );
        // A stale old size: 409 with the size held.
        let a = w.add_checkpoint(&req(0, vec![], signed(&log, &t, 5)), 101);
        assert_eq!(
            (a.status, a.content_type, a.body.as_str()),
            (StatusCode::CONFLICT, SIZE_TYPE, "3\n")
        );
        // A wrong proof: 422, the held checkpoint stays.
        let a = w.add_checkpoint(&req(3, vec![[0; 32]; 3], signed(&log, &t, 5)), 101);
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{a:?}");
        assert_eq!(w.latest(log.name()).unwrap().0.size, 3);
        let refused = std::fs::read_to_string(w.refused_path(log.name()));
        assert!(refused.unwrap().starts_with("old 3\n"));
        // A fork: another tree whose first 3 leaves differ, signed by the same key.
        let fork = tree(&["a", "b", "X", "d", "e"]);
        let proof = fork.consistency(3, 5).unwrap();
        let a = w.add_checkpoint(&req(3, proof, signed(&log, &fork, 5)), 101);
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{a:?}");
        // The same size, another root.
        let a = w.add_checkpoint(&req(3, vec![], signed(&log, &fork, 3)), 101);
        assert_eq!(a.status, StatusCode::CONFLICT, "{a:?}");
        // A forged signature: 403.
        let forged = signed(&log, &t, 5).replacen("\n5\n", "\n4\n", 1);
        let a = w.add_checkpoint(&req(3, t.consistency(3, 4).unwrap(), forged), 101);
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
        // Another log's key: 404 for an unknown origin.
        let other = Signer::generate("other.example/log").unwrap();
        let a = w.add_checkpoint(&req(0, vec![], signed(&other, &t, 5)), 101);
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{a:?}");
        // An old size over the checkpoint's: 400.
        let a = w.add_checkpoint(&req(4, vec![], signed(&log, &t, 3)), 101);
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
        // The real thing, and it survives a restart.
        let a = w.add_checkpoint(
            &req(3, t.consistency(3, 5).unwrap(), signed(&log, &t, 5)),
            102,
        );
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let again = Witness::open(&dir, "ignored", vec![log.verifier()]).unwrap();
        assert_eq!(again.key().verifier(), w.key().verifier());
        assert_eq!(again.latest(log.name()).unwrap().0.size, 5);
        let a = again.add_checkpoint(&req(5, vec![], signed(&log, &t, 5)), 103);
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
