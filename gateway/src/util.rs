//! Small helpers every stage shares and none owns: files written atomically, JSON paths, JSON
//! structure 64 bytes at a time, server-sent events as clients read them, signed notes, the guard on URLs the gateway itself calls out
//! to, time, locks that survive a panicked holder, and the allocator's housekeeping.

/// The maps the data path looks names up in on every call. Keys come only from the policy
/// files and a call only reads them, so a fast hash (foldhash, randomly seeded) is safe
/// here; SipHash was a few percent of a small call's CPU.
pub type NameIndex<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;

pub mod fs;
pub mod heap;
pub mod json_blocks;
pub mod jsonpath;
pub mod media;
pub mod net;
pub mod note;
pub mod outbound;
pub mod param_name;
pub mod sse;
pub mod sync;
pub mod time;
pub mod visible;
