//! The body type every HTTP message in the proxy carries, whichever side it came from: one
//! boxed, unsynchronised body, so that a request or an answer passes from server to client
//! (or is replaced by the gateway's own) without being converted.
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BodyError>;

/// A body of these bytes.
pub fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}
