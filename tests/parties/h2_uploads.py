"""Uploads on one HTTP/2 connection (prior knowledge): N JSON-RPC calls of SIZE bytes to
127.0.0.1:PORT/rpc, all streams opened at once and their bodies sent side by side within the
flow-control windows. A server may answer a stream before its body is all sent and then reset
it (RFC 9113 §8.1): the answer counts, the rest of that body is not sent. Bounded: 30 s.
Prints one JSON line: each stream's status (0 for none), whether its answer said
`inspection_busy`, and whether it carried a JSON-RPC result."""
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


def body(i):
    head = '{"jsonrpc":"2.0","id":%d,"method":"ledger.balance","params":{"pad":"' % i
    return (head + "x" * (size - len(head) - 3) + '"}}').encode()


c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
streams = {}
for i in range(n):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "POST"), (":path", "/rpc"), (":scheme", "http"),
                         (":authority", f"127.0.0.1:{port}"),
                         ("content-type", "application/json"),
                         ("content-length", str(size))])
    streams[sid] = {"i": i, "left": body(i), "status": 0, "answer": b"", "done": False}
s = socket.create_connection(("127.0.0.1", port), timeout=1)
s.sendall(c.data_to_send())
deadline = time.time() + 30
while time.time() < deadline and not all(st["done"] for st in streams.values()):
    # Send what the windows allow.
    for sid, st in streams.items():
        while st["left"] and not st["done"]:
            room = min(c.local_flow_control_window(sid), c.max_outbound_frame_size,
                       len(st["left"]))
            if room <= 0:
                break
            try:
                c.send_data(sid, st["left"][:room], end_stream=room == len(st["left"]))
            except h2.exceptions.StreamClosedError:
                st["left"] = b""
                break
            st["left"] = st["left"][room:]
    out = c.data_to_send()
    if out:
        s.sendall(out)
    try:
        data = s.recv(1 << 16)
    except socket.timeout:
        continue
    if not data:
        break
    for e in c.receive_data(data):
        st = streams.get(getattr(e, "stream_id", None))
        if isinstance(e, h2.events.ResponseReceived):
            st["status"] = int(dict(e.headers).get(b":status", b"0"))
        elif isinstance(e, h2.events.DataReceived):
            st["answer"] += e.data
            c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
            st["done"] = True
            st["left"] = b""
        elif isinstance(e, h2.events.ConnectionTerminated):
            deadline = 0
    out = c.data_to_send()
    if out:
        s.sendall(out)
ordered = sorted(streams.values(), key=lambda st: st["i"])
print(json.dumps({"statuses": [st["status"] for st in ordered],
                  "busy": [b"inspection_busy" in st["answer"] for st in ordered],
                  "result": [b'"result"' in st["answer"] for st in ordered]}))
