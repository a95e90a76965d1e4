"""A deliberately lenient HTTP/1.1 upstream, the kind a request smuggler hopes for: it runs
every request it can find on a kept-alive connection, taking a message as chunked when any
Transfer-Encoding mentions "chunked" (however spelled or padded), else by the first
Content-Length (a sign or a list allowed), reading chunk sizes modulo 2^64, folding
continuation lines and accepting bare LF. Each request it runs is appended to --log as a JSON
line (method, path), so a test can tell whether a request hidden in another one ever ran."""
import argparse
import json
import re
import socketserver

SPACE = " \t\x0b\x0c"


class Handler(socketserver.StreamRequestHandler):
    timeout = 10

    def line(self):
        raw = self.rfile.readline(65537)
        if not raw:
            raise EOFError
        return raw.rstrip(b"\r\n").decode("latin-1")

    def handle(self):
        try:
            while self.one():
                pass
        except (EOFError, OSError, ValueError):
            pass

    def one(self):
        start = self.line()
        while start == "":
            start = self.line()
        parts = start.split()
        if len(parts) < 2:
            return False
        method, path = parts[0], parts[1]
        headers = []
        while True:
            l = self.line()
            if l == "":
                break
            if l[0] in SPACE and headers:
                headers[-1] = (headers[-1][0], headers[-1][1] + " " + l.strip(SPACE))
                continue
            name, _, value = l.partition(":")
            headers.append((name.strip(SPACE).lower(), value.strip(SPACE)))
        te = " ".join(v for k, v in headers if k == "transfer-encoding").lower()
        lengths = [v for k, v in headers if k == "content-length"]
        body = b""
        if "chunked" in te:
            while True:
                size = int(re.split(r"[;\s]", self.line().strip(SPACE))[0] or "0", 16)
                size &= (1 << 64) - 1
                if size == 0:
                    while self.line() != "":
                        pass
                    break
                body += self.rfile.read(size)
                self.line()
        elif lengths:
            n = int(lengths[0].split(",")[0].strip(SPACE))
            body = self.rfile.read(n)
        with open(self.server.log_path, "a") as log:
            log.write(json.dumps({"method": method, "path": path, "body": len(body)}) + "\n")
        answer = ("ran %s %s\n" % (method, path)).encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                         % len(answer) + answer)
        return True


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    a = p.parse_args()
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.log_path = a.log
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
