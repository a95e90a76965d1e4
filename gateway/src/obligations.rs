//! What a decision obliges the gateway to do besides letting a call through: inject a credential
//! the caller never sees, count it against rate limits and quotas, and mask the answer.

pub mod inject;
pub mod limit;
pub mod mask;
