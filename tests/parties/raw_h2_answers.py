"""An h2c (prior knowledge) upstream answering each path with a status, headers and DATA
given in code, without h2's outbound checks. Logs one JSON line per request."""
import argparse, json, socket, threading
import h2.connection, h2.config, h2.events

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--log", required=True)
a = ap.parse_args()
J = b'{"card":"4111 1111 1111 1111","email":"alice@example.com"}'
MAIL = "alice@example.com"
CARD = "4111 1111 1111 1111"
# path -> (headers, data chunks, trailers)
ANSWERS = {
    "/s304": ([(":status", "304"), ("content-type", "application/json")], [J], None),
    "/s204": ([(":status", "204"), ("content-type", "application/json")], [J], None),
    "/s200-cl0": ([(":status", "200"), ("content-type", "application/json"), ("content-length", "0")], [J], None),
    "/g204": ([(":status", "204"), ("content-type", "application/grpc")], [b"\x00\x00\x00\x00" + bytes([len(J)]) + J], [("grpc-status", "0")]),
    "/g304": ([(":status", "304"), ("content-type", "application/grpc")], [b"\x00\x00\x00\x00" + bytes([len(J)]) + J], [("grpc-status", "0")]),
    "/g200": ([(":status", "200"), ("content-type", "application/grpc")], [b"\x00\x00\x00\x00" + bytes([len(J)]) + J],
              [("grpc-status", f"0 {CARD}"), ("grpc-message", f"{CARD} {MAIL}"), ("date", f"{MAIL}"), ("content-type", f"application/grpc; x={MAIL}")]),
    "/gcl0": ([(":status", "200"), ("content-type", "application/grpc"), ("content-length", "0")], [b"\x00\x00\x00\x00" + bytes([len(J)]) + J], [("grpc-status", "0")]),
    "/s200": ([(":status", "200"), ("content-type", "application/json")], [J], None),
    "/trailers": ([(":status", "200"), ("content-type", "text/plain")], [b"ok"],
                  [("date", f"{CARD} {MAIL}"), ("content-type", f"text/plain; x={MAIL}"),
                   ("grpc-status", f"{CARD}"), ("grpc-message", f"{CARD} {MAIL}"), ("x-card", CARD)]),
    "/split": ([(":status", "200"), ("content-type", "application/json")],
               [b'{"card":"4111 11', b'11 1111 1111","em', b'ail":"alice@exa', b'mple.com"}'], None),
    "/informational": (None, [J], None),
}
lock = threading.Lock()


def serve(s):
    cfg = h2.config.H2Configuration(client_side=False, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False)
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    s.sendall(c.data_to_send())
    s.settimeout(15)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return
            for e in c.receive_data(d):
                if isinstance(e, h2.events.RequestReceived):
                    hd = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v for k, v in e.headers}
                    with lock, open(a.log, "a") as f:
                        f.write(json.dumps({"path": hd.get(":path"), "headers": hd}) + "\n")
                    p = "/" + hd.get(":path", "").split("?")[0].rsplit("/", 1)[-1]
                    hdrs, chunks, trl = ANSWERS.get(p, ([(":status", "404")], [b""], None))
                    if hdrs is None:
                        c.send_headers(e.stream_id, [(":status", "103"), ("link", f"</u/{MAIL}>; rel=preload"), ("x-card", CARD)])
                        hdrs = [(":status", "200"), ("content-type", "application/json")]
                    c.send_headers(e.stream_id, hdrs)
                    for i, ch in enumerate(chunks):
                        last = i == len(chunks) - 1 and trl is None
                        c.send_data(e.stream_id, ch, end_stream=last)
                        s.sendall(c.data_to_send())
                    if trl is not None:
                        c.send_headers(e.stream_id, trl, end_stream=True)
                elif isinstance(e, h2.events.DataReceived):
                    c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            s.sendall(c.data_to_send())
    except Exception as ex:
        print("error", repr(ex), flush=True)
    finally:
        s.close()


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", a.port))
srv.listen(64)
while True:
    cl, _ = srv.accept()
    threading.Thread(target=serve, args=(cl,), daemon=True).start()
