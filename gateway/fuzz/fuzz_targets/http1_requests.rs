//! Requests as the gateway's own HTTP/1.1 server reads them off a connection (heads, then
//! bodies by Content-Length or chunked coding, pipelined): never a panic, and the same
//! requests, bodies and verdicts however the bytes are split across reads, so no way of
//! pacing the bytes can make the server read a message differently.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, wire)) = data.split_first() else {
        return;
    };
    let whole = callgate::proxy::http::read_http1_requests(wire, wire.len(), 4096);
    let paced = callgate::proxy::http::read_http1_requests(wire, usize::from(step % 16) + 1, 4096);
    assert_eq!(whole, paced, "read whole vs {} bytes at a time", step % 16 + 1);
});
