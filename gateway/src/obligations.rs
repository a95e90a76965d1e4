//! What a decision obliges the gateway to do besides letting a call through: inject a credential
//! the caller never sees (or one exchanged for the caller's own token), count it against rate
//! limits and quotas, and mask the answer.

pub mod exchange;
pub mod inject;
pub mod limit;
pub mod mask;
