//! Identify: who calls. The connection's workload (from the kernel, at accept) and the
//! identity a bearer token on the request verifies to, or why it does not.
use std::sync::{Arc, atomic::Ordering::Relaxed};

use tracing::debug;

use super::Conn;
use crate::{call::Caller, identity, policy::Snapshot};

impl Conn {
    /// The caller of one request: the connection's workload, and the identity its token
    /// verifies to (or why it does not).
    /// `token` is the request's, as [`identity::bearer`] read it.
    pub(super) async fn identify(&self, snap: &Snapshot, token: Option<&str>) -> Arc<Caller> {
        let (Some(verifier), Some(token)) = (&self.inputs.verifier, token) else {
            return self.caller.clone();
        };
        if let Some(known) = self.last_token.get(token) {
            return known;
        }
        verifier.configure(&snap.identity);
        let outcome = verifier.verify(token).await;
        let stats = &self.inputs.stats;
        match &outcome {
            Ok(_) => stats.tokens_verified.fetch_add(1, Relaxed),
            Err(_) => stats.tokens_rejected.fetch_add(1, Relaxed),
        };
        if let Err(e) = &outcome {
            debug!(session = %self.session, reason = %e, "bearer token not accepted");
        }
        let expires_in = outcome.as_ref().ok().map(|id| id.expires_in);
        let caller = Arc::new(identity::caller_with(&self.caller, &outcome));
        self.last_token.put(token, caller.clone(), expires_in);
        caller
    }
}
