"""The demo's payments API: a small REST service (Python's standard library only) that knows
nothing of callgate. `payments_api.py HOST PORT`. Its answers carry a customer's card number
and e-mail address, as real ones do."""
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAYMENTS = {
    "p_1001": {"id": "p_1001", "amount": 5000, "currency": "EUR", "status": "captured"},
    "p_1002": {"id": "p_1002", "amount": 250, "currency": "EUR", "status": "captured"},
    "p_1003": {"id": "p_1003", "amount": 42, "currency": "USD", "status": "captured"},
}
CUSTOMER = {"name": "Jane Doe", "card": "4111 1111 1111 1111", "email": "jane.doe@example.com"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/payments":
            return self.reply(200, {"payments": list(PAYMENTS.values())})
        m = re.fullmatch(r"/v1/payments/(\w+)", self.path)
        if m and m.group(1) in PAYMENTS:
            return self.reply(200, dict(PAYMENTS[m.group(1)], customer=CUSTOMER))
        self.reply(404, {"error": "no such payment"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        m = re.fullmatch(r"/v1/payments/(\w+)/refund", self.path)
        if not m or m.group(1) not in PAYMENTS:
            return self.reply(404, {"error": "no such payment"})
        self.reply(200, {"refund": {"payment": m.group(1), "amount": body.get("amount"),
                                    "currency": body.get("currency"), "status": "refunded"},
                         "customer": CUSTOMER})


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
