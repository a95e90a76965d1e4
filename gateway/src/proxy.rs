//! The data path: accept a redirected connection, sniff what it speaks, terminate TLS where the
//! policy says so, serve HTTP/1 and h2, run each call through the pipeline, and forward it upstream.

pub mod accept;
pub mod forward;
pub mod h1;
pub mod http;
pub mod reply;
pub mod sniff;
pub mod tls;
