"""For tests/mcp_framings.rs: the same JSON-RPC id under way twice in one MCP session, the second request
sent over h2c with its Mcp-Session-Id spelled with surrounding whitespace (which the upstream's
HTTP/1.1 parser strips). `mcp_sid_h2c_client.py HOST PORT SLOW FAST GAP VARIANT`."""
import json
import socket
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events
import httpx

HOST, PORT, SLOW, FAST, GAP, VARIANT = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]
URL = f"http://{HOST}:{PORT}/mcp"
PV = "2025-06-18"
out = {}
h = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
c = httpx.Client(timeout=15)
r = c.post(URL, headers=h, json={"jsonrpc": "2.0", "id": 0, "method": "initialize",
           "params": {"protocolVersion": PV, "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}})
sid = r.headers.get("mcp-session-id")
out["sid"] = sid
h1 = dict(h, **{"mcp-session-id": sid, "mcp-protocol-version": PV})
c.post(URL, headers=h1, json={"jsonrpc": "2.0", "method": "notifications/initialized"})


def slow():
    body = ""
    try:
        with c.stream("POST", URL, headers=h1, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": SLOW, "arguments": {"id": "42", "query": "q"}}}) as s:
            for chunk in s.iter_text():
                body += chunk
                if '"result"' in body or '"error"' in body:
                    break
    except Exception as e:  # noqa: BLE001
        body += f"<exception {e!r}>"
    out["slow_body"] = body


t = threading.Thread(target=slow, daemon=True)
t.start()
time.sleep(GAP)

spelled = {"lead": " " + sid, "trail": sid + " ", "tab": "\t" + sid, "plain": sid}[VARIANT]
sock = socket.create_connection((HOST, PORT), timeout=8)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
    client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
    validate_inbound_headers=False))
conn.initiate_connection()
payload = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": FAST, "arguments": {"id": "42", "query": "q"}}}).encode()
conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", f"{HOST}:{PORT}"),
                      (":path", "/mcp"), ("accept", "application/json, text/event-stream"),
                      ("content-type", "application/json"), ("mcp-session-id", spelled),
                      ("mcp-protocol-version", PV), ("content-length", str(len(payload)))])
conn.send_data(1, payload, end_stream=True)
sock.sendall(conn.data_to_send())
fast = {"status": None, "body": ""}
deadline = time.time() + 8
ended = False
try:
    while time.time() < deadline and not ended:
        data = sock.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                fast["status"] = dict((k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v) for k, v in ev.headers).get(":status")
            elif isinstance(ev, h2.events.DataReceived):
                fast["body"] += ev.data.decode("utf-8", "replace")
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                ended = True
        sock.sendall(conn.data_to_send())
        if '"result"' in fast["body"] and fast["body"].replace("\r\n", "\n").endswith("\n\n"):
            ended = True
except Exception as e:  # noqa: BLE001
    fast["body"] += f"<exception {e!r}>"
sock.close()
out["fast"] = fast
t.join(6)
print(json.dumps(out))
