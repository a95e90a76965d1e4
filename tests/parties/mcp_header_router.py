"""An MCP endpoint of the header-routing kind the 2026-07-28 transport allows: it runs the
method named in `Mcp-Method` on the tool named in `Mcp-Name` (base64 sentinel decoded), and
reads the body only for the arguments and the id. Every tool it runs is appended to argv[2]."""
import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RUNS = sys.argv[2]


def decode(v):
    if v and v.startswith("=?base64?") and v.endswith("?="):
        return base64.b64decode(v[9:-2]).decode()
    return v


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        method = self.headers.get("Mcp-Method") or body.get("method")
        name = decode(self.headers.get("Mcp-Name")) or (body.get("params") or {}).get("name")
        if method == "tools/call":
            with open(RUNS, "a") as f:
                f.write(name + "\n")
            result = {"content": [{"type": "text", "text": f"ran {name}"}]}
        else:
            result = {"tools": [{"name": "search_docs", "inputSchema": {"type": "object"}}]}
        data = json.dumps({"jsonrpc": "2.0", "id": body.get("id"), "result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
