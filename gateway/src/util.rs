//! Small helpers every stage shares and none owns: files written atomically, JSON paths, the
//! guard on URLs the gateway itself calls out to, time, and locks that survive a panicked holder.

pub mod fs;
pub mod jsonpath;
pub mod net;
pub mod outbound;
pub mod sync;
pub mod time;
pub mod visible;
