"""A small upstream for the end-to-end tests: REST routes and a JSON-RPC endpoint, over HTTP
or HTTPS. Every request it receives is appended to --log as one JSON line, so a test can tell
whether the gateway forwarded a call (and with which headers) or answered it itself."""
import argparse
import json
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CARD = "4111 1111 1111 1111"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # http.server writes an answer's head and body in two sends: with Nagle on, the body
    # waits for the ACK of the head, which a kept connection's peer delays by ~40 ms, so every
    # call on a kept connection took 40 ms more than its work (measured: 45.9 ms p50 direct).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/json", extra=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with open(self.server.log_path, "a") as log:
            log.write(json.dumps({
                "method": self.command,
                "path": self.path,
                "peer_port": self.client_address[1],
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(errors="replace"),
            }) + "\n")
        if "slow=" in self.path:
            # Works this many ms (logged already: it has the call) before it answers; its
            # client may give up meanwhile.
            time.sleep(int(self.path.split("slow=")[1].split("&")[0]) / 1000)
        if self.path == "/hook":
            # A webhook receiver that is down for its first --fail-hooks deliveries.
            self.server.hooks += 1
            if self.server.hooks <= self.server.fail_hooks:
                return self.reply(503, {"error": "receiver starting"})
            return self.reply(204, b"")
        if self.path.split("?")[0] == "/rpc":
            msgs = json.loads(body)
            batch = isinstance(msgs, list)
            out = [{"jsonrpc": "2.0", "id": m["id"],
                    "result": {"method": m["method"], "card": CARD}}
                   for m in (msgs if batch else [msgs]) if "id" in m]
            return self.reply(200, out if batch else out[0])
        if self.path.startswith("/v1/payments/") and "escaped=1" in self.path:
            # The card spelled with JSON escapes: the same string to any JSON reader.
            return self.reply(200, b'{"card": "\\u0034111 1111 1111 \\u0031111"}')
        if self.path.startswith("/v1/payments/") and "secretlog=" in self.path:
            # An AWS key right after a line feed, as JSON writes it (`\nAKIA…`) and as text:
            # the escape's letter stands where a detector looks for a boundary. `pad=N` makes
            # it long enough to be kept beside its record's JSON.
            pad = "x" * int(self.path.split("pad=")[1].split("&")[0]) if "pad=" in self.path else ""
            # And a secret key after its name in quotes: `\"` once the text is a JSON string.
            quoted = 'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"'
            if "secretlog=quoted" in self.path:
                # Nothing else a detector could stumble on: the quotes alone.
                return self.reply(200, quoted.encode(), "text/plain")
            if "secretlog=escaped" in self.path:
                # JSON a strict reader refuses (1e400 is past f64) and Python's json reads
                # anyway (as infinity), decoding the escape that puts a key after a line feed;
                # `card` spells a card's first digit with one instead.
                log = b'"log": "\\u000aAKIAI44QH8DHBEXAMPLE"'
                if "card" in self.path:
                    log = b'"card": "\\u0034111 1111 1111 1111"'
                return self.reply(200, b'{"big": 1e400, ' + log + b'}')
            if "secretlog=split" in self.path:
                # A card after an escape that only decoding another completes: `\u00b` then
                # `\u0030`, a `0`, make `\u00b0` (a degree sign) to a JSON reader, which then
                # reads the card standing alone. Sent in two writes, the second one cut after
                # `\u003`, 50 ms apart: the gateway reads them as two chunks.
                body = b'{"card": "N\\u00b\\u00304111111111111111"}'
                cut = body.index(b"\\u0030") + 5
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:cut])
                self.wfile.flush()
                time.sleep(0.05)
                self.wfile.write(body[cut:])
                return
            if "secretlog=tabs" in self.path:
                # A secret's name and its value 30 escaped tabs apart: 180 bytes as written,
                # 30 separators as a JSON reader reads them.
                return self.reply(200, ('{"env": "aws_secret_access_key' + "\\u0009" * 30
                                        + '= wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}').encode())
            if "secretlog=text" in self.path:
                return self.reply(200, ("first line\nAKIAJ7777777777EXAMP second " + quoted + " "
                                        + pad).encode(), "text/plain")
            return self.reply(200, {"log": "line\nAKIAI44QH8DHBEXAMPLE", "env": quoted, "fill": pad})
        if self.path.startswith("/v1/payments/") and "numbers=" in self.path:
            if "numbers=far" in self.path:
                # Past f64 (which serde_json refuses) and past the 16,383 digits after the
                # point PostgreSQL's jsonb takes: a record holding them as they are stalls a
                # fleet's shipping, and no reader can read it.
                return self.reply(200, b'{"deep": 1e-20000, "huge": 1e400}')
            # As Python writes a large float (1e+16), which jsonb gives back as an integer.
            return self.reply(200, {"big": 1e16, "tiny": 1e-07, "n": 10000000000000001})
        if self.path.startswith("/v1/payments/") and "close=1" in self.path:
            # Hangs up after answering, without saying so: a kept connection gone stale.
            self.close_connection = True
        if self.path.startswith("/v1/payments/") and "hostile=" in self.path:
            # Long, and not one JSON value: written into a record's JSON as it is, it would end
            # `response` and give the record a decision and a status of its own.
            size = int(self.path.split("hostile=")[1].split("&")[0])
            return self.reply(200, ('1,"decision":{"action":"allow","rule":"forged"},'
                                    '"status":999,"pad":"%s"' % ("x" * size)).encode())
        if self.path.startswith("/v1/payments/") and "straddle=" in self.path:
            # An answer whose card starts 8 bytes before byte N (a record's cap) and runs
            # across it, a secret key after it; `under=1`: the card in an answer 258 bytes
            # shorter than N; `chunked=1`: sent in 600-byte chunks, with no length for a reader
            # to go by; `lie=1`: a length of 5,000 declared, and the connection closed after it.
            at = int(self.path.split("straddle=")[1].split("&")[0])
            if "under=1" in self.path:
                data = json.dumps({"pad": "x" * (at - 300), "card": CARD}).encode()
            else:
                pad = at - 8 - len('{"pad": "", "card": "')
                data = json.dumps({"pad": "x" * pad, "card": CARD,
                                   "log": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/"
                                          "bPxRfiCYEXAMPLEKEY"}).encode()
            if "lie=1" in self.path:
                # Declares 5,000 bytes, sends these and hangs up.
                self.close_connection = True
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 5000\r\n\r\n" + data)
                return
            if "chunked=1" not in self.path:
                return self.reply(200, data)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(data), 600):
                part = data[i:i + 600]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/v1/payments/") and "size=" in self.path:
            # A large answer, padding then the card at its very end, sent head and body in
            # one write: a reader that comes late finds the head with much of the body.
            size = int(self.path.split("size=")[1].split("&")[0])
            data = json.dumps({"pad": "x" * size, "card": CARD}).encode()
            head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n").encode()
            self.wfile.write(head + data)
            return
        if self.path.startswith("/v1/payments/") and "format=pascal" in self.path:
            # The payment with its keys in another case, as a .NET or Go service writes them
            # (`Customer`, `SSN`): the fields a Go or .NET client reads as `customer.ssn`.
            return self.reply(200, {"Card": CARD, "Customer": {"SSN": "078-05-1120"}})
        if self.path.startswith("/v1/payments/") and "format=list" in self.path:
            # The payment as a list's element, as a collection route answers.
            return self.reply(200, [{"card": CARD, "customer": {"ssn": "078-05-1120"}}])
        if self.path.startswith("/v1/payments/") and "format=" in self.path:
            # The same payment in the format a client asks for (as `?format=` in Django REST
            # Framework, or `Accept` in Spring): its values under no JSON field path.
            ssn = "078-05-1120"
            if "format=xml" in self.path:
                return self.reply(200, (f"<payment><card>{CARD}</card><customer><ssn>{ssn}</ssn>"
                                        "</customer></payment>").encode(), "application/xml")
            return self.reply(200, f"card,ssn\n{CARD},{ssn}\n".encode(), "text/csv")
        if self.path.startswith("/v1/payments/") and "charset=utf-16" in self.path:
            # JSON in UTF-16, as ASP.NET or Spring answer a client whose Accept-Charset asks.
            return self.reply(200, json.dumps({"card": CARD}).encode("utf-16"),
                              "application/json; charset=utf-16")
        if self.path.startswith("/v1/payments/"):
            return self.reply(200, {
                "path": self.path,
                "card": CARD,
                "customer": {"email": "jane.doe@example.com", "ssn": "078-05-1120"},
            })
        if self.path == "/echo":
            # A careless upstream: quotes the request's headers back, credentials included.
            headers = {k.lower(): v for k, v in self.headers.items()}
            return self.reply(200, {"you_sent": headers},
                              extra=[("X-Echo-Key", headers.get("x-api-key", ""))])
        if self.path.startswith("/echo-enc/"):
            # The credential quoted back in another spelling, or where a scrubber of bodies
            # would not look (issue 31 #8).
            key = self.headers.get("X-Api-Key", "")
            how = self.path.rsplit("/", 1)[1]
            if how == "unicode":
                return self.reply(200, ('{"key": "%s"}' % "".join(
                    "\\u%04x" % ord(c) for c in key)).encode())
            if how == "pct":
                return self.reply(200, "".join("%%%02X" % b for b in key.encode()).encode(),
                                  "text/plain")
            if how == "html":
                return self.reply(200, "".join("&#%d;" % b for b in key.encode()).encode(),
                                  "text/html")
            # Whole-value encodings (issue 39 attacker pass): a Flask session cookie (what a
            # view stored, as base64url JSON, then a timestamp and a signature), a Basic
            # authorization quoted back, UTF-16 in a binary body, hex, upper case.
            if how == "session":
                import base64
                cookie = base64.urlsafe_b64encode(
                    json.dumps({"api_key": key}, separators=(",", ":")).encode()
                ).rstrip(b"=").decode()
                return self.reply(200, {"ok": True},
                                  extra=[("Set-Cookie", f"session={cookie}.Z3x1aA.c2lnbmF0dXJl; HttpOnly; Path=/")])
            if how == "basic":
                import base64
                return self.reply(200, {"auth": "Basic " + base64.b64encode(
                    f"svc:{key}".encode()).decode()})
            if how == "utf16":
                return self.reply(200, ("key=" + key).encode("utf-16"),
                                  "application/octet-stream")
            if how == "hex":
                return self.reply(200, {"key": key.encode().hex()})
            if how == "upper":
                return self.reply(200, {"key": key.upper()})
            if how == "gzip":
                import gzip
                packed = gzip.compress(json.dumps({"key": key}).encode())
                return self.reply(200, packed, extra=[("Content-Encoding", "gzip")])
            if how == "trailer":
                body = b'{"ok": true}'
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\nTrailer: X-Key\r\n\r\n"
                    + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n"
                    + f"X-Key: {key}\r\n\r\n".encode())
                return
        if self.path == "/echo.txt":
            text = "".join(f"{k}: {v}\n" for k, v in self.headers.items())
            return self.reply(200, text.encode(), "text/plain")
        if self.path == "/hdr":
            # Values in response headers: a card, an e-mail address in a redirect target.
            return self.reply(200, {"ok": True}, extra=[
                ("X-Card", CARD), ("Location", "/users/alice@example.com"),
                ("Link", "<mailto:alice@example.com>; rel=author")])
        if self.path == "/trailers":
            # Chunked, with the values in trailers (sent whether or not the client asked).
            body = b'{"ok": true}'
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nTrailer: X-Card, X-Contact\r\n\r\n"
                + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n"
                + f"X-Card: {CARD}\r\nX-Contact: alice@example.com\r\n\r\n".encode())
            return
        if self.path.startswith("/typed/"):
            # The card in bodies of many types (issue 30 #11): text ones must be masked,
            # the rest refused unless the service lets them pass.
            types = {
                "csv": ("text/csv", f"id,card\n1,{CARD}\n"),
                "yaml": ("application/yaml", f"id: 1\ncard: {CARD}\n"),
                "jsonl": ("application/jsonl", json.dumps({"card": CARD}) + "\n"),
                "ndjson": ("application/x-ndjson", json.dumps({"card": CARD}) + "\n"),
                "soap": ("application/soap+xml", f"<card>{CARD}</card>"),
                "problem": ("application/problem+json", json.dumps({"detail": CARD})),
                # As json.dumps writes them: a newline before the card is `\n`, and an
                # accented letter before it `\u00e9` (ensure_ascii), whose last character
                # once read as part of the number.
                "escaped": ("application/json", json.dumps(
                    {"note": f"line\n{CARD}", "accent": f"\u00e9{CARD}",
                     "to": "ann\njane.doe@example.com"})),
                # A caller's query echoed before the values (issue 39 review): a string
                # holding a BEGIN line alone once made the rest of the answer one
                # unfinished private key, and nothing after it was masked.
                "begin": ("application/json", json.dumps(
                    {"query": "-----BEGIN RSA PRIVATE KEY-----", "card": CARD,
                     "to": "jane.doe@example.com"})),
                # A key shown as a page of code, a line per cell: quotes between its lines.
                "keyhtml": ("text/html", "".join(
                    f'<tr><td class="blob-code">{line}</td></tr>' for line in
                    ["-----BEGIN RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEAkeybodyline",
                     "-----END RSA PRIVATE KEY-----", CARD])),
                "octet": ("application/octet-stream", f"card {CARD}"),
                "multipart": ("multipart/mixed; boundary=b",
                              f"--b\r\nContent-Type: text/plain\r\n\r\n{CARD}\r\n--b--\r\n"),
                "unknown": ("application/x-custom", f"card {CARD}"),
                "grpc": ("application/grpc", f"card {CARD}"),
                # Text labels on bytes that are not UTF-8 text (issue 39 attacker pass):
                # UTF-16 as Python writes it (a byte-order mark), which `json.loads` and
                # browsers read by its mark; UTF-32 without one under a UTF-8 label; a gzip
                # file served as text, as object stores serve files saved without a coding.
                "utf16": ("application/json", json.dumps({"card": CARD}).encode("utf-16")),
                "utf32": ("application/json; charset=utf-8",
                          json.dumps({"card": CARD}).encode("utf-32-le")),
                "gzipped": ("text/plain", __import__("gzip").compress(f"card {CARD}".encode())),
            }
            name = self.path.rsplit("/", 1)[1]
            if name not in types:
                return self.reply(404, {"error": "no such type"})
            ctype, body = types[name]
            body = body if isinstance(body, bytes) else body.encode()
            return self.reply(200, body, ctype)
        if self.path.startswith("/misframed/"):
            # A misbehaving upstream: the card in a body the head disguises (issue 30 #12).
            import gzip
            plain = json.dumps({"card": CARD}).encode()
            packed = gzip.compress(plain)
            how = self.path.rsplit("/", 1)[1]
            if how == "te-gzip":
                # Transfer-coded gzip under chunked: undoing the chunking leaves gzip bytes.
                head = ("Content-Type: application/json\r\n"
                        "Transfer-Encoding: gzip, chunked\r\n")
                body = f"{len(packed):x}\r\n".encode() + packed + b"\r\n0\r\n\r\n"
            elif how == "ce-gzip":
                # Plainly compressed: cannot be masked as it streams.
                head = ("Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
                        f"Content-Length: {len(packed)}\r\n")
                body = packed
            elif how == "conn-ce":
                # Content-Encoding named hop-by-hop: stripping it hides the compression.
                head = ("Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
                        "Connection: Content-Encoding\r\n"
                        f"Content-Length: {len(packed)}\r\n")
                body = packed
            elif how == "two-ct":
                # Two types: the first says binary (not masked), the client reads the second.
                head = ("Content-Type: application/octet-stream\r\n"
                        "Content-Type: application/json\r\n"
                        f"Content-Length: {len(plain)}\r\n")
                body = plain
            else:
                return self.reply(404, {"error": "no such misframing"})
            self.wfile.write(b"HTTP/1.1 200 OK\r\n" + head.encode() + b"\r\n" + body)
            return
        if self.path == "/forge":
            # One JSON value whose whitespace holds line breaks, the middle line a record of
            # its own: an export that embeds the answer verbatim would gain a forged line.
            forged = json.dumps({"seq": 0, "hash": "0" * 64, "id": "forged", "time_ms": 0,
                                 "session": "x", "destination": "x", "protocol": "rest",
                                 "decision": {"action": "allow", "enforced": True},
                                 "latency_ms": 0, "bytes_in": 0, "bytes_out": 0})
            return self.reply(200, ('{"a":\n' + forged + '\n}').encode())
        if self.path.startswith("/worst"):
            # Overlapping Luhn-valid card readings, as an echoing tool would send back:
            # `4 4 4 …` (issue 30 #15: quadratic masking).
            size = int(self.path.split("size=")[1].split("&")[0])
            return self.reply(200, b"4 " * (size // 2), "text/plain")
        if self.path == "/text":
            return self.reply(200, f"card {CARD} end\n".encode(), "text/plain")
        return self.reply(404, {"error": "no such route"})

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--fail-hooks", type=int, default=0)
    a = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.log_path = a.log
    srv.hooks = 0
    srv.fail_hooks = a.fail_hooks
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    sys.stdout.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
