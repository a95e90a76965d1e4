"""An HTTP/2 client that opens N streams at once on one connection, ignoring the server's
stream limit, then reads for a bounded time. Prints one JSON line: answered (by status),
reset streams, whether the server sent GOAWAY (and the last stream it took), and how long it
took."""
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events

port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
headers = [
    (":method", "GET"),
    (":path", path),
    (":scheme", "http"),
    (":authority", f"127.0.0.1:{port}"),
]
for i in range(n):
    c.send_headers(1 + 2 * i, headers, end_stream=True)
# Framed before connecting: a client silent for a second is refused by the gateway's sniffer.
flood = c.data_to_send()
s = socket.create_connection(("127.0.0.1", port), timeout=20)
start = time.time()
statuses, resets, goaway, done, error = {}, 0, False, set(), None
last_stream = None
try:
    s.sendall(flood)
except (BrokenPipeError, ConnectionResetError) as e:
    error = repr(e)
deadline = start + 30
# After a GOAWAY the streams the server took (up to its last stream id) still finish.
while time.time() < deadline and len(done) < n:
    try:
        data = s.recv(1 << 16)
    except (socket.timeout, ConnectionResetError) as e:
        error = repr(e)
        break
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            code = dict(e.headers).get(b":status", b"?").decode()
            statuses[code] = statuses.get(code, 0) + 1
        elif isinstance(e, h2.events.DataReceived):
            c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, h2.events.StreamEnded):
            done.add(e.stream_id)
        elif isinstance(e, h2.events.StreamReset):
            resets += 1
            done.add(e.stream_id)
        elif isinstance(e, h2.events.ConnectionTerminated):
            goaway = True
            last_stream = e.last_stream_id
            error = f"GOAWAY {e.error_code!r} after stream {e.last_stream_id}"
    out = c.data_to_send()
    if out:
        try:
            s.sendall(out)
        except (BrokenPipeError, ConnectionResetError) as e:
            # Cut off by the server (as a flood should be): what it sent first is still read.
            error = error or repr(e)
print(json.dumps({"statuses": statuses, "resets": resets, "goaway": goaway, "last_stream": last_stream,
                  "finished": len(done), "error": error, "seconds": round(time.time() - start, 1)}))
