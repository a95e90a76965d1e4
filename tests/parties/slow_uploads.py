"""Many slow uploads at once: N HTTP/1.1 connections each POST a JSON-RPC call of SIZE bytes,
half with Content-Length and half chunked, sending the head and a first piece, then waiting
until every connection is under way, then the rest in pieces. Stdlib only. Prints one JSON
line: the status each upload got (0 for none), whether it was refused as busy, and the
seconds it took. Bounded: every socket
has a timeout, the whole run at most about 40 s."""
import json
import socket
import sys
import threading
import time

port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
PIECE = 64 * 1024


def body_of(i):
    head = '{"jsonrpc":"2.0","id":%d,"method":"ledger.balance","params":{"pad":"' % i
    tail = '"}}'
    return (head + "x" * (size - len(head) - len(tail)) + tail).encode()


def answer(s):
    """The status of the answer waiting on `s` (0 for none), and whether it says the gateway
    was too busy to inspect the upload."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            got = s.recv(4096)
            if not got:
                break
            data += got
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(body) < length:
            got = s.recv(4096)
            if not got:
                break
            body += got
    except OSError:
        pass
    parts = data.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, b"inspection_busy" in data


def answered_early(s):
    """Whether the server already answered (it refuses before reading the body)."""
    s.setblocking(False)
    try:
        return len(s.recv(1, socket.MSG_PEEK)) > 0
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


statuses = [0] * n
busy = [False] * n
started = threading.Barrier(n, timeout=20)


def upload(i):
    chunked = i % 2 == 1
    body = body_of(i)
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    framing = (b"Transfer-Encoding: chunked\r\n" if chunked
               else b"Content-Length: %d\r\n" % len(body))
    head = (b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            % port) + framing + b"\r\n"

    def piece(p):
        return b"%x\r\n%s\r\n" % (len(p), p) if chunked else p

    pieces = [body[o:o + PIECE] for o in range(0, len(body), PIECE)]
    try:
        s.sendall(head + piece(pieces[0]))
        try:
            started.wait()
        except threading.BrokenBarrierError:
            pass
        for p in pieces[1:]:
            if answered_early(s):
                break
            s.sendall(piece(p))
            time.sleep(0.02)
        else:
            if chunked:
                s.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    statuses[i], busy[i] = answer(s)
    s.close()


start = time.time()
threads = [threading.Thread(target=upload, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join(40)
print(json.dumps({"statuses": statuses, "busy": busy, "seconds": round(time.time() - start, 1)}))
