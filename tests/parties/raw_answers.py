"""An upstream that answers each path with raw bytes from a JSON file (name -> hex), then
closes the connection. Logs one JSON line per request it read."""
import argparse, json, socket, threading

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--log", required=True)
ap.add_argument("--answers", required=True)
a = ap.parse_args()
ANSWERS = {k: bytes.fromhex(v) for k, v in json.load(open(a.answers)).items()}
lock = threading.Lock()


def serve(c):
    try:
        c.settimeout(10)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        hdrs = [l.split(":", 1) for l in lines[1:]]
        with lock, open(a.log, "a") as f:
            f.write(json.dumps({"method": method, "path": target,
                                "headers": [[k, v.strip()] for k, v in hdrs]}) + "\n")
        name = target.lstrip("/").split("?")[0]
        c.sendall(ANSWERS.get(name, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
        c.shutdown(socket.SHUT_WR)
        try:
            while c.recv(65536):
                pass
        except Exception:
            pass
    finally:
        c.close()


s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", a.port))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
